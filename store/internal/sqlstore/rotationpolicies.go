package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/secretplane/secretplane/store"
)

const rotationPolicyColumns = "secret, method, params, every_us, cadence_window, renew_at, create_us, update_us"

// PutRotationPolicy implements store.RotationPolicyStore.
func (s *Store) PutRotationPolicy(ctx context.Context, p store.RotationPolicy) (store.RotationPolicy, error) {
	if p.Secret == "" || p.Method == "" {
		return store.RotationPolicy{}, errors.New("put rotation policy: secret and method are required")
	}
	params, err := json.Marshal(p.Params)
	if err != nil {
		return store.RotationPolicy{}, fmt.Errorf("put rotation policy of %s: %w", p.Secret, err)
	}
	if p.Params == nil {
		params = []byte("{}")
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	q := `INSERT INTO rotation_policies (` + rotationPolicyColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
		ON CONFLICT (secret) DO UPDATE SET method = excluded.method, params = excluded.params, every_us = excluded.every_us,
		cadence_window = excluded.cadence_window, renew_at = excluded.renew_at, update_us = excluded.update_us`
	if _, err := s.db.ExecContext(ctx, s.dialect.Rebind(q), p.Secret, p.Method, string(params), p.Every.Microseconds(), p.Window, p.RenewAt, now.UnixMicro()); err != nil {
		return store.RotationPolicy{}, fmt.Errorf("put rotation policy of %s: %w", p.Secret, err)
	}
	return s.GetRotationPolicy(ctx, p.Secret)
}

// GetRotationPolicy implements store.RotationPolicyStore.
func (s *Store) GetRotationPolicy(ctx context.Context, secret string) (store.RotationPolicy, error) {
	row := s.db.QueryRowContext(ctx, s.dialect.Rebind(`SELECT `+rotationPolicyColumns+` FROM rotation_policies WHERE secret = $1`), secret)
	p, err := scanRotationPolicy(row)
	if errors.Is(err, sql.ErrNoRows) {
		return store.RotationPolicy{}, fmt.Errorf("rotation policy of %s: %w", secret, store.ErrNotFound)
	}
	if err != nil {
		return store.RotationPolicy{}, fmt.Errorf("get rotation policy of %s: %w", secret, err)
	}
	return p, nil
}

// ListRotationPolicies implements store.RotationPolicyStore.
func (s *Store) ListRotationPolicies(ctx context.Context, after string, limit int) ([]store.RotationPolicy, error) {
	if limit <= 0 {
		return nil, errors.New("list rotation policies: limit must be positive")
	}
	rows, err := s.db.QueryContext(ctx, s.dialect.Rebind(`SELECT `+rotationPolicyColumns+` FROM rotation_policies WHERE secret > $1 ORDER BY secret LIMIT $2`), after, limit)
	if err != nil {
		return nil, fmt.Errorf("list rotation policies: %w", err)
	}
	defer rows.Close()
	var out []store.RotationPolicy
	for rows.Next() {
		p, err := scanRotationPolicy(rows)
		if err != nil {
			return nil, fmt.Errorf("list rotation policies: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list rotation policies: %w", err)
	}
	return out, nil
}

// DeleteRotationPolicy implements store.RotationPolicyStore.
func (s *Store) DeleteRotationPolicy(ctx context.Context, secret string) error {
	res, err := s.db.ExecContext(ctx, s.dialect.Rebind(`DELETE FROM rotation_policies WHERE secret = $1`), secret)
	if err != nil {
		return fmt.Errorf("delete rotation policy of %s: %w", secret, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("rotation policy of %s: %w", secret, store.ErrNotFound)
	}
	return nil
}

func scanRotationPolicy(row scanner) (store.RotationPolicy, error) {
	var (
		p                       store.RotationPolicy
		params                  string
		every, created, updated int64
	)
	if err := row.Scan(&p.Secret, &p.Method, &params, &every, &p.Window, &p.RenewAt, &created, &updated); err != nil {
		return store.RotationPolicy{}, err
	}
	if err := json.Unmarshal([]byte(params), &p.Params); err != nil {
		return store.RotationPolicy{}, fmt.Errorf("rotation policy of %s: params: %w", p.Secret, err)
	}
	if len(p.Params) == 0 {
		p.Params = nil
	}
	p.Every = time.Duration(every) * time.Microsecond
	p.CreateTime, p.UpdateTime = timeOf(created), timeOf(updated)
	return p, nil
}
