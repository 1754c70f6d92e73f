package secretref

import (
	"strings"
	"testing"
)

func TestPatternMatches(t *testing.T) {
	cases := []struct {
		pattern string
		match   []string
		miss    []string
	}{
		{"*", []string{"vault://secret/a/b#c", "local://x#k", "aws-sm://prod/db"}, nil},
		{"vault://*", []string{"vault://secret/a/b#c", "vault://kv/x/y?namespace=team-a"}, []string{"local://secret/a#k", "aws-sm://secret/a"}},
		{"vault://secret/payments/*",
			[]string{"vault://secret/payments/db#password", "vault://secret/payments/db?version=3#password", "VAULT://secret/payments/sub/x", "vault://secret/payments/%64b#password"},
			[]string{"vault://secret/payments#x", "vault://secret/payments-other/db", "vault://secret/paymentsdb/x", "vault://kv/payments/db", "vault://secret/payments/db?namespace=team-a", "local://secret/payments/db"}},
		{"vault://secret/*", []string{"vault://secret/payments/db"}, []string{"vault://secrets/payments/db"}},
		{"vault://secret/payments/*?namespace=team-a", []string{"vault://secret/payments/db?namespace=team-a#k"}, []string{"vault://secret/payments/db#k", "vault://secret/payments/db?namespace=team-b"}},
		{"local://payments/*", []string{"local://payments/db#password", "local://payments/stripe?version=2#api_key"}, []string{"local://canary/value#k", "local://payments#k", "local://paymentsx/db"}},
		{"aws-sm://prod/payments/*", []string{"aws-sm://prod/payments/db#password", "aws-sm://prod/payments/db?stage=AWSPREVIOUS"}, []string{"aws-sm://prod/billing/db", "aws-sm://prod/payments/db?region=eu-west-1"}},
		{"aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/payments/*",
			[]string{"aws-sm://arn%3Aaws%3Asecretsmanager%3Aus-east-1%3A123456789012%3Asecret%3Aprod/payments/db-AbCdEf#password"},
			[]string{"aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/billing/db-AbCdEf"}},
		{"local://payments/db", []string{"local://payments/db#password", "local://payments/db?version=4#user", "local://payments/db"}, []string{"local://payments/db2#password", "local://payments/db/x#k"}},
		{"local://payments/db#password", []string{"local://payments/db#password", "local://payments/db?version=2#password"}, []string{"local://payments/db#user", "local://payments/db"}},
		{"vault://secret/payments/db?version=3#password", []string{"vault://secret/payments/db?version=3#password"}, []string{"vault://secret/payments/db?version=4#password", "vault://secret/payments/db#password"}},
	}
	for _, tc := range cases {
		p, err := ParsePattern(tc.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", tc.pattern, err)
		}
		again, err := ParsePattern(p.String())
		if err != nil || again != p {
			t.Fatalf("%q: canonical form %q does not parse back: %v", tc.pattern, p.String(), err)
		}
		for _, m := range tc.match {
			if !p.Matches(MustParse(m)) {
				t.Errorf("%s does not match %s", tc.pattern, m)
			}
		}
		for _, m := range tc.miss {
			if p.Matches(MustParse(m)) {
				t.Errorf("%s matches %s", tc.pattern, m)
			}
		}
	}
}

func TestParsePatternRefusals(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"payments/*", "not a ref pattern"},
		{"ftp://x/*", "unknown scheme"},
		{"vault://secret/pay*", `"*" may only`},
		{"vault://*/payments", `"*" may only`},
		{"vault://secret/payments/*#password", "covers every field"},
		{"vault://secret/payments/*?version=3", "covers every version"},
		{"vault://u:hunter2@secret/payments/*", "credentials"},
		{"vault://secret/../x/*", "relative"},
		{"local://canary-3f9a0c2be41d7785a6c0d2e1/*", "secret value"},
	} {
		_, err := ParsePattern(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePattern(%q) = %v; want an error with %q", tc.in, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), tc.in) {
			t.Errorf("error repeats its input: %v", err)
		}
	}
}

// FuzzParsePattern: no panic; a pattern that parses has a canonical form
// that parses to the same pattern; errors never repeat the input.
func FuzzParsePattern(f *testing.F) {
	for _, s := range []string{"*", "vault://*", "vault://secret/payments/*", "local://payments/db#password", "aws-sm://arn:aws:secretsmanager:us-east-1:1:secret:prod/*?region=us-east-1", "vault://secret/a/*?namespace=ns"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, err := ParsePattern(in)
		if err != nil {
			if len(in) >= 8 && strings.Contains(err.Error(), in) {
				t.Fatalf("error repeats the input: %v", err)
			}
			return
		}
		again, err := ParsePattern(p.String())
		if err != nil || again != p {
			t.Fatalf("canonical form %q of %q does not round-trip: %v", p.String(), in, err)
		}
	})
}
