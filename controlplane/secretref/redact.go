package secretref

import (
	"fmt"
	"strings"
)

// Redact renders untrusted input that was meant to be a SecretRef so that
// it is safe to log or show: the canonical form if it parses, otherwise the
// scheme (when it is a known one) and the input's length, never its text.
func Redact(s string) string {
	if r, err := Parse(s); err == nil {
		return r.String()
	}
	if scheme, _, ok := strings.Cut(s, "://"); ok {
		if _, known := rulesFor(Scheme(strings.ToLower(scheme))); known {
			return fmt.Sprintf("%s://[redacted %d bytes]", strings.ToLower(scheme), len(s))
		}
	}
	return fmt.Sprintf("[redacted %d bytes]", len(s))
}
