package resolve_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

// manager is an in-memory secret manager for the cache's unit tests: it
// counts reads, can be failed or slowed, and its values can change. (The
// backends themselves are tested against the real managers.)
type manager struct {
	mu     sync.Mutex
	values map[string]string
	fail   error
	delay  time.Duration
	reads  atomic.Int64
}

func (m *manager) Read(ctx context.Context, ref secretref.Ref) (backend.Value, error) {
	m.reads.Add(1)
	m.mu.Lock()
	delay, fail := m.delay, m.fail
	v, ok := m.values[ref.String()]
	m.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return backend.Value{}, ctx.Err()
		}
	}
	if fail != nil {
		return backend.Value{}, fail
	}
	if !ok {
		return backend.Value{}, fmt.Errorf("%s: %w", ref, backend.ErrNotFound)
	}
	return backend.Value{Data: []byte(v), Version: "1"}, nil
}

func (m *manager) set(ref, v string) { m.mu.Lock(); m.values[ref] = v; m.mu.Unlock() }
func (m *manager) setFail(err error) { m.mu.Lock(); m.fail = err; m.mu.Unlock() }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

var key = []byte("0123456789abcdef0123456789abcdef")

func setup(t *testing.T, opts resolve.Options) (*resolve.Resolver, *manager, *clock) {
	t.Helper()
	m := &manager{values: map[string]string{}}
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	opts.FingerprintKey, opts.Now = key, c.now
	r, err := resolve.New(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r, m, c
}

// 1,000 concurrent resolves of one uncached ref cause exactly one read.
func TestMissStormIsOneRead(t *testing.T) {
	r, m, _ := setup(t, resolve.Options{})
	ref := secretref.MustParse("vault://secret/payments/db#password")
	m.set(ref.String(), "s3cret-value")
	m.delay = 50 * time.Millisecond
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.Get(context.Background(), ref)
			if err == nil && string(res.Data) != "s3cret-value" {
				err = errors.New("wrong value")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := m.reads.Load(); n != 1 {
		t.Fatalf("%d backend reads, want 1", n)
	}
}

func TestTTLStaleIfErrorAndFailClosed(t *testing.T) {
	r, m, c := setup(t, resolve.Options{TTL: time.Minute, MaxStale: 10 * time.Minute})
	ref := secretref.MustParse("vault://secret/a#b")
	m.set(ref.String(), "v1")
	ctx := context.Background()
	if res, err := r.Get(ctx, ref); err != nil || string(res.Data) != "v1" || res.Stale {
		t.Fatalf("first: %+v %v", res, err)
	}
	c.advance(30 * time.Second) // fresh, before the refresh window
	if _, err := r.Get(ctx, ref); err != nil || m.reads.Load() != 1 {
		t.Fatalf("hit read the backend: %v, %d reads", err, m.reads.Load())
	}
	m.setFail(fmt.Errorf("connection refused: %w", backend.ErrUnavailable))
	c.advance(2 * time.Minute) // past TTL: the backend fails, the stale value serves
	res, err := r.Get(ctx, ref)
	if err != nil || !res.Stale || string(res.Data) != "v1" {
		t.Fatalf("stale: %+v %v", res, err)
	}
	c.advance(10 * time.Minute) // past max-stale: fail closed
	if _, err := r.Get(ctx, ref); !errors.Is(err, resolve.ErrStale) || !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("past max-stale: %v", err)
	}
	m.setFail(nil) // recovery without restart
	if res, err := r.Get(ctx, ref); err != nil || res.Stale {
		t.Fatalf("after recovery: %+v %v", res, err)
	}
}

func TestNegativeCachingAndNoPoisoning(t *testing.T) {
	r, m, c := setup(t, resolve.Options{NegativeTTL: 5 * time.Second})
	ctx := context.Background()
	missing := secretref.MustParse("vault://secret/missing#x")
	for i := 0; i < 3; i++ {
		if _, err := r.Get(ctx, missing); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("missing: %v", err)
		}
	}
	if n := m.reads.Load(); n != 1 {
		t.Fatalf("not-found was not cached: %d reads", n)
	}
	m.set(missing.String(), "now-here")
	c.advance(6 * time.Second)
	if res, err := r.Get(ctx, missing); err != nil || string(res.Data) != "now-here" {
		t.Fatalf("after negative TTL: %+v %v", res, err)
	}
	// A transient failure never replaces a good value.
	ref := secretref.MustParse("vault://secret/ok#x")
	m.set(ref.String(), "good")
	if _, err := r.Get(ctx, ref); err != nil {
		t.Fatal(err)
	}
	m.setFail(backend.ErrUnavailable)
	r.Invalidate(secretref.MustParse("vault://secret/other#x"))
	c.advance(6 * time.Minute)
	if res, err := r.Get(ctx, ref); err != nil || string(res.Data) != "good" {
		t.Fatalf("poisoned: %+v %v", res, err)
	}
}

func TestRefreshAheadDetectsChanges(t *testing.T) {
	bus := events.New()
	changes := bus.Subscribe("test", 4)
	r, m, c := setup(t, resolve.Options{TTL: time.Minute, Events: bus})
	ref := secretref.MustParse("vault://secret/rot#x")
	m.set(ref.String(), "v1")
	ctx := context.Background()
	first, err := r.Get(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	m.set(ref.String(), "v2")
	c.advance(55 * time.Second) // inside the refresh window (0.75 ± 0.1 of the TTL), still fresh
	if res, _ := r.Get(ctx, ref); string(res.Data) != "v1" {
		t.Fatalf("a hit in the refresh window must serve the cached value, got %q", res.Data)
	}
	select {
	case e := <-changes.C():
		ch := e.(events.NewVersion)
		if ch.OldFingerprint != first.Fingerprint || ch.Fingerprint == first.Fingerprint || ch.Ref != ref.String() {
			t.Fatalf("change %+v", ch)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("background refresh did not report the change")
	}
	if res, _ := r.Get(ctx, ref); string(res.Data) != "v2" {
		t.Fatalf("after refresh: %q", res.Data)
	}

	// RefreshNow reads at once, whatever is cached, and reports the change;
	// after Invalidate the next read reports it too.
	m.set(ref.String(), "v3")
	reads := m.reads.Load()
	res, err := r.RefreshNow(ctx, ref)
	if err != nil || string(res.Data) != "v3" || m.reads.Load() != reads+1 {
		t.Fatalf("RefreshNow: %q %v, %d reads", res.Data, err, m.reads.Load()-reads)
	}
	if e := <-changes.C(); e.(events.NewVersion).Fingerprint != res.Fingerprint {
		t.Fatalf("RefreshNow reported %+v", e)
	}
	m.set(ref.String(), "v4")
	r.Invalidate(ref)
	if res, err := r.Get(ctx, ref); err != nil || string(res.Data) != "v4" {
		t.Fatalf("after Invalidate: %q %v", res.Data, err)
	}
	select {
	case e := <-changes.C():
		if e.(events.NewVersion).OldFingerprint != res.Fingerprint {
			t.Fatalf("after Invalidate: %+v", e)
		}
	case <-time.After(time.Second):
		t.Fatal("the read after Invalidate reported no change")
	}
}

func TestBoundedAndCallerOwnsData(t *testing.T) {
	r, m, _ := setup(t, resolve.Options{MaxEntries: 100})
	ctx := context.Background()
	for i := 0; i < 500; i++ {
		ref := secretref.MustParse(fmt.Sprintf("vault://secret/s%d#x", i))
		m.set(ref.String(), fmt.Sprintf("value-%d", i))
		res, err := r.Get(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		res.Data[0] = 'X' // the caller's copy; the cache must not see it
		if st := r.Stats(); st.Entries > 100 {
			t.Fatalf("cache grew to %d entries", st.Entries)
		}
	}
	ref := secretref.MustParse("vault://secret/s499#x")
	if res, _ := r.Get(ctx, ref); string(res.Data) != "value-499" {
		t.Fatalf("cache data was modified through a result: %q", res.Data)
	}
	if st := r.Stats(); st.Evictions != 400 {
		t.Fatalf("evictions %d", st.Evictions)
	}
	if _, err := resolve.New(m, resolve.Options{}); err == nil {
		t.Fatal("resolver without a fingerprint key")
	}
}

// The byte bound holds as well as the entry bound: values of 1 KiB under a
// 64 KiB bound keep at most 64 of them.
func TestBoundedByBytes(t *testing.T) {
	r, m, _ := setup(t, resolve.Options{MaxBytes: 64 << 10})
	ctx := context.Background()
	for i := 0; i < 300; i++ {
		ref := secretref.MustParse(fmt.Sprintf("vault://secret/s%d#x", i))
		m.set(ref.String(), strings.Repeat("v", 1024))
		if _, err := r.Get(ctx, ref); err != nil {
			t.Fatal(err)
		}
		if st := r.Stats(); st.Bytes > 64<<10 || st.Entries > 64 {
			t.Fatalf("after %d values the cache holds %d bytes in %d entries", i+1, st.Bytes, st.Entries)
		}
	}
	if st := r.Stats(); st.Entries != 64 || st.Evictions != 300-64 {
		t.Fatalf("stats %+v", st)
	}
}

func BenchmarkGetHit(b *testing.B) {
	m := &manager{values: map[string]string{}}
	ref := secretref.MustParse("vault://secret/payments/db#password")
	m.set(ref.String(), string(make([]byte, 1024)))
	r, _ := resolve.New(m, resolve.Options{FingerprintKey: key})
	ctx := context.Background()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.Get(ctx, ref); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A read begun before a RefreshNow (or an Invalidate) and answered after
// it never puts the older value back in the cache.
func TestSlowerOlderReadDoesNotUndoRefreshNow(t *testing.T) {
	for _, how := range []string{"RefreshNow", "Invalidate"} {
		t.Run(how, func(t *testing.T) {
			r, m, _ := setup(t, resolve.Options{TTL: time.Hour})
			ref := secretref.MustParse("vault://secret/race#x")
			ctx := context.Background()
			m.set(ref.String(), "old")
			m.mu.Lock()
			m.delay = 300 * time.Millisecond
			m.mu.Unlock()
			slow := make(chan string, 1)
			go func() { res, _ := r.Get(ctx, ref); slow <- string(res.Data) }()
			time.Sleep(50 * time.Millisecond) // the slow read has taken "old"
			m.mu.Lock()
			m.delay = 0
			m.mu.Unlock()
			m.set(ref.String(), "new")
			if how == "RefreshNow" {
				if res, err := r.RefreshNow(ctx, ref); err != nil || string(res.Data) != "new" {
					t.Fatalf("RefreshNow: %q %v", res.Data, err)
				}
			} else {
				r.Invalidate(ref)
			}
			if v := <-slow; v != "old" {
				t.Fatalf("the slow read answered %q", v)
			}
			if res, err := r.Get(ctx, ref); err != nil || string(res.Data) != "new" {
				t.Fatalf("after the slow read: %q %v (the older value came back)", res.Data, err)
			}
		})
	}
}

// Readers racing a writer that changes the value, then Invalidates or
// RefreshNows, never see zeroed bytes (a flight's answer shares nothing
// with the cache, which zeroes what it drops) and never see a version
// older than the one written before the Invalidate or RefreshNow returned
// (a read joining a flight begun earlier would).
func TestReadsAfterInvalidateAreNeverOlder(t *testing.T) {
	r, m, _ := setup(t, resolve.Options{TTL: time.Hour})
	ref := secretref.MustParse("vault://secret/race#x")
	ctx := context.Background()
	var written atomic.Int64 // the newest version made visible by Invalidate or RefreshNow
	m.set(ref.String(), "v000000")
	m.delay = 200 * time.Microsecond
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				floor := written.Load()
				res, err := r.Get(ctx, ref)
				if err != nil {
					errs <- err
					return
				}
				var got int64
				if _, err := fmt.Sscanf(string(res.Data), "v%d", &got); err != nil {
					errs <- fmt.Errorf("read %q", res.Data)
					return
				}
				if got < floor {
					errs <- fmt.Errorf("read v%d after v%d was made visible", got, floor)
					return
				}
			}
		}()
	}
	for i := int64(1); i <= 300; i++ {
		m.set(ref.String(), fmt.Sprintf("v%06d", i))
		if i%2 == 0 {
			r.Invalidate(ref)
		} else if _, err := r.RefreshNow(ctx, ref); err != nil {
			t.Fatal(err)
		}
		written.Store(i)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
