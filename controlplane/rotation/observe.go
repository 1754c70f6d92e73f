package rotation

import (
	"context"
	"errors"
	"time"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/store"
)

// Observe is the method of a rotation recorded for a change made outside
// secretplane: a new backend version the cache detected. It is verified
// as any other (every consumer must acknowledge it before the deadline),
// and can be cancelled or rolled back; it is never started by hand.
const Observe = "observe"

// ownVersionTTL bounds how long a version this manager made current is
// remembered, so that the cache seeing it is not taken for a change made
// outside.
const ownVersionTTL = 5 * time.Minute

// expectVersion notes that version of ref is being made current by a
// rotation here (propagating, rollback), not by someone outside.
func (m *Manager) expectVersion(ref, version string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.opts.Now()
	for k, at := range m.own {
		if now.Sub(at) > ownVersionTTL {
			delete(m.own, k)
		}
	}
	m.own[ref+"\x00"+version] = now
}

func (m *Manager) madeHere(ref, version string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.own[ref+"\x00"+version]
	return ok
}

// observe records, for every secret bound to a ref whose new version the
// cache saw, a rotation in verifying, unless a rotation here made it or
// one of the secret is in flight.
func (m *Manager) observe(ctx context.Context, sub *events.Subscription) {
	defer sub.Close()
	for {
		var ev events.Event
		select {
		case <-ctx.Done():
			return
		case ev = <-sub.C():
		}
		nv, isNew := ev.(events.NewVersion)
		if !isNew || nv.Version == "" || nv.OldVersion == "" || nv.Version == nv.OldVersion || m.madeHere(nv.Ref, nv.Version) {
			continue
		}
		secrets, err := m.store.SecretsByRef(ctx, nv.Ref)
		if err != nil {
			if ctx.Err() == nil {
				m.log.WarnContext(ctx, "a new version seen outside secretplane could not be mapped to its secrets", "error", err.Error())
			}
			continue
		}
		for _, sec := range secrets {
			r := store.Rotation{ID: newID(), Secret: sec.Name, Ref: nv.Ref, Method: Observe, State: Verifying, Actor: "system", Trigger: "observed",
				FromVersion: nv.OldVersion, ToVersion: nv.Version, Deadline: m.opts.Now().Add(m.opts.Deadline),
				Detail: "a new version made outside secretplane: " + nv.OldVersion + " -> " + nv.Version}
			created, err := m.store.CreateRotation(ctx, r)
			if errors.Is(err, store.ErrAlreadyExists) {
				continue // a rotation of it is in flight: it is that one's to verify
			}
			if err != nil {
				m.log.WarnContext(ctx, "a new version seen outside secretplane could not be recorded", "secret_name", sec.Name, "error", err.Error())
				continue
			}
			m.log.InfoContext(ctx, "new version made outside secretplane; verifying its rollout", "rotation", created.ID, "secret_name", sec.Name, "version", nv.Version)
			m.record(ctx, created, "rotation.observed", audit.OK)
			m.drive(created)
		}
	}
}
