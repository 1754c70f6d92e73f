package logging_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/secretplane/secretplane/controlplane/logging"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

const (
	jwt   = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	token = "ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT"
	weak  = "hunter2"
)

func TestHandlerRedacts(t *testing.T) {
	cases := []struct {
		name   string
		log    func(l *slog.Logger)
		secret string // must not appear
		want   string // must appear
	}{
		{"sensitive key", func(l *slog.Logger) { l.Info("login", "password", weak) }, weak, `password=[REDACTED]`},
		{"sensitive key suffix", func(l *slog.Logger) { l.Info("x", "db_password", weak) }, weak, `db_password=[REDACTED]`},
		{"value key", func(l *slog.Logger) { l.Info("x", "value", weak) }, weak, `value=[REDACTED]`},
		{"token in a string attr", func(l *slog.Logger) { l.Info("x", "header", token) }, token, "[REDACTED GitHub token]"},
		{"JWT in the message", func(l *slog.Logger) { l.Info("got " + jwt + " from client") }, jwt, "[REDACTED JWT]"},
		{"secret in an error", func(l *slog.Logger) { l.Error("failed", "error", errors.New("auth with "+token+" failed")) }, token, "auth with [REDACTED GitHub token] failed"},
		{"bytes", func(l *slog.Logger) { l.Info("x", "payload", []byte(weak)) }, weak, "payload=\"[7 bytes]\""},
		{"group", func(l *slog.Logger) { l.Info("x", slog.Group("req", "token", weak, "name", "payments/db")) }, weak, "req.name=payments/db"},
		{"WithAttrs", func(l *slog.Logger) { l.With("api_key", weak).Info("x") }, weak, "api_key=[REDACTED]"},
		{"stringer", func(l *slog.Logger) { l.Info("x", "obj", struct{ S string }{token}) }, token, "REDACTED"},
		{"secretref logs canonical", func(l *slog.Logger) {
			l.Info("resolve", "ref", secretref.MustParse("VAULT://secret/a?version=2#b"))
		}, "VAULT", `ref="vault://secret/a?version=2#b"`},
		{"ordinary values untouched", func(l *slog.Logger) { l.Info("served", "name", "payments/db", "code", 0, "peer", "spiffe://x.test/a") }, "", "name=payments/db code=0 peer=spiffe://x.test/a"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := slog.New(logging.NewHandler(slog.NewTextHandler(&buf, nil)))
			tc.log(l)
			out := buf.String()
			if tc.secret != "" && strings.Contains(out, tc.secret) {
				t.Fatalf("secret logged: %s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("want %q in %s", tc.want, out)
			}
		})
	}
}

func TestNewFormats(t *testing.T) {
	for _, f := range []string{"json", "text", ""} {
		if _, err := logging.New(&bytes.Buffer{}, f, slog.LevelInfo); err != nil {
			t.Errorf("format %q: %v", f, err)
		}
	}
	if _, err := logging.New(&bytes.Buffer{}, "xml", slog.LevelInfo); err == nil {
		t.Error("format xml accepted")
	}
}
