package secretref

import "strings"

// Pattern selects refs by where they point: what a "bind" grant names. It
// is one of
//
//   - every ref
//     vault://*                          every ref of a scheme
//     vault://secret/payments/*          every ref under a path, at a "/" boundary
//     vault://secret/payments/db         one location, any field, version or stage
//     vault://secret/payments/db#password one location and field
//
// A pattern may carry the params that say which partition of a manager
// it names (namespace for vault, region for aws-sm); a ref matches only in
// the same partition, and a pattern without one matches only refs without
// one. A location pattern may also pin a field, version or stage; a path
// pattern ("/*") covers every field and version of what it holds.
//
// Matching is on the parsed, canonical ref, so spelling (scheme case,
// percent-encoding) cannot sneak a ref past a pattern.
type Pattern struct {
	all    bool   // "*"
	scheme Scheme // "" with all
	any    bool   // "scheme://*"
	prefix bool   // ref.Path under loc.Path + "/"
	loc    Ref    // Path, Namespace, Region; Field, Version, Stage pin an exact location
}

// ParsePattern parses a ref pattern. Errors never repeat the input.
func ParsePattern(s string) (Pattern, error) {
	if s == "*" {
		return Pattern{all: true}, nil
	}
	schemeStr, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Pattern{}, errorf("pattern", `is not a ref pattern (want "*", scheme://*, scheme://path/* or a ref)`)
	}
	scheme := Scheme(strings.ToLower(schemeStr))
	if _, known := rulesFor(scheme); !known {
		return Pattern{}, errorf("scheme", "unknown scheme (want vault, aws-sm or local)")
	}
	if rest == "*" {
		return Pattern{scheme: scheme, any: true}, nil
	}
	body, _, hasFragment := strings.Cut(rest, "#")
	locator, query, hasQuery := strings.Cut(body, "?")
	if base, ok := strings.CutSuffix(locator, "/*"); ok {
		if hasFragment {
			return Pattern{}, errorf("selector", `a path pattern ("/*") covers every field; drop the "#"`)
		}
		// The base is checked as the parent of a ref under it: a pattern
		// may stop above the segments a ref needs (vault://secret/*).
		candidate := string(scheme) + "://" + base + "/x"
		if hasQuery {
			candidate += "?" + query
		}
		r, err := Parse(candidate)
		if err != nil {
			return Pattern{}, err
		}
		if r.Version != "" || r.Stage != "" {
			return Pattern{}, errorf("params", "a path pattern covers every version; version and stage may pin only a single location")
		}
		r.Path = strings.TrimSuffix(r.Path, "/x")
		return Pattern{scheme: scheme, prefix: true, loc: r}, nil
	}
	if strings.Contains(s, "*") {
		return Pattern{}, errorf("pattern", `"*" may only stand alone, follow "://", or end the path as "/*"`)
	}
	r, err := Parse(s)
	if err != nil {
		return Pattern{}, err
	}
	return Pattern{scheme: scheme, loc: r}, nil
}

// Matches reports whether the pattern covers r.
func (p Pattern) Matches(r Ref) bool {
	switch {
	case p.all:
		return true
	case r.Scheme != p.scheme:
		return false
	case p.any:
		return true
	case r.Namespace != p.loc.Namespace || r.Region != p.loc.Region:
		return false
	case p.prefix:
		return len(r.Path) > len(p.loc.Path) && r.Path[len(p.loc.Path)] == '/' && strings.HasPrefix(r.Path, p.loc.Path)
	case r.Path != p.loc.Path:
		return false
	}
	return (p.loc.Field == "" || r.Field == p.loc.Field) &&
		(p.loc.Version == "" || r.Version == p.loc.Version) &&
		(p.loc.Stage == "" || r.Stage == p.loc.Stage)
}

// String returns the pattern's canonical form.
func (p Pattern) String() string {
	switch {
	case p.all:
		return "*"
	case p.any:
		return string(p.scheme) + "://*"
	case p.prefix:
		loc := p.loc
		loc.Path += "/*"
		s := loc.String()
		// String escapes "*"; the pattern's own star is literal.
		return strings.Replace(s, "/%2A", "/*", 1)
	}
	return p.loc.String()
}

// IsPattern reports whether s is written as a ref pattern (it names a
// scheme, or is "*"): how a policy tells a ref object from a name.
func IsPattern(s string) bool { return strings.Contains(s, "://") }
