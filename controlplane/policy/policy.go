// Package policy decides who may do what: least-privilege grants from a
// SPIFFE ID (or a trust domain and path prefix) to verbs on named objects
// (secrets, configuration documents) or name prefixes, and to bind on ref
// patterns (which backend locations a name may be bound to). Deny by
// default; every decision names the grant that allowed it, so it can be
// explained and audited.
package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
)

// Verb is what a grant allows.
type Verb string

// Verbs.
const (
	Read   Verb = "read"   // resolve a secret's value
	Watch  Verb = "watch"  // stream a secret's new versions
	Rotate Verb = "rotate" // start and drive rotations
	Admin  Verb = "admin"  // manage secrets, configuration, policies, audit
	// Bind lets a name be bound to a ref (a secret put, a configuration
	// document's ref): its objects are ref patterns. The server reads every
	// backend with its own credentials, so without it an admin of any name
	// could read any backend location (the confused deputy).
	Bind Verb = "bind"
)

// Verbs lists every verb.
func Verbs() []Verb { return []Verb{Read, Watch, Rotate, Admin, Bind} }

// verbList is the verbs for messages.
const verbList = "read, watch, rotate, admin or bind"

// ParseVerb returns the verb s names.
func ParseVerb(s string) (Verb, bool) { return parseVerb(s) }

func parseVerb(s string) (Verb, bool) {
	for _, v := range Verbs() {
		if string(v) == s {
			return v, true
		}
	}
	return "", false
}

// Subject is whom a grant names: one SPIFFE ID, every ID under a path
// prefix of a trust domain ("spiffe://td/ns/payments/*"), or a whole trust
// domain ("spiffe://td/*").
type Subject struct {
	td     spiffeid.TrustDomain
	path   string // exact path, or the prefix path without "/*"
	prefix bool
}

// ParseSubject parses a subject pattern.
func ParseSubject(s string) (Subject, error) {
	if base, ok := strings.CutSuffix(s, "/*"); ok {
		if strings.Contains(base, "*") {
			return Subject{}, fmt.Errorf("\"*\" may only end the pattern, as \"/*\"")
		}
		if td, err := spiffeid.TrustDomainFromString(base); err == nil && strings.HasPrefix(base, "spiffe://") && strings.Count(base, "/") == 2 {
			return Subject{td: td, prefix: true}, nil
		}
		id, err := spiffeid.FromString(base)
		if err != nil {
			return Subject{}, fmt.Errorf("is not a SPIFFE ID pattern: %v", err)
		}
		return Subject{td: id.TrustDomain(), path: id.Path(), prefix: true}, nil
	}
	if strings.Contains(s, "*") {
		return Subject{}, fmt.Errorf("\"*\" may only end the pattern, as \"/*\"")
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Subject{}, fmt.Errorf("is not a SPIFFE ID: %v", err)
	}
	if id.Path() == "" {
		return Subject{}, fmt.Errorf("names a trust domain, not a workload: write spiffe://%s/* for every workload of it", id.TrustDomain())
	}
	return Subject{td: id.TrustDomain(), path: id.Path()}, nil
}

// Matches reports whether id is covered by the subject.
func (s Subject) Matches(id spiffeid.ID) bool {
	if id.TrustDomain() != s.td {
		return false
	}
	if !s.prefix {
		return id.Path() == s.path
	}
	return strings.HasPrefix(id.Path(), s.path+"/")
}

// Single reports whether the subject names exactly one identity.
func (s Subject) Single() bool { return !s.prefix }

// WholeTrustDomain reports whether the subject is every ID of a trust domain.
func (s Subject) WholeTrustDomain() bool { return s.prefix && s.path == "" }

func (s Subject) String() string {
	if s.prefix {
		return "spiffe://" + s.td.Name() + s.path + "/*"
	}
	return "spiffe://" + s.td.Name() + s.path
}

// Covers reports whether every identity o matches is also matched by s.
func (s Subject) Covers(o Subject) bool {
	switch {
	case s.td != o.td:
		return false
	case !s.prefix:
		return !o.prefix && s.path == o.path
	case s.path == "":
		return true
	case o.prefix && o.path == s.path:
		return true
	}
	return strings.HasPrefix(o.path, s.path+"/")
}

// Grant is a compiled, validated policy.
type Grant struct {
	Name    string
	Subject Subject
	Verbs   []Verb
	Objects []string // exact names, "prefix/*", "*", or ref patterns (bind)
	refs    []secretref.Pattern
}

// Compile validates a stored policy and compiles it. Unless force is set it
// refuses grants broader than anyone usually intends: admin to more than one
// identity, or any verb on every object to a whole trust domain.
func Compile(p store.Policy, force bool) (Grant, error) {
	var c validate.Collector
	c.Add("name", validate.Name(p.Name))
	c.Add("description", validate.Text(p.Description, validate.MaxDescriptionLen))
	subject, err := ParseSubject(p.Subject)
	if p.Subject == "" {
		c.Addf("subject", "is required")
	} else if err != nil {
		c.Add("subject", err)
	} else {
		c.Add("subject", validate.Identifier(subject.path))
	}
	var verbs []Verb
	if len(p.Verbs) == 0 {
		c.Addf("verbs", "is required (%s)", verbList)
	}
	for i, v := range p.Verbs {
		verb, ok := parseVerb(v)
		switch {
		case !ok:
			c.Addf(fmt.Sprintf("verbs[%d]", i), "is not a verb (want %s)", verbList)
		case slices.Contains(verbs, verb):
			c.Addf(fmt.Sprintf("verbs[%d]", i), "repeats %s", verb)
		default:
			verbs = append(verbs, verb)
		}
	}
	if len(p.Objects) == 0 {
		c.Addf("objects", "is required (names, \"prefix/*\", \"*\", or ref patterns for bind)")
	}
	binds := slices.Contains(verbs, Bind)
	nameVerbs := slices.ContainsFunc(verbs, func(v Verb) bool { return v != Bind })
	var refs []secretref.Pattern
	hasRef, hasName := false, false
	for i, o := range p.Objects {
		field := fmt.Sprintf("objects[%d]", i)
		switch {
		case o == "*":
			hasRef, hasName = true, true
		case secretref.IsPattern(o):
			hasRef = true
			pat, err := secretref.ParsePattern(o)
			if err != nil {
				c.Add(field, err)
				continue
			}
			if !binds {
				c.Addf(field, "is a ref pattern, which only the bind verb takes: add bind to verbs, or grant it in a policy of its own")
			}
			refs = append(refs, pat)
		default:
			hasName = true
			c.Add(field, checkObject(o))
		}
	}
	if binds && !hasRef && len(p.Objects) > 0 {
		c.Addf("objects", "grants bind on no ref pattern: bind takes ref patterns such as vault://secret/payments/* or local://payments/*")
	}
	if nameVerbs && !hasName && len(p.Objects) > 0 {
		c.Addf("objects", "names no secret or configuration for %s: ref patterns are objects of bind only", strings.Join(verbNames(verbs, Bind), ", "))
	}
	if err := c.Err(); err != nil {
		return Grant{}, err
	}
	g := Grant{Name: p.Name, Subject: subject, Verbs: verbs, Objects: slices.Clone(p.Objects), refs: refs}
	if !force {
		if slices.Contains(verbs, Admin) && !subject.Single() {
			c.Addf("subject", "grants admin to every identity matching %s: name one identity, or force it", subject)
		}
		if binds && !subject.Single() {
			c.Addf("subject", "grants bind to every identity matching %s: name one identity, or force it", subject)
		}
		if subject.WholeTrustDomain() && slices.Contains(p.Objects, "*") {
			c.Addf("objects", "grants every object to the whole trust domain %s: narrow it, or force it", subject.td.Name())
		}
	}
	return g, c.Err()
}

// verbNames lists verbs but the one left out, as strings.
func verbNames(verbs []Verb, except Verb) []string {
	var out []string
	for _, v := range verbs {
		if v != except {
			out = append(out, string(v))
		}
	}
	return out
}

func checkObject(o string) error {
	if o == "*" {
		return nil
	}
	if base, ok := strings.CutSuffix(o, "/*"); ok {
		return validate.Name(base)
	}
	if strings.Contains(o, "*") {
		return fmt.Errorf("\"*\" may only stand alone or end the pattern, as \"/*\"")
	}
	return validate.Name(o)
}

// Allows reports whether the grant allows verb on object for id. Objects
// are names: a ref pattern allows nothing here (see AllowsBind).
func (g Grant) Allows(id spiffeid.ID, verb Verb, object string) bool {
	return g.Subject.Matches(id) && g.grantsName(verb, object)
}

// grantsName reports whether the grant holds verb on the named object, for
// whomever it names.
func (g Grant) grantsName(verb Verb, object string) bool {
	if verb == Bind || !slices.Contains(g.Verbs, verb) {
		return false
	}
	for _, o := range g.Objects {
		if !secretref.IsPattern(o) && objectMatches(o, object) {
			return true
		}
	}
	return false
}

// AllowsBind reports whether the grant lets id bind a name to ref.
func (g Grant) AllowsBind(id spiffeid.ID, ref secretref.Ref) bool {
	return g.Subject.Matches(id) && g.bindsRef(ref)
}

// bindsRef reports whether the grant holds bind on ref, for whomever it
// names.
func (g Grant) bindsRef(ref secretref.Ref) bool {
	if !slices.Contains(g.Verbs, Bind) {
		return false
	}
	if slices.Contains(g.Objects, "*") {
		return true
	}
	for _, p := range g.refs {
		if p.Matches(ref) {
			return true
		}
	}
	return false
}

// AllowsPrefix reports whether the grant allows verb on every object whose
// name starts with prefix (a listing).
func (g Grant) AllowsPrefix(id spiffeid.ID, verb Verb, prefix string) bool {
	if !g.Subject.Matches(id) || !slices.Contains(g.Verbs, verb) {
		return false
	}
	for _, o := range g.Objects {
		if o == "*" {
			return true
		}
		if secretref.IsPattern(o) {
			continue
		}
		if base, ok := strings.CutSuffix(o, "*"); ok && strings.HasPrefix(prefix, base) {
			return true
		}
	}
	return false
}

func objectMatches(pattern, name string) bool {
	if pattern == "*" {
		return true
	}
	if base, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(name, base)
	}
	return pattern == name
}
