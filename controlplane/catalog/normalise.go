package catalog

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/material"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
)

// Limits on configuration documents.
const (
	MaxConfigEntries = 1000
	MaxConfigKeyLen  = 256
	MaxLiteralLen    = 16 << 10
)

// normaliseSecret validates s and returns it with its ref in canonical form
// and server-owned fields cleared.
func normaliseSecret(s store.Secret) (store.Secret, error) {
	var c validate.Collector
	c.Add("name", validate.Name(s.Name))
	ref, err := parseRef(s.Ref)
	c.Add("ref", err)
	c.Add("description", validate.Text(s.Description, validate.MaxDescriptionLen))
	c.Add("owner", validate.Text(s.Owner, validate.MaxOwnerLen))
	validate.Labels(&c, "labels", s.Labels)
	kind, err := material.ParseKind(s.Kind)
	c.Add("kind", err)
	if err := c.Err(); err != nil {
		return store.Secret{}, err
	}
	s.Ref, s.Kind = ref.String(), string(kind)
	s.Revision = 0
	s.CreateTime, s.UpdateTime = time.Time{}, time.Time{}
	return s, nil
}

// normaliseConfig validates d and returns it with entries sorted by key,
// refs in canonical form and server-owned fields cleared.
func normaliseConfig(d store.ConfigDocument) (store.ConfigDocument, error) {
	var c validate.Collector
	c.Add("name", validate.Name(d.Name))
	if d.Identity != "" {
		if id, err := spiffeid.FromString(d.Identity); err != nil {
			c.Addf("identity", "is not a valid SPIFFE ID: %v", err)
		} else {
			c.Add("identity", validate.Identifier(id.Path()))
		}
	}
	validate.Labels(&c, "labels", d.Labels)
	if len(d.Entries) > MaxConfigEntries {
		c.Addf("entries", "has %d entries; the limit is %d", len(d.Entries), MaxConfigEntries)
		return store.ConfigDocument{}, c.Err()
	}
	entries := make([]store.ConfigEntry, len(d.Entries))
	seen := make(map[string]int, len(d.Entries))
	for i, e := range d.Entries {
		field := fmt.Sprintf("entries[%d]", i)
		if err := configKey(e.Key); err != nil {
			c.Addf(field+".key", "%v", err)
		} else if j, dup := seen[e.Key]; dup {
			c.Addf(field+".key", "duplicates the key of entries[%d]", j)
		} else {
			seen[e.Key] = i
		}
		switch {
		case e.Ref != "" && e.Literal != "":
			c.Addf(field, "sets both literal and ref; set exactly one")
		case e.Ref != "":
			ref, err := parseRef(e.Ref)
			if err != nil {
				c.Add(field+".ref", err)
			} else {
				e.Ref = ref.String()
			}
		default:
			c.Add(field+".literal", checkLiteral(e.Literal))
		}
		entries[i] = e
	}
	if err := c.Err(); err != nil {
		return store.ConfigDocument{}, err
	}
	sortEntries(entries)
	d.Entries = entries
	d.Revision = 0
	d.CreateTime, d.UpdateTime = time.Time{}, time.Time{}
	return d, nil
}

// parseRef parses a SecretRef field. The error describes what is wrong
// without repeating the input (secretref errors never contain it).
func parseRef(s string) (secretref.Ref, error) {
	if s == "" {
		return secretref.Ref{}, errors.New("is required")
	}
	ref, err := secretref.Parse(s)
	if err != nil {
		return secretref.Ref{}, err
	}
	return ref, nil
}

func configKey(k string) error {
	if k == "" {
		return errors.New("is required")
	}
	if len(k) > MaxConfigKeyLen {
		return fmt.Errorf("is %d bytes long; the limit is %d", len(k), MaxConfigKeyLen)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
		if letter || i > 0 && (c >= '0' && c <= '9' || c == '.' || c == '-') {
			continue
		}
		return fmt.Errorf("must start with a letter or \"_\" and hold only letters, digits, \"_\", \".\" and \"-\" (byte %d is not allowed)", i+1)
	}
	return validate.Identifier(k)
}

// checkLiteral refuses literals that are too long, malformed, or that look
// like a secret value or a SecretRef: secrets belong in a manager and are
// referenced, never pasted into configuration.
func checkLiteral(s string) error {
	switch {
	case len(s) > MaxLiteralLen:
		return fmt.Errorf("is %d bytes long; the limit is %d", len(s), MaxLiteralLen)
	case !utf8.ValidString(s):
		return errors.New("is not valid UTF-8")
	case validate.HasControl(s):
		return errors.New("has a control character")
	}
	if f, secret := secretref.DetectLiteral(s); secret {
		return fmt.Errorf("looks like a secret value (%s); store it in a secret manager and set ref to a SecretRef instead", f.Kind)
	}
	if looksLikeRef(s) {
		return errors.New("looks like a SecretRef; set it as ref, not literal, so it is resolved and access-checked")
	}
	return nil
}

func looksLikeRef(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	if !ok {
		return false
	}
	switch secretref.Scheme(strings.ToLower(scheme)) {
	case secretref.SchemeVault, secretref.SchemeAWSSM, secretref.SchemeLocal:
		return true
	}
	return false
}
