// Package policy decides who may do what: least-privilege grants from a
// SPIFFE ID (or a trust domain and path prefix) to verbs on named objects
// (secrets, configuration documents) or name prefixes. Deny by default;
// every decision names the grant that allowed it, so it can be explained
// and audited.
package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

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
)

// Verbs lists every verb.
func Verbs() []Verb { return []Verb{Read, Watch, Rotate, Admin} }

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

// Grant is a compiled, validated policy.
type Grant struct {
	Name    string
	Subject Subject
	Verbs   []Verb
	Objects []string // exact names, "prefix/*", or "*"
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
		c.Addf("verbs", "is required (read, watch, rotate, admin)")
	}
	for i, v := range p.Verbs {
		verb, ok := parseVerb(v)
		switch {
		case !ok:
			c.Addf(fmt.Sprintf("verbs[%d]", i), "is not a verb (want read, watch, rotate or admin)")
		case slices.Contains(verbs, verb):
			c.Addf(fmt.Sprintf("verbs[%d]", i), "repeats %s", verb)
		default:
			verbs = append(verbs, verb)
		}
	}
	if len(p.Objects) == 0 {
		c.Addf("objects", "is required (names, \"prefix/*\" or \"*\")")
	}
	for i, o := range p.Objects {
		c.Add(fmt.Sprintf("objects[%d]", i), checkObject(o))
	}
	if err := c.Err(); err != nil {
		return Grant{}, err
	}
	g := Grant{Name: p.Name, Subject: subject, Verbs: verbs, Objects: slices.Clone(p.Objects)}
	if !force {
		if slices.Contains(verbs, Admin) && !subject.Single() {
			c.Addf("subject", "grants admin to every identity matching %s: name one identity, or force it", subject)
		}
		if subject.WholeTrustDomain() && slices.Contains(p.Objects, "*") {
			c.Addf("objects", "grants every object to the whole trust domain %s: narrow it, or force it", subject.td.Name())
		}
	}
	return g, c.Err()
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

// Allows reports whether the grant allows verb on object for id.
func (g Grant) Allows(id spiffeid.ID, verb Verb, object string) bool {
	if !g.Subject.Matches(id) || !slices.Contains(g.Verbs, verb) {
		return false
	}
	for _, o := range g.Objects {
		if objectMatches(o, object) {
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
