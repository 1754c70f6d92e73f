package api

import (
	"testing"
	"time"
)

// Refused handshakes are logged at most once a second, with the count of
// those held back.
func TestEverySecond(t *testing.T) {
	var e everySecond
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		at      time.Duration
		ok      bool
		skipped int
	}{{0, true, 0}, {100 * time.Millisecond, false, 0}, {900 * time.Millisecond, false, 0}, {time.Second, true, 2}, {1500 * time.Millisecond, false, 0}, {3 * time.Second, true, 1}}
	for _, s := range steps {
		if ok, skipped := e.allow(t0.Add(s.at)); ok != s.ok || skipped != s.skipped {
			t.Fatalf("at %v: allow = %v, %d; want %v, %d", s.at, ok, skipped, s.ok, s.skipped)
		}
	}
}
