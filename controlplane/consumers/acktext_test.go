package consumers_test

import (
	"strings"
	"testing"

	"github.com/secretplane/secretplane/controlplane/consumers"
)

func TestAckText(t *testing.T) {
	value, old := []byte("v2-Zq8vW3xR"), []byte("v1-Zq8vW3xR")
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"pool refused the new password", "pool refused the new password"},
		{"could not apply v2-Zq8vW3xR", "[error text withheld: it contains the secret's value]"},
		{"rolled back to v1-Zq8vW3xR", "[error text withheld: it contains the secret's value]"},
		{"token-5d41402abc4b2a76b9719d911017c592 rejected", "[error text withheld: it looks like a prefixed random token]"},
		{"bell\x07", "[error text withheld: it has control characters]"},
		{"bad \xff utf8", "[error text withheld: it has control characters]"},
		{strings.Repeat("x ", 400), strings.Repeat("x ", 256) + "..."},
	} {
		if got := consumers.AckText(tc.in, value, old); got != tc.want {
			t.Errorf("AckText(%.30q) = %.60q, want %.60q", tc.in, got, tc.want)
		}
	}
}
