package secretref

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

func TestDetectLiteral(t *testing.T) {
	positives := []struct{ in, kind string }{
		{"-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----", "PEM block"},
		{"-----BEGIN RSA PRIVATE KEY-----\nMIIE", "private key"},
		{"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl", "private key"},
		{"-----BEGIN EC PRIVATE KEY-----", "private key"},
		{"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "JWT"},
		{"Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl", "JWT"},
		{"AKIAIOSFODNN7EXAMPLE", "AWS access key id"},
		{"ASIAY34FZKBOKMUTVV7A", "AWS access key id"},
		{"aws_access_key_id=AKIAIOSFODNN7EXAMPLE", "AWS access key id"},
		{"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "high-entropy token"},
		{"ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT", "GitHub token"},
		{"gho_16C7e42F292c6912E7710c838347Ae178B4a", "GitHub token"},
		{"github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "GitHub token"},
		{"xoxb-123456789012-123456789012-AbCdEfGhIjKl", "Slack token"},
		{"AIzaSyA-1234567890abcdefghijklmnopqrstu", "Google API key"},
		{"sk_live_4eC39HqLyjWDarjtT1zdp7dc", "Stripe key"},
		{"glpat-xxxxxxxxxxxxxxxxxxxx", "GitLab token"},
		{"hvs.CAESIJlWbWc3Zq8vW3xRpL2mN7kT9sY4", "Vault token"},
		{"postgres://app:s3cr3t@db.internal:5432/app", "URL with a password"},
		{"amqp://guest:guest@localhost:5672/", "URL with a password"},
		{"password=hunter2x", "credential assignment"},
		{"host=db user=app password=hunter2x sslmode=require", "credential assignment"},
		{"Zq8vW3xRpL2mN7kT9sY4", "high-entropy token"},
		{"3f2a9c1b7d4e8f60a1b2c3d4e5f60718293a4b5c6d7e8f90", "high-entropy token"},
		{"dGhpcyBpcyBhIHNlY3JldCB2YWx1ZSB0aGF0IGlzIGxvbmc9PQ==", "high-entropy token"},
		{"token: Zq8vW3xRpL2mN7kT9sY4aB", "high-entropy token"},
		// Generated credentials without a known format: a word prefix and
		// a random body, and long random lower-case alphanumerics.
		{"canary-3f9a0c2be41d7785a6c0d2e1", "prefixed random token"},
		{"token-5d41402abc4b2a76b9719d911017c592", "prefixed random token"},
		{"api-key-2fd4e1c67a2d28fced849ee1bb76e7391b93eb12", "prefixed random token"},
		{"API_KEY_2FD4E1C67A2D28FCED849EE1", "prefixed random token"},
		{"session.k3j9x0q2m7w1z8c4v6b5", "prefixed random token"},
		{"prod/x+k3j9x0q2m7w1z8c4v6b5n2l0p9r3t7y1", "prefixed random token"},
		{"secret/k3j9x0q2m7w1z8c4v6b5n2l0p9r3t7y1", "prefixed random token"},
		{"k3j9x0q2m7w1z8c4v6b5n2l0p9r3t7y1", "random lower-case token"},
		{"q8w2e7r4t1y6u3i9o0p5a2s8d7f4g1h6", "random lower-case token"},
		{"DB_PASSWORD=k3j9x0q2m7w1z8c4v6b5n2l0", "random lower-case token"},
		// Real public formats (example or revoked values from the vendors' docs).
		{"ghs_16C7e42F292c6912E7710c838347Ae178B4a", "GitHub token"},
		{"ghr_1B4a2e77838347a7E420ce178F2E7c6912E169246c34E1ccbF66C46812d16D5B1A9Dc86A1498", "GitHub token"},
		{"xoxp-123456789012-123456789012-123456789012-abcdef0123456789abcdef0123456789", "Slack token"},
		{"xapp-1-A0123456789-1234567890123-abcdef0123456789", "Slack token"},
		{"https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX", "Slack webhook URL"},
		{"rk_live_51H8xYzAbCdEfGhIjKlMnOpQr", "Stripe key"},
		{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "Stripe key"},
		{"ya29.a0AfH6SMBx3kYz-8vW3xRpL2mN7kT9sY4Zq8vW3xRp", "Google OAuth access token"},
		{"AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI", "Google API key"},
		{"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", "SendGrid key"},
		{"eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93In0.c2lnbmF0dXJlLWJ5dGVz", "JWT"},
	}
	negatives := []string{
		"", "30s", "true", "5432", "db.internal.example.com", "https://example.com/path?x=1",
		"postgres://app@db.internal:5432/app?sslmode=verify-full", "/etc/ssl/certs/ca-certificates.crt",
		"spiffe://secretplane.test/workload/payments-api", "vault://secret/payments/db#password",
		"aws-sm://prod/db?stage=AWSPREVIOUS#password", "123e4567-e89b-12d3-a456-426614174000",
		"v1.2.3-rc.1", "payments-api-7d9f8b6c5d-x2k4p", "Hello world, this is a sentence.",
		"team-payments/stripe-webhook-signing-key-v2", "MyServiceName2024Production",
		"ProductionDatabaseReplica01", "eu-west-1.amazonaws.com", "ip-10-0-12-34.ec2.internal",
		"com.example.payments.v1.PaymentService", "aGVsbG8=", "INFO", "application/json",
		"k8s.gcr.io/pause:3.9", "password", "password_file=/run/secrets/db", "2026-11-24T20:00:00Z",
		"X-Request-Id", "us-east-1", "arn:aws:iam::123456789012:role/payments",
		// Ids and names that end in numbers, short hashes or words.
		"build-20261124153000", "checkout-42", "payments-api-7d9f8b6c5d", "v1.2.3-g1a2b3c4", "release-2026.11.24",
		"productiondatabasereplica01", "kubernetesdashboard2024", "team2payments3stripe4key",
		"sha-1a2b3c4", "pod-5f7b9c8d4-xk2lp", "db-replica-01.eu-west-1.rds.amazonaws.com",
		"order-123e4567-e89b-12d3-a456-426614174000", "507f1f77bcf86cd799439011", "5f3c2a1b9e8d7c6b5a4f3e2d",
		"https://hooks.example.com/services/payments", "ip10012034ec2internal", "usereast1prodcluster",
	}
	for _, p := range positives {
		f, ok := DetectLiteral(p.in)
		if !ok || f.Kind != p.kind {
			t.Errorf("DetectLiteral(%.40q) = %q, %v; want %q", p.in, f.Kind, ok, p.kind)
		}
	}
	for _, n := range negatives {
		if f, ok := DetectLiteral(n); ok {
			t.Errorf("DetectLiteral(%q) flagged %q; want not flagged", n, f.Kind)
		}
	}
	if len(positives) < 25 || len(negatives) < 25 {
		t.Fatalf("want at least 25 of each, have %d and %d", len(positives), len(negatives))
	}
}

// The random lower-case rule is statistical: these are its measured rates,
// on a fixed seed so the figures are stable, for the doc comment's claims.
func TestRandomLowerAlnumRates(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	draw := func(alphabet string, n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	const alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	for _, tc := range []struct {
		n    int
		want float64
	}{{24, 0.95}, {32, 0.97}, {40, 0.98}} {
		hits := 0
		for i := 0; i < 20000; i++ {
			if _, ok := DetectLiteral(draw(alnum, tc.n)); ok {
				hits++
			}
		}
		if rate := float64(hits) / 20000; rate < tc.want {
			t.Errorf("%d random lower-case alphanumerics: flagged %.3f, want at least %.2f", tc.n, rate, tc.want)
		}
	}
	// A word prefix and a random hex body: always.
	for _, prefix := range []string{"canary-", "token-", "api-key-", "secret_"} {
		for _, n := range []int{24, 32, 40} {
			for i := 0; i < 2000; i++ {
				s := prefix + draw("0123456789abcdef", n)
				if _, ok := DetectLiteral(s); !ok && strings.ContainsAny(s[len(prefix):], "abcdef") && strings.ContainsAny(s[len(prefix):], "0123456789") {
					t.Fatalf("missed %s<%d hex>: %q", prefix, n, s)
				}
			}
		}
	}
	// Identifiers of words and numbers, without separators: never.
	words := strings.Fields("payments api production database replica kubernetes dashboard team stripe key user east prod cluster service account billing worker gateway edge internal config webhook signing order checkout inventory search index cache redis postgres primary secondary backup region zone node pool deploy release canary staging alpha beta gamma monitor metrics logging tracing")
	for i := 0; i < 100000; i++ {
		var b strings.Builder
		for target := 24 + i%24; b.Len() < target; {
			w := rng.IntN(len(words))
			b.WriteString(words[w])
			if w%3 == 0 {
				b.WriteString(strconv.Itoa(rng.IntN(1000)))
			}
		}
		if f, ok := DetectLiteral(b.String()); ok {
			t.Fatalf("flagged the identifier %q as a %s", b.String(), f.Kind)
		}
	}
}

func TestDetectLiteralIsLinear(t *testing.T) {
	// A long input must not blow up: one pass per token.
	s := strings.Repeat("a=b:c ", 20000)
	if _, ok := DetectLiteral(s); ok {
		t.Fatal("flagged a repetitive harmless string")
	}
}

func BenchmarkParse(b *testing.B) {
	for i := 0; i < b.N; i++ {
		if _, err := Parse("aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf?stage=AWSPREVIOUS#password"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDetectLiteral(b *testing.B) {
	in := "request failed for payments/db after 3 attempts: upstream returned 503"
	for i := 0; i < b.N; i++ {
		DetectLiteral(in)
	}
}

// FuzzDetectLiteral: no panic on any input, and a secret stays flagged
// when it is embedded in text (a log line, an error message).
func FuzzDetectLiteral(f *testing.F) {
	for _, s := range []string{"canary-3f9a0c2be41d7785a6c0d2e1", "k3j9x0q2m7w1z8c4v6b5n2l0p9r3t7y1", "password=hunter2x", "db.internal", "a=b:c ", "-----BEGIN "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if _, ok := DetectLiteral(s); ok {
			if _, still := DetectLiteral("failed with " + s + " ; retrying"); !still {
				t.Fatalf("%q is flagged alone but not inside a sentence", s)
			}
		}
	})
}
