// Package watch keeps watched secrets fresh and tells their watchers when a
// value changes. The hub polls every watched name at its value's refresh
// time (through the resolver, so a poll that is not due costs no backend
// read and concurrent polls share one), compares the value's keyed
// fingerprint with what each subscriber last received, and queues the new
// value for the subscribers that lack it. Delivery is level-triggered: a
// subscriber that misses an edge still converges on the current value.
//
// The hub also follows the core's change events: a new version the cache
// saw polls the names bound to that ref at once, a rebound secret is polled
// at once (so its watchers get the new ref's value), and a deleted one ends
// its watchers' subscriptions to it (as does a poll that finds the name no
// longer registered, for changes the events did not carry).
//
// The hub knows nothing of transports: Watch streams (controlplane/api)
// and SDS streams (sds) are its subscribers.
package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/store"
)

// Catalog maps secret names to their refs (catalog.Catalog).
type Catalog interface {
	LookupRef(ctx context.Context, name string) (secretref.Ref, error)
}

// Resolver refreshes values (resolve.Resolver).
type Resolver interface {
	Refresh(ctx context.Context, ref secretref.Ref) (resolve.Result, error)
}

// Options tune a Hub. Zero values take the defaults.
type Options struct {
	// RetryInterval is how soon a poll that failed (or served a stale
	// value) is retried; default 5s.
	RetryInterval time.Duration
	// Workers bounds concurrent polls; default 16.
	Workers int
	// Events is the core's change bus; nil: the hub only polls.
	Events *events.Bus
	Log    *slog.Logger
	Now    func() time.Time
}

// Update is a value queued for a subscriber. Result.Data is shared between
// the subscribers of one poll: read it, never modify it.
type Update struct {
	Name   string
	Ref    string // canonical ref the value was resolved from
	Result resolve.Result
	// Gone: the secret was deleted; the subscription no longer holds the
	// name, and the subscriber should tell its client (Result is empty).
	Gone bool
}

// Hub tracks watched names and their subscribers. Safe for concurrent use.
type Hub struct {
	catalog  Catalog
	resolver Resolver
	opts     Options
	log      *slog.Logger

	mu    sync.Mutex
	names map[string]*watched
	wake  chan struct{}
}

type watched struct {
	name    string
	ref     string // canonical ref of the last poll, to route resolver changes
	subs    map[*Subscription]struct{}
	next    time.Time
	polling bool
}

// NewHub returns a hub; call Run to start polling.
func NewHub(c Catalog, r Resolver, opts Options) *Hub {
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = 5 * time.Second
	}
	if opts.Workers <= 0 {
		opts.Workers = 16
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Hub{catalog: c, resolver: r, opts: opts, log: log, names: map[string]*watched{}, wake: make(chan struct{}, 1)}
}

// Subscription is one watcher's set of names and its queue of updates.
type Subscription struct {
	hub *Hub
	c   chan struct{}

	mu      sync.Mutex
	names   map[string]bool
	sent    map[string]string // name -> fingerprint the subscriber has
	pending map[string]Update
	closed  bool
}

// Subscribe returns an empty subscription; Add names to it.
func (h *Hub) Subscribe() *Subscription {
	return &Subscription{hub: h, c: make(chan struct{}, 1), names: map[string]bool{}, sent: map[string]string{}, pending: map[string]Update{}}
}

// C is signalled when updates are pending.
func (s *Subscription) C() <-chan struct{} { return s.c }

// Add starts watching names. For each, the hub polls promptly, so a value
// that changed since the subscriber read it is queued without waiting for
// the next refresh.
func (s *Subscription) Add(names ...string) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	var added []string
	for _, n := range names {
		if !s.names[n] {
			s.names[n] = true
			added = append(added, n)
		}
	}
	s.mu.Unlock()
	h := s.hub
	now := h.opts.Now()
	h.mu.Lock()
	for _, n := range added {
		w := h.names[n]
		if w == nil {
			w = &watched{name: n, subs: map[*Subscription]struct{}{}}
			h.names[n] = w
		}
		w.subs[s] = struct{}{}
		w.next = now
	}
	h.mu.Unlock()
	h.poke()
}

// Remove stops watching names (a client unsubscribed); their pending
// updates are dropped, and names nobody watches any more stop being polled.
func (s *Subscription) Remove(names ...string) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	var removed []string
	for _, n := range names {
		if s.names[n] {
			delete(s.names, n)
			delete(s.sent, n)
			delete(s.pending, n)
			removed = append(removed, n)
		}
	}
	s.mu.Unlock()
	s.hub.forget(s, removed)
}

// forget removes s from names' subscribers.
func (h *Hub) forget(s *Subscription, names []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range names {
		if w := h.names[n]; w != nil {
			delete(w.subs, s)
			if len(w.subs) == 0 && !w.polling {
				delete(h.names, n)
			}
		}
	}
}

// Watching reports whether name is in the subscription.
func (s *Subscription) Watching(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.names[name]
}

// Len is how many names the subscription watches.
func (s *Subscription) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.names)
}

// Sent records the fingerprint the subscriber now has for name, so the hub
// does not queue that value again.
func (s *Subscription) Sent(name, fingerprint string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent[name] = fingerprint
	if u, ok := s.pending[name]; ok && u.Result.Fingerprint == fingerprint {
		delete(s.pending, name)
	}
}

// Take returns and clears the pending updates, in no particular order.
func (s *Subscription) Take() []Update {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Update, 0, len(s.pending))
	for n, u := range s.pending {
		out = append(out, u)
		delete(s.pending, n)
	}
	return out
}

// Close stops the subscription; names nobody watches any more stop being
// polled.
func (s *Subscription) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	names := make([]string, 0, len(s.names))
	for n := range s.names {
		names = append(names, n)
	}
	s.names, s.pending = map[string]bool{}, map[string]Update{}
	s.mu.Unlock()
	s.hub.forget(s, names)
}

// end removes name from the subscription and queues its Gone update.
func (s *Subscription) end(name string) {
	s.mu.Lock()
	if s.closed || !s.names[name] {
		s.mu.Unlock()
		return
	}
	delete(s.names, name)
	delete(s.sent, name)
	s.pending[name] = Update{Name: name, Gone: true}
	s.mu.Unlock()
	s.signal()
}

// signal wakes the subscriber; one pending wake-up is enough.
func (s *Subscription) signal() {
	select {
	case s.c <- struct{}{}:
	default:
	}
}

// offer queues u unless the subscriber already has that value.
func (s *Subscription) offer(u Update) {
	s.mu.Lock()
	if s.closed || !s.names[u.Name] || s.sent[u.Name] == u.Result.Fingerprint {
		s.mu.Unlock()
		return
	}
	s.pending[u.Name] = u
	s.mu.Unlock()
	s.signal()
}

// changed polls the names bound to ref (canonical) now rather than at
// their refresh time: the cache saw a new value of it.
func (h *Hub) changed(key string) {
	now := h.opts.Now()
	h.mu.Lock()
	hit := false
	for _, w := range h.names {
		if w.ref == key {
			w.next, hit = now, true
		}
	}
	h.mu.Unlock()
	if hit {
		h.poke()
	}
}

// due polls name now: it was put or rebound.
func (h *Hub) due(name string) {
	h.mu.Lock()
	w := h.names[name]
	if w != nil {
		w.next = h.opts.Now()
	}
	h.mu.Unlock()
	if w != nil {
		h.poke()
	}
}

// ended ends every subscription to name: the secret is gone.
func (h *Hub) ended(name string) {
	h.mu.Lock()
	w := h.names[name]
	var subs []*Subscription
	if w != nil {
		for s := range w.subs {
			subs = append(subs, s)
		}
		clear(w.subs)
		if !w.polling {
			delete(h.names, name)
		}
	}
	h.mu.Unlock()
	for _, s := range subs {
		s.end(name)
	}
}

// follow applies the core's change events until ctx ends.
func (h *Hub) follow(ctx context.Context, sub *events.Subscription) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-sub.C():
			switch e := e.(type) {
			case events.NewVersion:
				h.changed(e.Ref)
			case events.SecretPut:
				h.due(e.Name)
			case events.SecretRebound:
				h.due(e.Name)
			case events.SecretDeleted:
				h.ended(e.Name)
			}
		}
	}
}

// Watched returns how many names are watched and by how many subscriptions
// in total (for metrics).
func (h *Hub) Watched() (names, subscriptions int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.names {
		names++
		subscriptions += len(w.subs)
	}
	return names, subscriptions
}

func (h *Hub) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// Run polls due names, and follows change events, until ctx ends.
func (h *Hub) Run(ctx context.Context) {
	sem := make(chan struct{}, h.opts.Workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	if h.opts.Events != nil {
		sub := h.opts.Events.Subscribe("watch", 0)
		defer sub.Close()
		wg.Go(func() { h.follow(ctx, sub) })
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := h.opts.Now()
		var due []*watched
		next := now.Add(time.Minute)
		h.mu.Lock()
		for _, w := range h.names {
			switch {
			case w.polling:
			case !now.Before(w.next):
				w.polling = true
				due = append(due, w)
			case w.next.Before(next):
				next = w.next
			}
		}
		h.mu.Unlock()
		for _, w := range due {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				h.poll(ctx, w)
				h.poke()
			}()
		}
		if len(due) > 0 {
			continue
		}
		timer.Reset(next.Sub(now))
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-timer.C:
		}
	}
}

// poll refreshes one name and queues its value for subscribers that lack it.
func (h *Hub) poll(ctx context.Context, w *watched) {
	res, ref, err := h.current(ctx, w.name)
	now := h.opts.Now()
	h.mu.Lock()
	w.polling = false
	if len(w.subs) == 0 {
		delete(h.names, w.name)
		h.mu.Unlock()
		return
	}
	if err != nil && errors.Is(err, store.ErrNotFound) {
		// No longer registered: deleted, maybe through another replica.
		h.mu.Unlock()
		h.ended(w.name)
		return
	}
	if err != nil {
		w.next = now.Add(h.opts.RetryInterval)
		h.mu.Unlock()
		if !errors.Is(err, context.Canceled) {
			h.log.WarnContext(ctx, "watched secret could not be refreshed; subscribers keep their value", "secret_name", w.name, "error", err.Error())
		}
		return
	}
	w.ref = ref
	w.next = res.RefreshAt
	if res.Stale || !w.next.After(now) {
		w.next = now.Add(h.opts.RetryInterval)
	}
	subs := make([]*Subscription, 0, len(w.subs))
	for s := range w.subs {
		subs = append(subs, s)
	}
	h.mu.Unlock()
	u := Update{Name: w.name, Ref: ref, Result: res}
	for _, s := range subs {
		s.offer(u)
	}
}

func (h *Hub) current(ctx context.Context, name string) (resolve.Result, string, error) {
	ref, err := h.catalog.LookupRef(ctx, name)
	if err != nil {
		return resolve.Result{}, "", fmt.Errorf("look up watched secret %s: %w", name, err)
	}
	res, err := h.resolver.Refresh(ctx, ref)
	if err != nil {
		return resolve.Result{}, ref.String(), fmt.Errorf("refresh watched secret %s: %w", name, err)
	}
	return res, ref.String(), nil
}
