package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/secretplane/secretplane/store"
)

const rotationColumns = "id, secret, ref, method, state, actor, emergency, trigger_kind, from_version, to_version, detail, deadline_us, create_us, update_us"

func usOf(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func timeOf(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

// CreateRotation implements store.RotationStore.
func (s *Store) CreateRotation(ctx context.Context, r store.Rotation) (store.Rotation, error) {
	if r.ID == "" || r.Secret == "" || r.State == "" {
		return store.Rotation{}, errors.New("create rotation: id, secret and state are required")
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	r.CreateTime, r.UpdateTime = now, now
	q := `INSERT INTO rotations (` + rotationColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`
	if r.Trigger == "" {
		r.Trigger = "manual"
	}
	_, err := s.db.ExecContext(ctx, s.dialect.Rebind(q), r.ID, r.Secret, r.Ref, r.Method, r.State, r.Actor, r.Emergency, r.Trigger,
		r.FromVersion, r.ToVersion, r.Detail, usOf(r.Deadline), now.UnixMicro(), now.UnixMicro())
	switch {
	case err != nil && s.dialect.IsUniqueViolation(err):
		return store.Rotation{}, fmt.Errorf("create rotation of %s: %w", r.Secret, store.ErrAlreadyExists)
	case err != nil:
		return store.Rotation{}, fmt.Errorf("create rotation of %s: %w", r.Secret, err)
	}
	return r, nil
}

// UpdateRotation implements store.RotationStore.
func (s *Store) UpdateRotation(ctx context.Context, r store.Rotation, fromState string) (store.Rotation, error) {
	now := s.now().UTC().Truncate(time.Microsecond)
	q := `UPDATE rotations SET state = $1, to_version = $2, detail = $3, deadline_us = $4, update_us = $5 WHERE id = $6 AND state = $7`
	res, err := s.db.ExecContext(ctx, s.dialect.Rebind(q), r.State, r.ToVersion, r.Detail, usOf(r.Deadline), now.UnixMicro(), r.ID, fromState)
	if err != nil {
		if s.dialect.IsUniqueViolation(err) {
			return store.Rotation{}, fmt.Errorf("update rotation %s: another rotation of %s is active: %w", r.ID, r.Secret, store.ErrAlreadyExists)
		}
		return store.Rotation{}, fmt.Errorf("update rotation %s: %w", r.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		if _, gerr := s.GetRotation(ctx, r.ID); errors.Is(gerr, store.ErrNotFound) {
			return store.Rotation{}, fmt.Errorf("update rotation %s: %w", r.ID, store.ErrNotFound)
		}
		return store.Rotation{}, fmt.Errorf("update rotation %s: not in state %s: %w", r.ID, fromState, store.ErrConflict)
	}
	return s.GetRotation(ctx, r.ID)
}

// GetRotation implements store.RotationStore.
func (s *Store) GetRotation(ctx context.Context, id string) (store.Rotation, error) {
	row := s.db.QueryRowContext(ctx, s.dialect.Rebind(`SELECT `+rotationColumns+` FROM rotations WHERE id = $1`), id)
	r, err := scanRotation(row)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Rotation{}, fmt.Errorf("rotation %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Rotation{}, fmt.Errorf("get rotation %s: %w", id, err)
	}
	return r, nil
}

// ListRotations implements store.RotationStore.
func (s *Store) ListRotations(ctx context.Context, q store.RotationQuery) ([]store.Rotation, error) {
	if q.Limit <= 0 {
		return nil, fmt.Errorf("list rotations: limit must be positive")
	}
	var (
		where []string
		args  []any
	)
	if q.Secret != "" {
		args = append(args, q.Secret)
		where = append(where, fmt.Sprintf("secret = $%d", len(args)))
	}
	if q.ActiveOnly {
		where = append(where, "state NOT IN ('"+strings.Join(store.FinalRotationStates, "', '")+"')")
	}
	query := `SELECT ` + rotationColumns + ` FROM rotations`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	args = append(args, q.Limit)
	query += fmt.Sprintf(` ORDER BY create_us DESC, id DESC LIMIT $%d`, len(args))
	rows, err := s.db.QueryContext(ctx, s.dialect.Rebind(query), args...)
	if err != nil {
		return nil, fmt.Errorf("list rotations: %w", err)
	}
	defer rows.Close()
	var out []store.Rotation
	for rows.Next() {
		r, err := scanRotation(rows)
		if err != nil {
			return nil, fmt.Errorf("list rotations: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list rotations: %w", err)
	}
	return out, nil
}

func scanRotation(row scanner) (store.Rotation, error) {
	var (
		r                          store.Rotation
		deadline, created, updated int64
	)
	if err := row.Scan(&r.ID, &r.Secret, &r.Ref, &r.Method, &r.State, &r.Actor, &r.Emergency, &r.Trigger, &r.FromVersion, &r.ToVersion, &r.Detail, &deadline, &created, &updated); err != nil {
		return store.Rotation{}, err
	}
	r.Deadline, r.CreateTime, r.UpdateTime = timeOf(deadline), timeOf(created), timeOf(updated)
	return r, nil
}
