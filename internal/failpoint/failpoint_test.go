package failpoint_test

import (
	"context"
	"testing"
	"time"

	"github.com/secretplane/secretplane/internal/failpoint"
)

// A point holds only in a build with the tag, and only when it is listed.
func TestHold(t *testing.T) {
	t.Setenv(failpoint.Env, "a/b,c/d")
	for _, tc := range []struct {
		name  string
		holds bool
	}{
		{"a/b", failpoint.Enabled},
		{"c/d", failpoint.Enabled},
		{"a", false},
		{"", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			start := time.Now()
			failpoint.Hold(ctx, tc.name)
			if held := time.Since(start) >= 90*time.Millisecond; held != tc.holds {
				t.Fatalf("held %v, want %v", held, tc.holds)
			}
		})
	}
}
