package consumers_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
)

// counting wraps the real store to count writes and inject a failure.
type counting struct {
	*sqlite.Store
	rows atomic.Int64
	fail atomic.Bool
}

func (c *counting) UpsertConsumers(ctx context.Context, cs []store.Consumer) error {
	if c.fail.Load() {
		return errors.New("database is locked")
	}
	c.rows.Add(int64(len(cs)))
	return c.Store.UpsertConsumers(ctx, cs)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func TestRegistry(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cs := &counting{Store: st}
	clk := &clock{t: time.Unix(1_800_000_000, 0).UTC()}
	r := consumers.New(cs, consumers.Options{Resolution: 30 * time.Second, Now: clk.now})
	const api, sec = "spiffe://example.org/payments/api", "payments/db"

	steps := []struct {
		name     string
		do       func()
		rows     int64 // rows written by the flush after do
		version  string
		acked    string
		ackError string
	}{
		{"first sighting", func() { r.Seen(api, sec, consumers.Resolve, "1") }, 1, "1", "", ""},
		{"same version within the resolution", func() {
			for range 1000 {
				clk.advance(time.Millisecond)
				r.Seen(api, sec, consumers.Resolve, "1")
			}
		}, 0, "1", "", ""},
		{"resolution passed", func() { clk.advance(30 * time.Second); r.Seen(api, sec, consumers.Resolve, "1") }, 1, "1", "", ""},
		{"new version", func() { clk.advance(time.Second); r.Seen(api, sec, consumers.Resolve, "2") }, 1, "2", "", ""},
		{"ack", func() { r.Acked(api, sec, consumers.Resolve, "2", "") }, 1, "2", "2", ""},
		{"failed apply", func() { r.Acked(api, sec, consumers.Resolve, "3", "bad certificate") }, 1, "2", "3", "bad certificate"},
	}
	for _, s := range steps {
		before := cs.rows.Load()
		s.do()
		got, err := r.List(ctx, sec)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if n := cs.rows.Load() - before; n != s.rows {
			t.Errorf("%s: %d rows written, want %d", s.name, n, s.rows)
		}
		if len(got) != 1 || got[0].Version != s.version || got[0].AckedVersion != s.acked || got[0].AckError != s.ackError || got[0].Identity != api || got[0].Channel != consumers.Resolve {
			t.Errorf("%s: %+v", s.name, got)
		}
	}

	// A failed write keeps the sighting for the next flush.
	cs.fail.Store(true)
	r.Seen(api, sec, consumers.Watch, "2")
	if err := r.Flush(ctx); err == nil {
		t.Fatal("flush into a failing store succeeded")
	}
	cs.fail.Store(false)
	got, err := r.List(ctx, sec)
	if err != nil || len(got) != 2 || got[1].Channel != consumers.Watch {
		t.Fatalf("after a failed flush: %+v %v", got, err)
	}
}

// Run writes sightings in the background and once more when stopped.
func TestRunFlushesAndStops(t *testing.T) {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := consumers.New(st, consumers.Options{FlushInterval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	r.Seen("spiffe://example.org/a", "s/x", consumers.Watch, "7")
	cancel()
	<-done
	got, err := st.ListConsumers(context.Background(), "s/x")
	if err != nil || len(got) != 1 || got[0].Version != "7" {
		t.Fatalf("after stop: %+v %v", got, err)
	}
}

// A held consumer (an open stream) is seen at every resolution while it is
// held, idle or not; once released its LastSeen stops, so that a horizon
// tells it apart from a live one. Consumers sharing an identity are told
// apart by node.
func TestHeldConsumersAreSeenWhileOpen(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	clk := &clock{t: time.Unix(1_800_000_000, 0).UTC()}
	r := consumers.New(st, consumers.Options{Resolution: 30 * time.Second, Now: clk.now})
	const api, sec = "spiffe://example.org/payments/api", "payments/db"
	r.SeenNode(api, "pod-a", sec, consumers.Watch, "1")
	r.SeenNode(api, "pod-b", sec, consumers.Watch, "1")
	releaseA := r.Hold(api, "pod-a", sec, consumers.Watch)
	releaseB := r.Hold(api, "pod-b", sec, consumers.Watch)
	start := clk.now()
	releaseB()
	releaseB() // twice is once
	clk.advance(10 * time.Minute)
	got, err := r.List(ctx, sec)
	if err != nil || len(got) != 2 {
		t.Fatalf("consumers: %+v %v", got, err)
	}
	for _, c := range got {
		switch c.Node {
		case "pod-a":
			if !c.LastSeen.Equal(clk.now()) {
				t.Fatalf("the held consumer was last seen %s, want %s", c.LastSeen, clk.now())
			}
		case "pod-b":
			if !c.LastSeen.Equal(start) {
				t.Fatalf("the released consumer was last seen %s, want %s", c.LastSeen, start)
			}
		default:
			t.Fatalf("unexpected node %q", c.Node)
		}
	}
	releaseA()
	clk.advance(10 * time.Minute)
	got, _ = r.List(ctx, sec)
	for _, c := range got {
		if c.Node == "pod-a" && !c.LastSeen.Equal(start.Add(10*time.Minute)) {
			t.Fatalf("released, pod-a was still seen at %s", c.LastSeen)
		}
	}
}
