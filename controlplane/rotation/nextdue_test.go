package rotation_test

import (
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/store"
)

// A cadence counts from the last completed rotation: failed ones do not
// move it (it stays overdue while they fail, and the schedule retries).
func TestNextDueCountsFromTheLastCompletion(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := store.RotationPolicy{Every: 24 * time.Hour, CreateTime: t0}
	at := func(h int, state string) store.Rotation {
		return store.Rotation{State: state, CreateTime: t0.Add(time.Duration(h) * time.Hour)}
	}
	cases := []struct {
		name   string
		recent []store.Rotation // newest first
		want   time.Time
	}{
		{"never rotated", nil, t0.Add(24 * time.Hour)},
		{"completed", []store.Rotation{at(30, "completed")}, t0.Add(54 * time.Hour)},
		{"failed after a completion", []store.Rotation{at(50, "failed"), at(30, "completed")}, t0.Add(54 * time.Hour)},
		{"only failures", []store.Rotation{at(26, "rolled_back"), at(25, "failed")}, t0.Add(24 * time.Hour)},
	}
	for _, tc := range cases {
		if got := rotation.NextDue(p, rotation.LastCompleted(tc.recent)); !got.Equal(tc.want) {
			t.Errorf("%s: next due %s, want %s", tc.name, got, tc.want)
		}
	}
	if got := rotation.NextDue(store.RotationPolicy{RenewAt: 0.66}, nil); !got.IsZero() {
		t.Errorf("no cadence: next due %s, want none", got)
	}
}
