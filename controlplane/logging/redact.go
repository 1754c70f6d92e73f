// Package logging provides secretplane's slog handler: every record passes
// through a redactor before it reaches the output, so that no secret value
// can be logged by accident.
//
// Redaction rules, applied to the message and to every attribute, groups
// included:
//   - an attribute whose key names a credential (password, token, secret,
//     private_key, authorization, ...) is replaced by "[REDACTED]";
//   - byte slices are never printed, only their length;
//   - any string (message, value, error text) that the SecretRef literal
//     detector flags as a secret-looking value (PEM block, JWT, cloud access
//     key, high-entropy token, URL with a password) is replaced by
//     "[REDACTED <kind>]";
//   - SecretRefs log as their canonical form: refs are not secrets.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/secretplane/secretplane/controlplane/secretref"
)

// Redacted is what replaces a redacted value.
const Redacted = "[REDACTED]"

// Handler wraps another slog.Handler and redacts every record.
type Handler struct {
	next slog.Handler
}

// NewHandler returns a redacting handler in front of next.
func NewHandler(next slog.Handler) *Handler { return &Handler{next: next} }

// New returns a logger that writes JSON or text lines to w through the
// redacting handler.
func New(w io.Writer, format string, level slog.Leveler) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch format {
	case "json":
		h = slog.NewJSONHandler(w, opts)
	case "text", "":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, fmt.Errorf("unknown log format %q (want json or text)", format)
	}
	return slog.New(NewHandler(h)), nil
}

// Enabled implements slog.Handler.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, RedactString(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(RedactAttr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		red[i] = RedactAttr(a)
	}
	return &Handler{next: h.next.WithAttrs(red)}
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name)}
}

// RedactAttr returns a with its value redacted by the package's rules.
func RedactAttr(a slog.Attr) slog.Attr {
	if ref, ok := a.Value.Any().(secretref.Ref); ok && a.Value.Kind() == slog.KindAny {
		return slog.String(a.Key, ref.String())
	}
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		group := v.Group()
		red := make([]slog.Attr, len(group))
		for i, g := range group {
			red[i] = RedactAttr(g)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(red...)}
	}
	if sensitiveKey(a.Key) {
		return slog.String(a.Key, Redacted)
	}
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, RedactString(v.String()))
	case slog.KindAny:
		switch x := v.Any().(type) {
		case []byte:
			return slog.String(a.Key, fmt.Sprintf("[%d bytes]", len(x)))
		case secretref.Ref:
			return slog.String(a.Key, x.String())
		case error:
			return slog.String(a.Key, RedactString(x.Error()))
		default:
			return slog.String(a.Key, RedactString(fmt.Sprint(x)))
		}
	default:
		// Numbers, bools, durations and times carry no secret text.
		return slog.Attr{Key: a.Key, Value: v}
	}
}

// RedactString returns s, or s with its secret-looking parts replaced by
// placeholders. Text with separators (messages, error texts) is checked
// word by word so that the rest stays readable; whatever still looks like a
// secret afterwards (a PEM block, a URL with a password) is replaced whole.
func RedactString(s string) string {
	if strings.ContainsAny(s, " \t\n\"'=,;") {
		for _, w := range strings.FieldsFunc(s, isSeparator) {
			if f, ok := secretref.DetectLiteral(w); ok {
				s = strings.ReplaceAll(s, w, "[REDACTED "+f.Kind+"]")
			}
		}
	}
	if f, ok := secretref.DetectLiteral(s); ok {
		return "[REDACTED " + f.Kind + "]"
	}
	return s
}

func isSeparator(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\r', '"', '\'', '=', ',', ';', '(', ')', '[', ']', '{', '}', '<', '>':
		return true
	}
	return false
}

// sensitiveKey reports whether an attribute key names a credential: the
// whole key, or its last "_"-separated word ("db_password").
func sensitiveKey(key string) bool {
	k := strings.ToLower(key)
	k = strings.NewReplacer("-", "_", ".", "_").Replace(k)
	if isCredentialWord(k) {
		return true
	}
	return isCredentialWord(k[strings.LastIndexByte(k, '_')+1:])
}

func isCredentialWord(w string) bool {
	switch w {
	case "password", "passwd", "pwd", "secret", "token", "apikey", "api_key", "privatekey",
		"private_key", "credential", "credentials", "authorization", "cookie", "session",
		"value", "plaintext", "client_secret", "access_key", "secret_key", "passphrase":
		return true
	}
	return false
}
