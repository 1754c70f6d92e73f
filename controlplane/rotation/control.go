package rotation

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/store"
)

// Cancel stops a rotation in flight and puts every consumer back on the
// version it started from: its driving stops at the current step, and a
// new version it created is rolled back (a staged one is never promoted).
// A rotation that has ended is refused with ErrFinal, an emergency one
// with ErrEmergencyRollback.
func (m *Manager) Cancel(ctx context.Context, id, actor string) (store.Rotation, error) {
	r, err := m.store.GetRotation(ctx, id)
	if err != nil {
		return store.Rotation{}, err
	}
	if slices.Contains(store.FinalRotationStates, r.State) {
		return store.Rotation{}, fmt.Errorf("cancel rotation %s: %w (%s)", id, ErrFinal, r.State)
	}
	if r.Emergency {
		// Cancelling would put the leaked version back.
		return store.Rotation{}, fmt.Errorf("cancel rotation %s: %w", id, ErrEmergencyRollback)
	}
	if err := m.halt(ctx, id); err != nil {
		return store.Rotation{}, fmt.Errorf("cancel rotation %s: %w", id, err)
	}
	if r, err = m.store.GetRotation(ctx, id); err != nil { // as its last step left it
		return store.Rotation{}, err
	}
	if slices.Contains(store.FinalRotationStates, r.State) {
		return store.Rotation{}, fmt.Errorf("cancel rotation %s: %w (%s)", id, ErrFinal, r.State)
	}
	ref, err := secretref.Parse(r.Ref)
	if err != nil {
		return store.Rotation{}, fmt.Errorf("cancel rotation %s: the rotation's ref: %w", id, err)
	}
	next := r
	if r.State == Pending && r.ToVersion == "" {
		// A version written but not yet recorded is found as a resume
		// would find it.
		cur, err := m.read(ctx, ref)
		if err != nil {
			m.drive(r)
			return store.Rotation{}, fmt.Errorf("cancel rotation %s: read the current version: %w", id, err)
		}
		clear(cur.Data)
		stager, _ := m.backend.Stager(ref)
		if next.ToVersion, err = m.written(ctx, r, ref, cur, stager); err != nil {
			m.drive(r)
			return store.Rotation{}, fmt.Errorf("cancel rotation %s: %w", id, err)
		}
	}
	next.State, next.Detail = Failed, "cancelled by "+actor+" in "+r.State
	saved, err := m.store.UpdateRotation(ctx, next, r.State)
	if err != nil {
		m.drive(r)
		return store.Rotation{}, fmt.Errorf("cancel rotation %s: %w", id, err)
	}
	saved.Actor = actor
	m.record(ctx, saved, "rotation.cancel", audit.OK)
	if saved.ToVersion == "" || (r.State == Pending && m.isStaged(ref)) {
		m.catalog.Pin(ctx, r.Secret, "") // nothing new was served
		return saved, nil
	}
	return m.rollback(ctx, saved), nil
}

func (m *Manager) isStaged(ref secretref.Ref) bool {
	_, ok := m.backend.Stager(ref)
	return ok
}

// Rollback puts every consumer of a rotation's secret back on the version
// it started from: the secret's newest rotation, completed (or failed and
// not rolled back), whose version is still the backend's current one. A
// superseded version (the backend has moved on since) is refused with
// ErrSuperseded, naming the current version; an emergency rotation with
// ErrEmergencyRollback.
func (m *Manager) Rollback(ctx context.Context, id, actor string) (store.Rotation, error) {
	r, err := m.store.GetRotation(ctx, id)
	if err != nil {
		return store.Rotation{}, err
	}
	if r.State != Completed && r.State != Failed {
		if r.State == RolledBack {
			return store.Rotation{}, fmt.Errorf("roll back rotation %s: %w (already rolled back)", id, ErrFinal)
		}
		return store.Rotation{}, fmt.Errorf("roll back rotation %s: %w (it is %s: cancel it instead)", id, ErrRunning, r.State)
	}
	if r.ToVersion == "" {
		return store.Rotation{}, fmt.Errorf("roll back rotation %s: it created no version: %w", id, ErrFinal)
	}
	if r.Emergency {
		return store.Rotation{}, fmt.Errorf("roll back rotation %s: %w", id, ErrEmergencyRollback)
	}
	newest, err := m.store.ListRotations(ctx, store.RotationQuery{Secret: r.Secret, Limit: 1})
	if err != nil {
		return store.Rotation{}, err
	}
	if len(newest) > 0 && newest[0].ID != r.ID {
		return store.Rotation{}, fmt.Errorf("roll back rotation %s: %w by rotation %s (%s)", id, ErrSuperseded, newest[0].ID, newest[0].State)
	}
	ref, err := secretref.Parse(r.Ref)
	if err != nil {
		return store.Rotation{}, fmt.Errorf("roll back rotation %s: the rotation's ref: %w", id, err)
	}
	cur, err := m.read(ctx, ref)
	if err != nil {
		return store.Rotation{}, fmt.Errorf("roll back rotation %s: read the current version: %w", id, err)
	}
	clear(cur.Data)
	if cur.Version != r.ToVersion {
		return store.Rotation{}, fmt.Errorf("roll back rotation %s: %w: the backend's current version is %s, not %s", id, ErrSuperseded, cur.Version, r.ToVersion)
	}
	r.Actor = actor
	m.record(ctx, r, "rotation.rollback", audit.OK)
	done := m.rollback(ctx, r)
	if done.State != RolledBack {
		return done, errors.New("roll back rotation " + id + ": the previous value could not be made current; the secret stays pinned at it (see the server log)")
	}
	return done, nil
}
