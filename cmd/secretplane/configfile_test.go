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

// Keys are input too: a secret given as a key, a field name or a label is
// named by its length in the error, in every lower-case token shape.
func TestParseErrorsMaskSecretKeys(t *testing.T) {
	for _, secret := range []string{
		"canary-3f9a0c2be41d7785a6c0d2e1",
		"token-5d41402abc4b2a76b9719d911017c592",
		"api-key-2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
		"k3j9x0q2m7w1z8c4v6b5n2l0p9r3t7y1",
	} {
		for _, in := range []string{
			"name: a\n" + secret + ": x\n",
			"name: a\nentries:\n  " + secret + ": 1\n  " + secret + ": 2\n",
			"name: a\nentries:\n  A: {" + secret + ": x}\n",
			"name: a\nentries:\n  " + secret + ": {}\n",
			"name: a\nentries:\n  " + secret + ": [1]\n",
			"name: a\nlabels: {" + secret + ": [x]}\n",
			"name: a\nentries:\n  - {key: " + secret + ", literal: x}\n  - {key: " + secret + ", literal: y}\n",
		} {
			_, err := parseConfigDocument([]byte(in))
			if err == nil {
				t.Fatalf("parsed %q", in)
			}
			if msg := describeError(err); strings.Contains(msg, secret) || !strings.Contains(msg, "bytes, not shown") {
				t.Fatalf("error %q: want the key masked", msg)
			}
		}
		raw := "policies:\n  - name: x\n    subject: spiffe://a.test/b\n    verbs: [read]\n    objects: [a]\n    " + secret + ": 1\n"
		if _, err := parsePolicies([]byte(raw)); err == nil || strings.Contains(describeError(err), secret) {
			t.Fatalf("policy file error: %v", err)
		}
		raw = "policies:\n  - {name: " + secret + ", subject: s}\n  - {name: " + secret + ", subject: s}\n"
		if _, err := parsePolicies([]byte(raw)); err == nil || strings.Contains(describeError(err), secret) {
			t.Fatalf("policy file error: %v", err)
		}
	}
	if got := shown("DB_HOST"); got != `"DB_HOST"` {
		t.Fatalf("an ordinary key is shown as %s", got)
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
