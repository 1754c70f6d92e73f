// Package events is the core's in-process bus of typed change events: a
// new value version seen by the cache, a secret put, rebound or deleted, a
// policy changed (and, later, rotation transitions). The resolver, the
// catalog and the policy manager publish; the watch hub, and later webhook
// senders, metrics and replica notifiers, subscribe.
//
// Publishing never blocks: every subscriber has a bounded queue of its
// own, and an event that finds a queue full is dropped for that subscriber
// alone and counted, so a slow subscriber (a webhook sender) can delay
// neither the publisher (the resolver, the audit writer) nor another
// subscriber. Subscribers that must not miss a change also reconcile by
// other means (the watch hub polls what it watches).
//
// The package knows nothing of transports or storage; replicas will feed
// the same bus from PostgreSQL.
package events

import (
	"sync"
	"sync/atomic"
	"time"
)

// Event is one change. The concrete types below are the events there are.
type Event interface{ isEvent() }

// NewVersion: the cache saw a value of Ref whose fingerprint differs from
// the one it had (a refresh, a Resolve, a backend change). It names the
// ref, not the secrets bound to it; subscribers map refs to names.
type NewVersion struct {
	Ref            string // canonical
	Version        string // the backend's version id, when it has one
	Fingerprint    string
	OldVersion     string // the version the cache had before
	OldFingerprint string
}

// SecretPut: a secret was created, or updated with the ref it had.
type SecretPut struct {
	Name    string
	Ref     string
	Created bool
}

// SecretRebound: a secret now points at another ref.
type SecretRebound struct {
	Name   string
	OldRef string
	NewRef string
}

// SecretDeleted: a secret is gone.
type SecretDeleted struct {
	Name string
	Ref  string // what it was bound to
}

// PolicyChanged: a policy was put or deleted, or the policies loaded from
// the store changed.
type PolicyChanged struct {
	Name    string // "" when a reload changed several
	Deleted bool
}

// RotationStep: a rotation moved to State (or, for a step within a state,
// did Step). Names and versions only, never a value.
type RotationStep struct {
	ID, Secret, State, Step string
	FromVersion, ToVersion  string
	Detail, Actor           string
	Emergency               bool
	Method, Trigger         string
	Started                 time.Time // when the rotation began
}

func (RotationStep) isEvent()  {}
func (NewVersion) isEvent()    {}
func (SecretPut) isEvent()     {}
func (SecretRebound) isEvent() {}
func (SecretDeleted) isEvent() {}
func (PolicyChanged) isEvent() {}

// DefaultQueue is a subscriber's queue when Subscribe is given none.
const DefaultQueue = 1024

// Bus delivers events to subscribers. The zero value is not ready: use New.
// A nil *Bus drops everything, so a part built without one works alone.
type Bus struct {
	mu   sync.RWMutex
	subs map[*Subscription]struct{}
}

// New returns an empty bus.
func New() *Bus { return &Bus{subs: map[*Subscription]struct{}{}} }

// Subscription is one subscriber's queue.
type Subscription struct {
	bus     *Bus
	name    string
	c       chan Event
	dropped atomic.Uint64
	once    sync.Once
}

// Subscribe adds a subscriber named name (for operators: drops are
// reported per subscriber) with a queue of size events (DefaultQueue when
// size <= 0).
func (b *Bus) Subscribe(name string, size int) *Subscription {
	if size <= 0 {
		size = DefaultQueue
	}
	s := &Subscription{bus: b, name: name, c: make(chan Event, size)}
	if b == nil {
		return s
	}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

// Publish offers e to every subscriber without waiting: a full queue drops
// e for that subscriber and counts it.
func (b *Bus) Publish(e Event) {
	if b == nil {
		return
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	for s := range b.subs {
		select {
		case s.c <- e:
		default:
			s.dropped.Add(1)
		}
	}
}

// Drops reports, per subscriber name, the events dropped so far.
func (b *Bus) Drops() map[string]uint64 {
	out := map[string]uint64{}
	if b == nil {
		return out
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	for s := range b.subs {
		out[s.name] += s.dropped.Load()
	}
	return out
}

// C delivers the subscriber's events in the order they were published.
func (s *Subscription) C() <-chan Event { return s.c }

// Dropped is how many events this subscriber missed because its queue was
// full.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close removes the subscriber; events already queued stay readable.
func (s *Subscription) Close() {
	s.once.Do(func() {
		if s.bus == nil {
			return
		}
		s.bus.mu.Lock()
		delete(s.bus.subs, s)
		s.bus.mu.Unlock()
	})
}
