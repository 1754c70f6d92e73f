package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/status"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// RotationHook is called when a watched secret has a new version, with the
// value the service had and the new one. Return an error when the service
// could not apply the new value: the server records the failure against
// this consumer (the error's text is kept unless it could hold a secret).
// Hooks run one at a time, on the watch's goroutine.
type RotationHook func(ctx context.Context, old, new Secret) error

// Watcher keeps a set of secrets current. Close it when done.
type Watcher struct {
	c      *Client
	names  []string
	hook   RotationHook
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	current map[string]Secret
}

// maxSubscribe is the server's bound on names per subscribe message.
const maxSubscribe = 100

// Watch subscribes to names over one stream and returns once each has its
// first value, so a service can refuse to start without its secrets (fail
// closed): an error from the first connection (not granted, not found,
// unreachable) is returned. After that the watch reconnects with backoff
// until ctx ends or Close, keeping the last good values meanwhile; hook is
// called exactly once per new version (a value re-sent after a reconnect
// does not call it again), and every version is acknowledged.
func (c *Client) Watch(ctx context.Context, names []string, hook RotationHook) (*Watcher, error) {
	if len(names) == 0 {
		return nil, errors.New("client: watch needs at least one secret name")
	}
	wctx, cancel := context.WithCancel(ctx)
	w := &Watcher{c: c, names: dedupe(names), hook: hook, cancel: cancel, done: make(chan struct{}), current: map[string]Secret{}}
	ready := make(chan error, 1)
	go w.run(wctx, ready)
	select {
	case err := <-ready:
		if err != nil {
			cancel()
			<-w.done
			return nil, err
		}
		return w, nil
	case <-ctx.Done():
		cancel()
		<-w.done
		return nil, ctx.Err()
	}
}

func dedupe(names []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// Get returns the current value of a watched secret.
func (w *Watcher) Get(name string) (Secret, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s, ok := w.current[name]
	if !ok {
		return Secret{}, false
	}
	return s.copy(), true
}

// Close stops the watch and waits for it to end.
func (w *Watcher) Close() {
	w.cancel()
	<-w.done
}

func (w *Watcher) run(ctx context.Context, ready chan<- error) {
	defer close(w.done)
	initial := true
	attempt := 0
	for {
		received, err := w.session(ctx, func() {
			if initial {
				initial = false
				ready <- nil
			}
		})
		if ctx.Err() != nil {
			return
		}
		if initial {
			ready <- fmt.Errorf("client: watch %v: %w", w.names, err)
			return
		}
		if received {
			attempt = 0
		}
		delay := w.backoff(attempt)
		attempt++
		w.c.log.WarnContext(ctx, "secretplane watch interrupted; keeping the last good values and reconnecting",
			"error", status.Convert(err).Message(), "retry_in", delay.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// backoff is the delay before reconnect attempt n: doubling from Min up
// to Max, with full jitter over its upper half.
func (w *Watcher) backoff(n int) time.Duration {
	b := w.c.cfg.Backoff
	d := b.Min
	for i := 0; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// session runs one stream until it fails. onReady is called once every
// name has a value. It reports whether anything was received.
func (w *Watcher) session(ctx context.Context, onReady func()) (bool, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := w.c.secrets.Watch(sctx)
	if err != nil {
		return false, err
	}
	for i := 0; i < len(w.names); i += maxSubscribe {
		chunk := w.names[i:min(i+maxSubscribe, len(w.names))]
		if err := st.Send(&spv1.WatchRequest{Request: &spv1.WatchRequest_Subscribe{Subscribe: &spv1.WatchSubscribe{Names: chunk, Instance: w.c.cfg.Instance}}}); err != nil {
			_, rerr := st.Recv() // the stream's status says why
			return false, errors.Join(err, rerr)
		}
	}
	got := map[string]bool{}
	received := false
	for {
		m, err := st.Recv()
		if err != nil {
			return received, err
		}
		received = true
		v := m.GetValue()
		if v == nil {
			continue
		}
		hookErr := w.apply(sctx, fromProto(v))
		ack := &spv1.WatchAck{Name: v.GetName(), Version: v.GetVersion()}
		if hookErr != nil {
			ack.Error = hookErr.Error()
		}
		if err := st.Send(&spv1.WatchRequest{Request: &spv1.WatchRequest_Ack{Ack: ack}}); err != nil {
			_, rerr := st.Recv()
			return received, errors.Join(err, rerr)
		}
		if !got[v.GetName()] {
			got[v.GetName()] = true
			if len(got) == len(w.names) {
				onReady()
			}
		}
	}
}

// apply makes s current, calling the hook when it replaces a different
// value the watcher had.
func (w *Watcher) apply(ctx context.Context, s Secret) (err error) {
	w.mu.Lock()
	old, had := w.current[s.Name]
	w.mu.Unlock()
	if had && same(old, s) {
		return nil // re-sent after a reconnect: nothing changed
	}
	if had && w.hook != nil {
		err = w.callHook(ctx, old.copy(), s.copy())
		if err != nil {
			w.c.log.WarnContext(ctx, "rotation hook failed to apply a new version", "secret", s.Name, "version", s.Version)
			err = withoutValues(err, old.Value, s.Value)
		}
	}
	w.mu.Lock()
	w.current[s.Name] = s
	w.mu.Unlock()
	w.c.store(s)
	return err
}

// withoutValues keeps a hook's error out of the acknowledgement when its
// text quotes the old or the new value: the library knows both, the server
// only the one it sent.
func withoutValues(err error, values ...[]byte) error {
	text := err.Error()
	for _, v := range values {
		if len(v) > 0 && strings.Contains(text, string(v)) {
			return errors.New("rotation hook failed (error text withheld: it contains the secret's value)")
		}
	}
	return err
}

func (w *Watcher) callHook(ctx context.Context, old, new Secret) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("rotation hook panicked")
		}
	}()
	return w.hook(ctx, old, new)
}

// same reports whether a and b are one version of a secret. Backends give
// every change a new version; fingerprints are the fallback, since they are
// keyed per server (replicas or a restart without a fingerprint key file
// give one value different fingerprints).
func same(a, b Secret) bool {
	if a.Version != "" && b.Version != "" {
		return a.Version == b.Version
	}
	return a.Fingerprint == b.Fingerprint
}
