package secretref

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Scheme names a secret manager.
type Scheme string

// Supported schemes.
const (
	SchemeVault Scheme = "vault"  // HashiCorp Vault KV v2
	SchemeAWSSM Scheme = "aws-sm" // AWS Secrets Manager
	SchemeLocal Scheme = "local"  // secretplane's embedded encrypted backend
)

// MaxLen is the longest SecretRef accepted, in bytes.
const MaxLen = 2048

// Ref is a parsed SecretRef. The zero value is not a valid ref.
type Ref struct {
	Scheme    Scheme
	Path      string // locator, decoded: vault "<mount>/<path>", aws-sm name or ARN, local name
	Field     string // selector; "" = whole value; JSON pointer when it starts with "/"
	Version   string // immutable version id ("" = the manager's default)
	Stage     string // aws-sm staging label ("" = AWSCURRENT)
	Namespace string // vault only
	Region    string // aws-sm only
}

// ErrInvalid is matched (errors.Is) by every parse and validation error.
var ErrInvalid = errors.New("invalid SecretRef")

// Error says which component of a ref is wrong and why. It never contains
// the input or any part of it: a ref field is where secrets get pasted.
type Error struct {
	Component string // "scheme", "locator", "param version", "selector", ...
	Reason    string
}

func (e *Error) Error() string { return "invalid SecretRef: " + e.Component + ": " + e.Reason }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

func errorf(component, format string, args ...any) error {
	return &Error{Component: component, Reason: fmt.Sprintf(format, args...)}
}

// MustParse is Parse for constants in tests and examples; it panics on error.
func MustParse(s string) Ref {
	r, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return r
}

// IsZero reports whether r is the zero Ref.
func (r Ref) IsZero() bool { return r == Ref{} }

// WithoutSelector returns r without its field selector: what a backend fetches.
func (r Ref) WithoutSelector() Ref {
	r.Field = ""
	return r
}

// VaultMount is the KV v2 mount of a vault ref (the first path segment).
func (r Ref) VaultMount() string {
	m, _, _ := strings.Cut(r.Path, "/")
	return m
}

// VaultPath is the secret path inside the mount of a vault ref.
func (r Ref) VaultPath() string {
	_, p, _ := strings.Cut(r.Path, "/")
	return p
}

// LogValue implements slog.LogValuer: a ref logs as its canonical form.
func (r Ref) LogValue() slog.Value { return slog.StringValue(r.String()) }

// String returns the canonical form: lower-case scheme, the locator with
// only the characters that need it percent-encoded (":" in ARNs), params
// sorted by name, then the selector.
func (r Ref) String() string {
	var b strings.Builder
	b.Grow(len(r.Path) + len(r.Field) + 32)
	b.WriteString(string(r.Scheme))
	b.WriteString("://")
	b.WriteString(escape(r.Path, locatorSafe))
	params := r.params()
	for i, p := range params {
		if i == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString(p[0])
		b.WriteByte('=')
		b.WriteString(escape(p[1], paramSafe))
	}
	if r.Field != "" {
		b.WriteByte('#')
		b.WriteString(escape(r.Field, fieldSafe))
	}
	return b.String()
}

// params lists the set params, sorted by name.
func (r Ref) params() [][2]string {
	var ps [][2]string
	add := func(k, v string) {
		if v != "" {
			ps = append(ps, [2]string{k, v})
		}
	}
	add("namespace", r.Namespace)
	add("region", r.Region)
	add("stage", r.Stage)
	add("version", r.Version)
	sort.Slice(ps, func(i, j int) bool { return ps[i][0] < ps[j][0] })
	return ps
}

// Validate checks a Ref built in code against the same rules as Parse.
func (r Ref) Validate() error {
	if r.IsZero() {
		return errorf("ref", "is empty")
	}
	sc, ok := rulesFor(r.Scheme)
	if !ok {
		return errorf("scheme", "unknown scheme (want vault, aws-sm or local)")
	}
	if err := sc.locator(r.Path); err != nil {
		return err
	}
	if err := checkField(r.Field); err != nil {
		return err
	}
	for _, p := range [][2]string{{"namespace", r.Namespace}, {"region", r.Region}, {"stage", r.Stage}, {"version", r.Version}} {
		if p[1] == "" {
			continue
		}
		check := sc.param(p[0])
		if check == nil {
			return errorf("param "+p[0], "is not a parameter of %s refs (allowed: %s)", r.Scheme, sc.paramList())
		}
		if err := check(p[1]); err != nil {
			return &Error{Component: "param " + p[0], Reason: err.Error()}
		}
	}
	if r.Version != "" && r.Stage != "" {
		return errorf("params", "version and stage are mutually exclusive: a version is immutable, a stage moves")
	}
	if sc.cross != nil {
		return sc.cross(r)
	}
	return nil
}

// Parse parses and validates a SecretRef and returns it normalised.
func Parse(s string) (Ref, error) {
	if err := checkRaw(s); err != nil {
		return Ref{}, err
	}
	schemeStr, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Ref{}, errorf("scheme", `missing "://" (a ref looks like vault://mount/path#field)`)
	}
	scheme := Scheme(strings.ToLower(schemeStr))
	if _, known := rulesFor(scheme); !known {
		if schemeStr == "" {
			return Ref{}, errorf("scheme", "is empty")
		}
		return Ref{}, errorf("scheme", "unknown scheme (want vault, aws-sm or local)")
	}
	r := Ref{Scheme: scheme}

	rest, fragment, hasFragment := strings.Cut(rest, "#")
	locator, query, hasQuery := strings.Cut(rest, "?")

	if strings.Contains(locator, "@") {
		return Ref{}, errorf("locator", "credentials (user@ or user:password@) are not allowed in a ref; the backend authenticates on its own")
	}
	path, err := unescape(locator)
	if err != nil {
		return Ref{}, errorf("locator", "%v", err)
	}
	r.Path = path

	if hasQuery {
		if err := r.parseQuery(query); err != nil {
			return Ref{}, err
		}
	}
	if hasFragment {
		if fragment == "" {
			return Ref{}, errorf("selector", `is empty after "#": drop the "#" to select the whole value`)
		}
		if strings.Contains(fragment, "#") {
			return Ref{}, errorf("selector", `has a second "#"`)
		}
		f, err := unescape(fragment)
		if err != nil {
			return Ref{}, errorf("selector", "%v", err)
		}
		r.Field = f
	}
	if err := r.Validate(); err != nil {
		return Ref{}, err
	}
	return r, nil
}

func (r *Ref) parseQuery(q string) error {
	if q == "" {
		return errorf("params", `is empty after "?"`)
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(q, "&") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return errorf("params", "each param must be name=value")
		}
		if !isParamName(k) {
			return errorf("params", "a param name is not one of version, stage, namespace, region")
		}
		if seen[k] {
			return errorf("param "+k, "is given twice")
		}
		seen[k] = true
		val, err := unescape(v)
		if err != nil {
			return errorf("param "+k, "%v", err)
		}
		if val == "" {
			return errorf("param "+k, "is empty")
		}
		switch k {
		case "version":
			r.Version = val
		case "stage":
			r.Stage = val
		case "namespace":
			r.Namespace = val
		case "region":
			r.Region = val
		}
	}
	return nil
}

func isParamName(k string) bool {
	switch k {
	case "version", "stage", "namespace", "region":
		return true
	}
	return false
}

// checkRaw refuses inputs that are not refs at all before any parsing.
func checkRaw(s string) error {
	switch {
	case s == "":
		return errorf("ref", "is empty")
	case len(s) > MaxLen:
		return errorf("ref", "is %d bytes long; the limit is %d", len(s), MaxLen)
	case !utf8.ValidString(s):
		return errorf("ref", "is not valid UTF-8")
	}
	if !strings.Contains(s, "://") {
		if f, secret := DetectLiteral(s); secret {
			return errorf("ref", "looks like a secret value (%s), not a reference: store it in a secret manager and reference it", f.Kind)
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return errorf("ref", "has a control character at byte %d", i+1)
		}
		if c == ' ' {
			return errorf("ref", "has a space at byte %d (percent-encode it, or check for a pasted value)", i+1)
		}
	}
	return nil
}

// checkComponentNotSecret refuses a component that is itself a pasted secret.
func checkComponentNotSecret(component, v string) error {
	if f, secret := DetectLiteral(v); secret {
		return errorf(component, "looks like a secret value (%s), not a name", f.Kind)
	}
	return nil
}

// checkPathSegments checks "/"-separated segments of a vault or local path.
func checkPathSegments(component, p string, minSegments int) error {
	if p == "" {
		return errorf(component, "is empty")
	}
	if strings.HasPrefix(p, "/") {
		return errorf(component, `starts with "/"`)
	}
	if strings.HasSuffix(p, "/") {
		return errorf(component, `ends with "/"`)
	}
	segs := strings.Split(p, "/")
	for i, seg := range segs {
		switch seg {
		case "":
			return errorf(component, `segment %d is empty ("//")`, i+1)
		case ".", "..":
			return errorf(component, `segment %d is %q: relative segments are not allowed`, i+1, seg)
		}
		for j := 0; j < len(seg); j++ {
			c := seg[j]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				if c == ':' {
					return errorf(component, "segment %d has \":\": a host:port does not belong in a ref", i+1)
				}
				return errorf(component, "segment %d has a character outside A-Z a-z 0-9 . _ - at byte %d", i+1, j+1)
			}
		}
		if err := checkComponentNotSecret(component, seg); err != nil {
			return err
		}
	}
	if len(segs) < minSegments {
		return errorf(component, "needs at least %d segments (mount and path)", minSegments)
	}
	return nil
}

// checkField validates a selector: a plain field name, or a JSON pointer
// (RFC 6901) when it starts with "/".
func checkField(f string) error {
	if f == "" {
		return nil
	}
	if len(f) > 512 {
		return errorf("selector", "is %d bytes long; the limit is 512", len(f))
	}
	if strings.HasPrefix(f, "/") {
		for i := 0; i < len(f); i++ {
			if f[i] == '~' && (i+1 >= len(f) || (f[i+1] != '0' && f[i+1] != '1')) {
				return errorf("selector", `JSON pointer has "~" not followed by 0 or 1 at byte %d`, i+1)
			}
		}
		for _, tok := range strings.Split(f[1:], "/") {
			if err := checkComponentNotSecret("selector", tok); err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i < len(f); i++ {
		c := f[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return errorf("selector", `has a character outside A-Z a-z 0-9 . _ - at byte %d (use a JSON pointer "/a/b" for nested keys)`, i+1)
		}
	}
	return checkComponentNotSecret("selector", f)
}

// scheme rules.
type schemeRules struct {
	locator func(string) error
	// params are the scheme's parameters and their checks: an array, not
	// a map, so that looking up a scheme's rules allocates nothing (Parse
	// runs on every Resolve).
	params [3]paramRule
	cross  func(Ref) error
}

type paramRule struct {
	name  string
	check func(string) error
}

// param returns the check of the named parameter, nil when the scheme has
// no such parameter.
func (s schemeRules) param(name string) func(string) error {
	for _, p := range s.params {
		if p.name == name && p.check != nil {
			return p.check
		}
	}
	return nil
}

func (s schemeRules) paramList() string {
	var names []string
	for _, p := range s.params {
		if p.check != nil {
			names = append(names, p.name)
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// rulesFor returns the rules of a scheme.
func rulesFor(s Scheme) (schemeRules, bool) {
	switch s {
	case SchemeVault:
		return schemeRules{
			locator: func(p string) error { return checkPathSegments("locator", p, 2) },
			params:  [3]paramRule{{"version", positiveInt}, {"namespace", vaultNamespace}},
		}, true
	case SchemeAWSSM:
		return schemeRules{
			locator: awsLocator,
			params:  [3]paramRule{{"version", awsVersionID}, {"stage", awsStage}, {"region", awsRegion}},
			cross:   awsCross,
		}, true
	case SchemeLocal:
		return schemeRules{
			locator: func(p string) error { return checkPathSegments("locator", p, 1) },
			params:  [3]paramRule{{"version", positiveInt}},
		}, true
	}
	return schemeRules{}, false
}

func positiveInt(v string) error {
	if v[0] == '0' {
		return errors.New("must be a positive integer without leading zeros")
	}
	n, err := strconv.ParseUint(v, 10, 63)
	if err != nil || n == 0 {
		return errors.New("must be a positive integer")
	}
	return nil
}

func vaultNamespace(v string) error {
	if strings.HasPrefix(v, "/") || strings.HasSuffix(v, "/") {
		return errors.New(`must not start or end with "/"`)
	}
	for _, seg := range strings.Split(v, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return errors.New("has an empty or relative segment")
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
				return errors.New("has a character outside A-Z a-z 0-9 . _ -")
			}
		}
		if f, secret := DetectLiteral(seg); secret {
			return fmt.Errorf("looks like a secret value (%s), not a namespace", f.Kind)
		}
	}
	return nil
}
