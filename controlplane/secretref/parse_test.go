package secretref

import (
	"errors"
	"strings"
	"testing"
)

func TestParseValid(t *testing.T) {
	cases := []struct {
		in        string
		canonical string
		want      Ref
	}{
		{"vault://secret/payments/db#password", "vault://secret/payments/db#password",
			Ref{Scheme: SchemeVault, Path: "secret/payments/db", Field: "password"}},
		{"vault://secret/payments/db", "vault://secret/payments/db",
			Ref{Scheme: SchemeVault, Path: "secret/payments/db"}},
		{"VAULT://secret/a/b?version=3&namespace=team-a#/db/pw", "vault://secret/a/b?namespace=team-a&version=3#/db/pw",
			Ref{Scheme: SchemeVault, Path: "secret/a/b", Field: "/db/pw", Version: "3", Namespace: "team-a"}},
		{"vault://kv/app?namespace=team-a/sub#token", "vault://kv/app?namespace=team-a/sub#token",
			Ref{Scheme: SchemeVault, Path: "kv/app", Field: "token", Namespace: "team-a/sub"}},
		{"vault://secret/a#/a~1b/c~0d", "vault://secret/a#/a~1b/c~0d",
			Ref{Scheme: SchemeVault, Path: "secret/a", Field: "/a~1b/c~0d"}},
		{"aws-sm://prod/db?stage=AWSPREVIOUS#password", "aws-sm://prod/db?stage=AWSPREVIOUS#password",
			Ref{Scheme: SchemeAWSSM, Path: "prod/db", Field: "password", Stage: "AWSPREVIOUS"}},
		{"aws-sm://prod/db?region=eu-west-2&stage=AWSCURRENT", "aws-sm://prod/db?region=eu-west-2&stage=AWSCURRENT",
			Ref{Scheme: SchemeAWSSM, Path: "prod/db", Stage: "AWSCURRENT", Region: "eu-west-2"}},
		{"aws-sm://prod/db?version=EXAMPLE1-90ab-cdef-fedc-ba987SECRET1", "aws-sm://prod/db?version=EXAMPLE1-90ab-cdef-fedc-ba987SECRET1",
			Ref{Scheme: SchemeAWSSM, Path: "prod/db", Version: "EXAMPLE1-90ab-cdef-fedc-ba987SECRET1"}},
		{"aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf#password",
			"aws-sm://arn%3Aaws%3Asecretsmanager%3Aus-east-1%3A123456789012%3Asecret%3Aprod/db-AbCdEf#password",
			Ref{Scheme: SchemeAWSSM, Path: "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf", Field: "password"}},
		{"aws-sm://arn%3aaws%3asecretsmanager%3Aus-gov-west-1%3A123456789012%3Asecret%3Adb?region=us-gov-west-1",
			"aws-sm://arn%3Aaws%3Asecretsmanager%3Aus-gov-west-1%3A123456789012%3Asecret%3Adb?region=us-gov-west-1",
			Ref{Scheme: SchemeAWSSM, Path: "arn:aws:secretsmanager:us-gov-west-1:123456789012:secret:db", Region: "us-gov-west-1"}},
		{"aws-sm://arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:x", "aws-sm://arn%3Aaws-cn%3Asecretsmanager%3Acn-north-1%3A123456789012%3Asecret%3Ax",
			Ref{Scheme: SchemeAWSSM, Path: "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:x"}},
		{"aws-sm://team+a/key=1", "aws-sm://team+a/key=1", Ref{Scheme: SchemeAWSSM, Path: "team+a/key=1"}},
		{"aws-sm://%70rod/db", "aws-sm://prod/db", Ref{Scheme: SchemeAWSSM, Path: "prod/db"}},
		{"local://payments/signing#key", "local://payments/signing#key", Ref{Scheme: SchemeLocal, Path: "payments/signing", Field: "key"}},
		{"local://token?version=12", "local://token?version=12", Ref{Scheme: SchemeLocal, Path: "token", Version: "12"}},
		{"Local://a.b_c-d", "local://a.b_c-d", Ref{Scheme: SchemeLocal, Path: "a.b_c-d"}},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			r, err := Parse(tc.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if r != tc.want {
				t.Fatalf("got %+v, want %+v", r, tc.want)
			}
			if got := r.String(); got != tc.canonical {
				t.Fatalf("String() = %q, want %q", got, tc.canonical)
			}
			again, err := Parse(r.String())
			if err != nil || again != r {
				t.Fatalf("round trip: %+v, %v", again, err)
			}
			if err := r.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	const secretish = "hunter2-Zq8vW3xR"
	cases := []struct {
		in        string
		component string
		reason    string // substring of the reason
	}{
		{"", "ref", "is empty"},
		{"vault", "scheme", `missing "://"`},
		{"://secret/a", "scheme", "is empty"},
		{"gopher://secret/a", "scheme", "unknown scheme"},
		{"spiffe://example.org/x", "scheme", "unknown scheme"},
		{"vault://", "locator", "is empty"},
		{"vault://secret", "locator", "at least 2 segments"},
		{"vault://secret/", "locator", `ends with "/"`},
		{"vault:///secret/a", "locator", `starts with "/"`},
		{"vault://secret//a", "locator", "segment 2 is empty"},
		{"vault://secret/../etc", "locator", `".."`},
		{"vault://secret/./a", "locator", `"."`},
		{"vault://secret/%2e%2e/a", "locator", `".."`},
		{"vault://admin:" + secretish + "@secret/a", "locator", "credentials"},
		{"vault://" + secretish + "@secret/a", "locator", "credentials"},
		{"vault://vault.internal:8200/secret/a", "locator", "host:port"},
		{"vault://secret/a b", "ref", "space"},
		{"vault://secret/a\x00b", "ref", "control character"},
		{"vault://secret/a\tb", "ref", "control character"},
		{"vault://secret/a\x7f", "ref", "control character"},
		{"vault://secret/\xff\xfe", "ref", "UTF-8"},
		{"vault://secret/a%0a", "locator", "control character"},
		{"aws-sm://prod/x?version=token-5d41402abc4b2a76b9719d911017c592", "param version", "secret value"},
		{"aws-sm://prod/x?version=k3j9x0q2m7w1z8c4v6b5n2l0p9r3t7y1", "param version", "secret value"},
		{"aws-sm://prod/x+k3j9x0q2m7w1z8c4v6b5n2l0p9r3t7y1", "locator", "secret value"},
		{"vault://secret/a%zz", "locator", "hex digits"},
		{"vault://secret/a%4", "locator", "hex digits"},
		{"vault://secret/a%ff", "locator", "invalid UTF-8"},
		{"vault://secret/ä", "locator", "outside"},
		{"vault://secret/a#", "selector", "is empty"},
		{"vault://secret/a#b#c", "selector", "second"},
		{"vault://secret/a#a b", "ref", "space"},
		{"vault://secret/a#/a~2", "selector", "~"},
		{"vault://secret/a#x$y", "selector", "outside"},
		{"vault://secret/a?", "params", "empty"},
		{"vault://secret/a?version", "params", "name=value"},
		{"vault://secret/a?=3", "params", "name=value"},
		{"vault://secret/a?version=", "param version", "is empty"},
		{"vault://secret/a?version=0", "param version", "leading zeros"},
		{"vault://secret/a?version=-1", "param version", "positive integer"},
		{"vault://secret/a?version=x", "param version", "positive integer"},
		{"vault://secret/a?version=1&version=2", "param version", "twice"},
		{"vault://secret/a?stage=AWSCURRENT", "param stage", "not a parameter of vault"},
		{"vault://secret/a?ttl=5", "params", "not one of"},
		{"vault://secret/a?namespace=/x", "param namespace", "start or end"},
		{"vault://secret/a?namespace=a//b", "param namespace", "empty or relative"},
		{"aws-sm://prod/db?version=abc", "param version", "version id"},
		{"aws-sm://prod/db?stage=AWSCURRENT&version=EXAMPLE1-90ab-cdef-fedc-ba987SECRET1", "params", "mutually exclusive"},
		{"aws-sm://prod/db?region=mars", "param region", "us-east-1"},
		{"aws-sm://prod/db?stage=a%21b", "param stage", "only letters"},
		{"aws-sm://prod/db?namespace=x", "param namespace", "not a parameter of aws-sm"},
		{"aws-sm://arn:aws:s3:us-east-1:123456789012:secret:x", "locator", "service"},
		{"aws-sm://arn:aws:secretsmanager:us-east-1:1234:secret:x", "locator", "12 digits"},
		{"aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:x?region=eu-west-1", "param region", "differs"},
		{"aws-sm://arn:gcp:secretsmanager:us-east-1:123456789012:secret:x", "locator", "partition"},
		{"aws-sm://prod:db", "locator", "not an ARN"},
		{"aws-sm://prod/db\\x", "locator", "does not allow"},
		{"local://", "locator", "is empty"},
		{"local://a?region=us-east-1", "param region", "not a parameter of local"},
		{"vault://" + strings.Repeat("a/", 1100) + "b", "ref", "the limit is 2048"},
		{"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "ref", "looks like a secret value (JWT)"},
		{"AKIAIOSFODNN7EXAMPLE", "ref", "AWS access key id"},
		{"-----BEGIN PRIVATE KEY-----\nMIIB", "ref", "looks like a secret value (private key)"},
		{"ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT", "ref", "GitHub token"},
		{"vault://secret/a#ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT", "selector", "looks like a secret value"},
		{"vault://secret/ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT", "locator", "looks like a secret value"},
		{"aws-sm://prod/db?stage=ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT", "param stage", "looks like a secret value"},
	}
	if len(cases) < 40 {
		t.Fatalf("only %d malformed cases", len(cases))
	}
	for _, tc := range cases {
		name := tc.in
		if len(name) > 60 {
			name = name[:60]
		}
		t.Run(name, func(t *testing.T) {
			_, err := Parse(tc.in)
			if err == nil {
				t.Fatal("parsed; want an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not *Error", err)
			}
			if e.Component != tc.component || !strings.Contains(e.Reason, tc.reason) {
				t.Fatalf("got %q / %q, want component %q with reason containing %q", e.Component, e.Reason, tc.component, tc.reason)
			}
			msg := err.Error()
			if len(tc.in) >= 6 && strings.Contains(msg, tc.in) {
				t.Fatalf("error echoes the input: %s", msg)
			}
			for _, leak := range []string{secretish, "admin", "Zq8vW3xR", "AKIAIOSFODNN7EXAMPLE", "SflKxw", "MIIB"} {
				if strings.Contains(tc.in, leak) && strings.Contains(msg, leak) {
					t.Fatalf("error leaks %q: %s", leak, msg)
				}
			}
		})
	}
}

func TestValidateBuiltRefs(t *testing.T) {
	cases := []struct {
		r  Ref
		ok bool
	}{
		{Ref{Scheme: SchemeVault, Path: "secret/a", Field: "b"}, true},
		{Ref{}, false},
		{Ref{Scheme: "nope", Path: "a/b"}, false},
		{Ref{Scheme: SchemeVault, Path: "secret/a", Stage: "AWSCURRENT"}, false},
		{Ref{Scheme: SchemeAWSSM, Path: "a", Stage: "AWSCURRENT", Version: "EXAMPLE1-90ab-cdef-fedc-ba987SECRET1"}, false},
	}
	for _, tc := range cases {
		if err := tc.r.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.r, err, tc.ok)
		}
	}
}

func TestAccessors(t *testing.T) {
	r := MustParse("vault://secret/payments/db?version=2#password")
	if r.VaultMount() != "secret" || r.VaultPath() != "payments/db" {
		t.Fatalf("mount %q path %q", r.VaultMount(), r.VaultPath())
	}
	if w := r.WithoutSelector(); w.Field != "" || w.Version != "2" {
		t.Fatalf("WithoutSelector: %+v", w)
	}
	if r.LogValue().String() != r.String() || r.IsZero() || !(Ref{}).IsZero() {
		t.Fatal("LogValue/IsZero")
	}
}

func TestRedact(t *testing.T) {
	cases := []struct{ in, want string }{
		{"VAULT://secret/a#b", "vault://secret/a#b"},
		{"vault://admin:hunter2@secret/a", "vault://[redacted 30 bytes]"},
		{"AKIAIOSFODNN7EXAMPLE", "[redacted 20 bytes]"},
		{"gopher://x", "[redacted 10 bytes]"},
	}
	for _, tc := range cases {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestFromCloudFormation(t *testing.T) {
	cases := []struct{ in, want string }{
		{"{{resolve:secretsmanager:prod/db:SecretString:password:AWSPREVIOUS}}", "aws-sm://prod/db?stage=AWSPREVIOUS#password"},
		{"{{resolve:secretsmanager:prod/db}}", "aws-sm://prod/db"},
		{"{{resolve:secretsmanager:prod/db:SecretString:password}}", "aws-sm://prod/db#password"},
		{"{{resolve:secretsmanager:prod/db:SecretString::AWSPENDING}}", "aws-sm://prod/db?stage=AWSPENDING"},
		{"{{resolve:secretsmanager:prod/db:SecretString:::EXAMPLE1-90ab-cdef-fedc-ba987SECRET1}}", "aws-sm://prod/db?version=EXAMPLE1-90ab-cdef-fedc-ba987SECRET1"},
		{"{{resolve:secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf:SecretString:password}}", "aws-sm://arn%3Aaws%3Asecretsmanager%3Aus-east-1%3A123456789012%3Asecret%3Adb-AbCdEf#password"},
	}
	for _, tc := range cases {
		r, err := FromCloudFormation(tc.in)
		if err != nil || r.String() != tc.want {
			t.Errorf("FromCloudFormation(%q) = %q, %v; want %q", tc.in, r.String(), err, tc.want)
		}
	}
	for _, bad := range []string{"{{resolve:ssm:x}}", "{{resolve:secretsmanager:prod/db:SecretBinary:x}}", "{{resolve:secretsmanager:prod/db:SecretString:p:AWSCURRENT:EXAMPLE1-90ab-cdef-fedc-ba987SECRET1}}"} {
		if _, err := FromCloudFormation(bad); err == nil {
			t.Errorf("FromCloudFormation(%q) succeeded", bad)
		}
	}
}

func TestFromExternalSecrets(t *testing.T) {
	cases := []struct{ scheme, key, prop, version, want string }{
		{"aws-sm", "prod/db", "password", "AWSPREVIOUS", "aws-sm://prod/db?stage=AWSPREVIOUS#password"},
		{"aws-sm", "prod/db", "password", "uuid/EXAMPLE1-90ab-cdef-fedc-ba987SECRET1", "aws-sm://prod/db?version=EXAMPLE1-90ab-cdef-fedc-ba987SECRET1#password"},
		{"vault", "secret/payments/db", "password", "3", "vault://secret/payments/db?version=3#password"},
		{"vault", "secret/payments/db", "", "", "vault://secret/payments/db"},
	}
	for _, tc := range cases {
		r, err := FromExternalSecrets(tc.scheme, tc.key, tc.prop, tc.version)
		if err != nil || r.String() != tc.want {
			t.Errorf("FromExternalSecrets(%q,%q,%q,%q) = %q, %v; want %q", tc.scheme, tc.key, tc.prop, tc.version, r.String(), err, tc.want)
		}
	}
}
