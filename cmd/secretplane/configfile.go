package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// parseConfigDocument reads a configuration document in YAML or JSON (JSON
// is YAML). Two shapes of entries are accepted:
//
//	entries:                            # a mapping, the hand-written form
//	  DB_HOST: db.internal              # a literal
//	  DB_PASSWORD: vault://secret/payments/db#password   # a SecretRef (known scheme)
//	  API_TOKEN: {ref: "aws-sm://prod/api#token"}        # explicit ref
//	  GREETING: {literal: "vault://is just text here"}   # explicit literal
//
//	entries:                            # a list, as `config get -o json` prints
//	  - {key: DB_HOST, literal: db.internal}
//	  - {key: DB_PASSWORD, ref: "vault://secret/payments/db#password"}
//
// Duplicate keys and unknown fields are errors. Values are never echoed in
// errors: they may be secrets pasted by mistake.
func parseConfigDocument(raw []byte) (*spv1.ConfigDocument, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&root); err != nil {
		return nil, fmt.Errorf("parse configuration document: %s", yamlErrorWithoutValue(err))
	}
	if len(root.Content) != 1 || root.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("parse configuration document: the top level must be a mapping with name and entries")
	}
	doc := &spv1.ConfigDocument{}
	top := root.Content[0]
	seen := map[string]bool{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		if seen[k.Value] {
			return nil, fmt.Errorf("line %d: %s given twice", k.Line, shown(k.Value))
		}
		seen[k.Value] = true
		switch k.Value {
		case "name", "identity", "etag":
			if v.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: %s must be a string", v.Line, k.Value)
			}
			switch k.Value {
			case "name":
				doc.Name = v.Value
			case "identity":
				doc.Identity = v.Value
			case "etag":
				doc.Etag = v.Value
			}
		case "labels":
			labels, err := stringMap(v)
			if err != nil {
				return nil, err
			}
			doc.Labels = labels
		case "entries":
			entries, err := parseEntries(v)
			if err != nil {
				return nil, err
			}
			doc.Entries = entries
		case "createTime", "updateTime", "create_time", "update_time":
			// Printed by `config get -o json`; server-owned, ignored on input.
		default:
			return nil, fmt.Errorf("line %d: unknown field %s (want name, identity, labels, entries, etag)", k.Line, shown(k.Value))
		}
	}
	return doc, nil
}

func parseEntries(n *yaml.Node) ([]*spv1.ConfigEntry, error) {
	var out []*spv1.ConfigEntry
	switch n.Kind {
	case yaml.MappingNode:
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if line, dup := seen[k.Value]; dup {
				return nil, fmt.Errorf("line %d: entry %s duplicates line %d", k.Line, shown(k.Value), line)
			}
			seen[k.Value] = k.Line
			e, err := entryValue(k.Value, v)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
	case yaml.SequenceNode:
		keys := map[string]int{}
		for _, item := range n.Content {
			if item.Kind != yaml.MappingNode {
				return nil, fmt.Errorf("line %d: each entry must be a mapping with key and literal or ref", item.Line)
			}
			var key string
			fieldsSeen := map[string]bool{}
			for i := 0; i+1 < len(item.Content); i += 2 {
				if item.Content[i].Value == "key" {
					key = item.Content[i+1].Value
				}
				if fieldsSeen[item.Content[i].Value] {
					return nil, fmt.Errorf("line %d: %s given twice", item.Content[i].Line, shown(item.Content[i].Value))
				}
				fieldsSeen[item.Content[i].Value] = true
			}
			if key == "" {
				return nil, fmt.Errorf("line %d: entry has no key", item.Line)
			}
			if line, dup := keys[key]; dup {
				return nil, fmt.Errorf("line %d: entry %s duplicates line %d", item.Line, shown(key), line)
			}
			keys[key] = item.Line
			e, err := explicitEntry(key, item, "key")
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
	default:
		return nil, fmt.Errorf("line %d: entries must be a mapping or a list", n.Line)
	}
	return out, nil
}

// entryValue reads one value of the mapping form.
func entryValue(key string, v *yaml.Node) (*spv1.ConfigEntry, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		if looksLikeSecretRef(v.Value) {
			return &spv1.ConfigEntry{Key: key, Value: &spv1.ConfigEntry_Ref{Ref: v.Value}}, nil
		}
		return &spv1.ConfigEntry{Key: key, Value: &spv1.ConfigEntry_Literal{Literal: v.Value}}, nil
	case yaml.MappingNode:
		return explicitEntry(key, v)
	default:
		return nil, fmt.Errorf("line %d: entry %s must be a string, {ref: ...} or {literal: ...}", v.Line, shown(key))
	}
}

// explicitEntry reads {ref: ...} or {literal: ...}, plus any allowed extra
// fields (such as "key" in the list form).
func explicitEntry(key string, m *yaml.Node, extra ...string) (*spv1.ConfigEntry, error) {
	e := &spv1.ConfigEntry{Key: key}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if v.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("line %d: %s of entry %s must be a string", v.Line, shown(k.Value), shown(key))
		}
		switch k.Value {
		case "ref":
			if e.Value != nil {
				return nil, fmt.Errorf("line %d: entry %s sets both ref and literal", k.Line, shown(key))
			}
			e.Value = &spv1.ConfigEntry_Ref{Ref: v.Value}
		case "literal":
			if e.Value != nil {
				return nil, fmt.Errorf("line %d: entry %s sets both ref and literal", k.Line, shown(key))
			}
			e.Value = &spv1.ConfigEntry_Literal{Literal: v.Value}
		default:
			if !contains(extra, k.Value) {
				return nil, fmt.Errorf("line %d: entry %s has unknown field %s (want ref or literal)", k.Line, shown(key), shown(k.Value))
			}
		}
	}
	if e.Value == nil {
		return nil, fmt.Errorf("line %d: entry %s has neither ref nor literal", m.Line, shown(key))
	}
	return e, nil
}

func stringMap(n *yaml.Node) (map[string]string, error) {
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: labels must be a mapping", n.Line)
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if v.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("line %d: label %s must be a string", v.Line, shown(k.Value))
		}
		if _, dup := out[k.Value]; dup {
			return nil, fmt.Errorf("line %d: label %s given twice", k.Line, shown(k.Value))
		}
		out[k.Value] = v.Value
	}
	return out, nil
}

// looksLikeSecretRef: a string value whose scheme is a SecretRef scheme is a
// reference in the mapping form.
func looksLikeSecretRef(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	if !ok {
		return false
	}
	switch strings.ToLower(scheme) {
	case "vault", "aws-sm", "local":
		return true
	}
	return false
}

// yamlErrorWithoutValue keeps the position of a YAML syntax error and drops
// any quoted input the parser put in its message, and any unquoted word
// of input that looks like a secret (a strict decoder names unknown
// fields bare: "field X not found"). A quoted single punctuation mark is
// the grammar's, not input ("could not find expected ':'"), and is kept,
// so the message is whole. A missing ':' is explained: besides a line
// that is not "key: value", it is what YAML says of a key longer than
// the 1024 characters it allows.
func yamlErrorWithoutValue(err error) string {
	msg := err.Error()
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if strings.IndexByte("`\"'", c) < 0 {
			b.WriteByte(c)
			continue
		}
		if c == '\'' && i+2 < len(msg) && msg[i+2] == '\'' && strings.IndexByte(",:]}[{-?|>#&*!%@", msg[i+1]) >= 0 {
			b.WriteString(msg[i : i+3])
			i += 2
			continue
		}
		break
	}
	out := strings.TrimRight(b.String(), " :,")
	if strings.Contains(out, "could not find expected ':'") {
		out += " (a line that is not key: value, or a key longer than YAML's 1024 characters)"
	}
	return scrub(out)
}

// unknownKeyError names a key of a settings file that names no setting,
// with the line it is on in raw (the file): the key itself when it can be
// shown, else its length, and that it is longer than any setting's key
// (longest) when it is. koanf flattens keys with delim; the line is found by walking
// the file's mappings along the key's parts.
func unknownKeyError(raw []byte, key string, longest int) string {
	dotted := strings.ReplaceAll(key, delim, ".")
	line := ""
	if n := keyLine(raw, strings.Split(key, delim)); n > 0 {
		line = fmt.Sprintf("line %d", n)
	}
	s := shown(dotted)
	if !strings.HasPrefix(s, "[") {
		if line == "" {
			return s
		}
		return s + " (" + line + ")"
	}
	why := "not shown"
	if len(dotted) > longest {
		why = fmt.Sprintf("not shown; longer than any setting's key, at most %d", longest)
	}
	if line != "" {
		why = line + ": " + why
	}
	return fmt.Sprintf("a key of %d characters (%s)", len(dotted), why)
}

// keyLine is the line of the key at path in the YAML document raw, or 0.
func keyLine(raw []byte, path []string) int {
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil || len(root.Content) != 1 {
		return 0
	}
	n, line := root.Content[0], 0
	for len(path) > 0 {
		if n.Kind != yaml.MappingNode {
			return line
		}
		found := false
		// A key may itself hold the delimiter (koanf split it): take the
		// longest run of parts that names a key here.
		for j := len(path); j > 0 && !found; j-- {
			want := strings.Join(path[:j], delim)
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == want {
					line, n, path, found = n.Content[i].Line, n.Content[i+1], path[j:], true
					break
				}
			}
		}
		if !found {
			return line
		}
	}
	return line
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
