package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/secretplane/secretplane/store"
)

const deliveryColumns = "id, webhook, event_type, body, state, attempts, next_us, last_error, create_us, update_us"

// EnqueueDeliveries implements store.DeliveryStore.
func (s *Store) EnqueueDeliveries(ctx context.Context, ds []store.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	now := s.now().UTC().Truncate(time.Microsecond).UnixMicro()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("enqueue deliveries: %w", err)
	}
	defer tx.Rollback()
	q := s.dialect.Rebind(`INSERT INTO deliveries (` + deliveryColumns + `) VALUES ($1, $2, $3, $4, 'pending', 0, $5, '', $6, $6) ON CONFLICT (id) DO NOTHING`)
	for _, d := range ds {
		if _, err := tx.ExecContext(ctx, q, d.ID, d.Webhook, d.EventType, string(d.Body), usOf(d.NextAttempt), now); err != nil {
			return fmt.Errorf("enqueue delivery %s: %w", d.ID, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("enqueue deliveries: %w", err)
	}
	return nil
}

// DueDeliveries implements store.DeliveryStore.
func (s *Store) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]store.Delivery, error) {
	return s.queryDeliveries(ctx, `SELECT `+deliveryColumns+` FROM deliveries WHERE state = 'pending' AND next_us <= $1 ORDER BY next_us, id LIMIT $2`, now.UnixMicro(), limit)
}

// ListDeliveries implements store.DeliveryStore.
func (s *Store) ListDeliveries(ctx context.Context, webhook string, limit int) ([]store.Delivery, error) {
	if webhook == "" {
		return s.queryDeliveries(ctx, `SELECT `+deliveryColumns+` FROM deliveries ORDER BY create_us DESC, id DESC LIMIT $1`, limit)
	}
	return s.queryDeliveries(ctx, `SELECT `+deliveryColumns+` FROM deliveries WHERE webhook = $1 ORDER BY create_us DESC, id DESC LIMIT $2`, webhook, limit)
}

// UpdateDelivery implements store.DeliveryStore.
func (s *Store) UpdateDelivery(ctx context.Context, d store.Delivery) error {
	now := s.now().UTC().Truncate(time.Microsecond).UnixMicro()
	res, err := s.db.ExecContext(ctx, s.dialect.Rebind(`UPDATE deliveries SET state = $1, attempts = $2, next_us = $3, last_error = $4, update_us = $5 WHERE id = $6`),
		d.State, d.Attempts, usOf(d.NextAttempt), d.LastError, now, d.ID)
	if err != nil {
		return fmt.Errorf("update delivery %s: %w", d.ID, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("update delivery %s: %w", d.ID, store.ErrNotFound)
	}
	return nil
}

func (s *Store) queryDeliveries(ctx context.Context, q string, args ...any) ([]store.Delivery, error) {
	if limit := args[len(args)-1].(int); limit <= 0 {
		return nil, fmt.Errorf("list deliveries: limit must be positive")
	}
	rows, err := s.db.QueryContext(ctx, s.dialect.Rebind(q), args...)
	if err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	defer rows.Close()
	var out []store.Delivery
	for rows.Next() {
		var (
			d                      store.Delivery
			body                   string
			next, created, updated int64
		)
		if err := rows.Scan(&d.ID, &d.Webhook, &d.EventType, &body, &d.State, &d.Attempts, &next, &d.LastError, &created, &updated); err != nil {
			return nil, fmt.Errorf("list deliveries: %w", err)
		}
		d.Body, d.NextAttempt, d.CreateTime, d.UpdateTime = []byte(body), timeOf(next), timeOf(created), timeOf(updated)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	return out, nil
}
