package secretref

import (
	"strings"
	"testing"
)

// FuzzParse checks the parser's invariants on any input: no panic; a ref
// that parses has a canonical form that is a fixed point and parses back to
// the same Ref; an error never repeats a secret-looking input.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"vault://secret/payments/db#password",
		"VAULT://secret/a/b?version=3&namespace=team-a#/db/pw",
		"aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf?region=us-east-1#password",
		"aws-sm://prod/db?stage=AWSPREVIOUS#password",
		"local://payments/signing?version=2#key",
		"vault://admin:hunter2@secret/x",
		"vault://secret/%2e%2e/a",
		"AKIAIOSFODNN7EXAMPLE",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		r, err := Parse(in)
		if err != nil {
			if _, secret := DetectLiteral(in); secret && len(in) >= 8 && strings.Contains(err.Error(), in) {
				t.Fatalf("error repeats a secret-looking input: %v", err)
			}
			if r != (Ref{}) {
				t.Fatalf("error with a non-zero Ref: %+v", r)
			}
			return
		}
		c := r.String()
		again, err := Parse(c)
		if err != nil {
			t.Fatalf("canonical form %q does not parse: %v", c, err)
		}
		if again != r {
			t.Fatalf("round trip changed the ref: %+v -> %q -> %+v", r, c, again)
		}
		if again.String() != c {
			t.Fatalf("canonical form is not a fixed point: %q -> %q", c, again.String())
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("parsed ref does not validate: %v", err)
		}
	})
}
