package main

import (
	"strings"
	"testing"
)

func TestParseConfigDocument(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		wantErr string
		check   func(t *testing.T, refs, literals map[string]string)
	}{
		{"mapping form", "name: payments/api\nidentity: spiffe://x.test/a\nlabels: {team: p}\nentries:\n  HOST: db\n  PORT: 5432\n  DB: vault://secret/db#password\n  TOKEN: {ref: \"aws-sm://prod/t#k\"}\n  TEXT: {literal: \"vault://just text\"}\n", "",
			func(t *testing.T, refs, lits map[string]string) {
				if refs["DB"] != "vault://secret/db#password" || refs["TOKEN"] != "aws-sm://prod/t#k" || lits["PORT"] != "5432" || lits["TEXT"] != "vault://just text" || lits["HOST"] != "db" {
					t.Fatalf("refs %v literals %v", refs, lits)
				}
			}},
		{"list form (get -o json)", `{"name": "payments/api", "entries": [{"key": "A", "literal": "1"}, {"key": "B", "ref": "local://x"}], "etag": "3", "createTime": "2026-01-01T00:00:00Z"}`, "",
			func(t *testing.T, refs, lits map[string]string) {
				if lits["A"] != "1" || refs["B"] != "local://x" {
					t.Fatalf("refs %v literals %v", refs, lits)
				}
			}},
		{"duplicate entry key", "name: a\nentries:\n  A: 1\n  A: 2\n", "duplicates", nil},
		{"duplicate top-level key", "name: a\nname: b\n", "given twice", nil},
		{"unknown field", "name: a\nsecrets: {}\n", "unknown field", nil},
		{"entry with both", "name: a\nentries:\n  A: {ref: \"local://x\", literal: \"y\"}\n", "both", nil},
		{"entry with neither", "name: a\nentries:\n  A: {}\n", "neither", nil},
		{"entry unknown field", "name: a\nentries:\n  A: {value: x}\n", "unknown field", nil},
		{"not a mapping", "- a\n- b\n", "top level", nil},
		{"syntax error", "name: [unclosed\n", "parse configuration document", nil},
		{"list entry not a mapping", "name: a\nentries:\n  - x\n", "mapping", nil},
		{"labels not a mapping", "name: a\nlabels: x\n", "labels must be a mapping", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := parseConfigDocument([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			refs, lits := map[string]string{}, map[string]string{}
			for _, e := range doc.GetEntries() {
				if e.GetRef() != "" {
					refs[e.GetKey()] = e.GetRef()
				} else {
					lits[e.GetKey()] = e.GetLiteral()
				}
			}
			tc.check(t, refs, lits)
		})
	}
}

// Errors never repeat values: a secret pasted into a document stays out of
// the terminal and logs.
func TestParseConfigDocumentErrorsOmitValues(t *testing.T) {
	const secret = "ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT"
	for _, in := range []string{
		"name: a\nentries:\n  A: {value: " + secret + "}\n",
		"name: [" + secret + "\n",
		"name: a\nentries:\n  A: 1\n  A: " + secret + "\n",
		"name: \"" + secret + "\nentries: x",
		"{\"name\": \"" + secret + "\", \"entries\": 5}",
	} {
		_, err := parseConfigDocument([]byte(in))
		if err == nil {
			t.Fatalf("parsed %q", in)
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "Zq8vW3") {
			t.Fatalf("error repeats the value: %v", err)
		}
	}
}

func FuzzParseConfigDocument(f *testing.F) {
	for _, s := range []string{
		"name: payments/api\nentries:\n  A: 1\n  B: vault://secret/a#b\n",
		`{"name": "a", "entries": [{"key": "A", "literal": "1"}]}`,
		"name: a\nentries:\n  A: {ref: \"local://x\"}\n",
		"name: a\nlabels: {x: y}\n",
		"- a\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		doc, err := parseConfigDocument(raw)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, e := range doc.GetEntries() {
			if e.GetValue() == nil {
				t.Fatalf("entry %q without value", e.GetKey())
			}
			if seen[e.GetKey()] {
				t.Fatalf("duplicate key %q accepted", e.GetKey())
			}
			seen[e.GetKey()] = true
		}
	})
}
