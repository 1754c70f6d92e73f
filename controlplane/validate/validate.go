// Package validate collects field violations for the core's input checks and
// holds the naming rules shared by every kind of object (secret names,
// configuration names, labels, free text).
//
// A violation names the field and what is wrong with it, never the offending
// value: the value may be a secret pasted into the wrong place.
package validate

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/secretplane/secretplane/controlplane/secretref"
)

// Violation is one invalid field.
type Violation struct {
	Field       string // path within the object, e.g. "ref" or "entries[2].literal"
	Description string // what is wrong, without the value
}

// Error is returned when input fails validation. Transports map it to an
// invalid-argument status carrying every violation.
type Error struct {
	Violations []Violation
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("invalid argument: ")
	for i, v := range e.Violations {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(v.Field)
		b.WriteString(": ")
		b.WriteString(v.Description)
	}
	return b.String()
}

// Prefixed returns a copy of the error whose field paths start with prefix
// (e.g. "secret.").
func (e *Error) Prefixed(prefix string) *Error {
	out := &Error{Violations: make([]Violation, len(e.Violations))}
	for i, v := range e.Violations {
		out.Violations[i] = Violation{Field: prefix + v.Field, Description: v.Description}
	}
	return out
}

// Collector gathers violations; its zero value is ready to use.
type Collector struct {
	violations []Violation
}

// Addf records a violation of field.
func (c *Collector) Addf(field, format string, args ...any) {
	c.violations = append(c.violations, Violation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// Add records err (when not nil) as a violation of field.
func (c *Collector) Add(field string, err error) {
	if err != nil {
		c.violations = append(c.violations, Violation{Field: field, Description: err.Error()})
	}
}

// Err returns an *Error with every violation, or nil when there is none.
func (c *Collector) Err() error {
	if len(c.violations) == 0 {
		return nil
	}
	return &Error{Violations: append([]Violation(nil), c.violations...)}
}

// Field returns err (when not nil) as the one violation of field.
func Field(field string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Violations: []Violation{{Field: field, Description: err.Error()}}}
}

// Limits on object fields.
const (
	MaxNameLen        = 253
	MaxNameSegments   = 16
	MaxSegmentLen     = 63
	MaxLabels         = 64
	MaxLabelKeyLen    = 63
	MaxLabelValueLen  = 256
	MaxDescriptionLen = 1024
	MaxOwnerLen       = 256
)

// Name checks an object name: segments of lower-case letters, digits, ".",
// "_" and "-" that start and end with a letter or digit, joined by "/".
func Name(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("is required")
	case len(name) > MaxNameLen:
		return fmt.Errorf("is %d bytes long; the limit is %d", len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("is not valid UTF-8")
	}
	// Every resolve validates its names: no allocation on the way.
	if n := strings.Count(name, "/") + 1; n > MaxNameSegments {
		return fmt.Errorf("has %d segments; the limit is %d", n, MaxNameSegments)
	}
	i := 0
	for s := range strings.SplitSeq(name, "/") {
		i++
		if err := segment(s); err != nil {
			return fmt.Errorf("segment %d %w", i, err)
		}
	}
	return notSecret(name)
}

// notSecret refuses an identifier (name, prefix, path) that, whole or in
// one of its "/" segments, looks like a secret value: names are logged and
// stored, and a pasted token must not become one.
func notSecret(s string) error {
	if f, secret := secretref.DetectLiteral(s); secret {
		return fmt.Errorf("looks like a secret value (%s), not a name", f.Kind)
	}
	for seg := range strings.SplitSeq(s, "/") {
		if f, secret := secretref.DetectLiteral(seg); secret {
			return fmt.Errorf("looks like a secret value (%s), not a name", f.Kind)
		}
	}
	return nil
}

// Identifier refuses an identifier checked elsewhere (SPIFFE ID path,
// configuration key) that looks like a secret value.
func Identifier(s string) error { return notSecret(s) }

func segment(s string) error {
	if s == "" {
		return fmt.Errorf("is empty (no leading, trailing or doubled \"/\")")
	}
	if len(s) > MaxSegmentLen {
		return fmt.Errorf("is %d bytes long; the limit is %d", len(s), MaxSegmentLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if alnum {
			continue
		}
		if c == '.' || c == '_' || c == '-' {
			if i == 0 || i == len(s)-1 {
				return fmt.Errorf("must start and end with a lower-case letter or digit")
			}
			continue
		}
		if c >= 'A' && c <= 'Z' {
			return fmt.Errorf("has an upper-case letter at byte %d; names are lower-case", i+1)
		}
		return fmt.Errorf("has a character not allowed at byte %d (allowed: a-z 0-9 . _ -)", i+1)
	}
	return nil
}

// NamePrefix checks a list prefix: empty, or the start of a possible name.
func NamePrefix(p string) error {
	if len(p) > MaxNameLen {
		return fmt.Errorf("is %d bytes long; the limit is %d", len(p), MaxNameLen)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/') {
			return fmt.Errorf("has a character not allowed in names at byte %d", i+1)
		}
	}
	return notSecret(p)
}

// Labels checks a label map: bounded count, name-like keys, short values
// that do not look like secrets.
func Labels(c *Collector, field string, labels map[string]string) {
	if len(labels) > MaxLabels {
		c.Addf(field, "has %d labels; the limit is %d", len(labels), MaxLabels)
		return
	}
	for k, v := range labels {
		if err := labelKey(k); err != nil {
			c.Addf(field, "key %q %v", printableKey(k), err)
			continue
		}
		c.Add(field+"["+k+"]", Text(v, MaxLabelValueLen))
	}
}

func labelKey(k string) error {
	if k == "" {
		return fmt.Errorf("is empty")
	}
	if len(k) > MaxLabelKeyLen {
		return fmt.Errorf("is %d bytes long; the limit is %d", len(k), MaxLabelKeyLen)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && !(i > 0 && i < len(k)-1 && (c == '.' || c == '_' || c == '-' || c == '/')) {
			return fmt.Errorf("must be lower-case letters, digits, and . _ - / inside")
		}
	}
	return notSecret(k)
}

// printableKey renders a map key for an error message: keys are identifiers,
// but an invalid one could be anything, so it is shown only when short and
// harmless.
func printableKey(k string) string {
	if len(k) <= MaxLabelKeyLen && utf8.ValidString(k) && !hasControl(k) {
		if _, secret := secretref.DetectLiteral(k); !secret {
			return k
		}
	}
	return fmt.Sprintf("[%d bytes]", len(k))
}

// Text checks a free-text field (description, owner, label value): valid
// UTF-8, no control characters, at most limit bytes, and nothing that looks
// like a secret value.
func Text(s string, limit int) error {
	switch {
	case len(s) > limit:
		return fmt.Errorf("is %d bytes long; the limit is %d", len(s), limit)
	case !utf8.ValidString(s):
		return fmt.Errorf("is not valid UTF-8")
	case hasControl(s):
		return fmt.Errorf("has a control character")
	}
	if f, secret := secretref.DetectLiteral(s); secret {
		return fmt.Errorf("looks like a secret value (%s); secrets belong in a secret manager, referenced by a SecretRef", f.Kind)
	}
	return nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return true
		}
	}
	return false
}

// HasControl reports whether s has a control character other than tab,
// newline and carriage return (allowed in multi-line literals).
func HasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) && r != '\t' && r != '\n' && r != '\r' {
			return true
		}
	}
	return false
}
