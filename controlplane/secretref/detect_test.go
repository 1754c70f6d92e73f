package secretref

import (
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
