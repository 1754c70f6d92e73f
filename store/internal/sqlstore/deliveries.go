package sqlstore

import (
	"context"
	"fmt"
	"sort"
	"strings"
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
	return s.QueryDeliveries(ctx, store.DeliveryQuery{Webhook: webhook, Limit: limit})
}

// QueryDeliveries implements store.DeliveryStore.
func (s *Store) QueryDeliveries(ctx context.Context, q store.DeliveryQuery) ([]store.Delivery, error) {
	var (
		where []string
		args  []any
	)
	if q.Webhook != "" {
		args = append(args, q.Webhook)
		where = append(where, fmt.Sprintf("webhook = $%d", len(args)))
	}
	if q.State != "" {
		args = append(args, q.State)
		where = append(where, fmt.Sprintf("state = $%d", len(args)))
	}
	query := `SELECT ` + deliveryColumns + ` FROM deliveries`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	args = append(args, q.Limit)
	query += fmt.Sprintf(` ORDER BY create_us DESC, id DESC LIMIT $%d`, len(args))
	return s.queryDeliveries(ctx, query, args...)
}

// SummarizeDeliveries implements store.DeliveryStore: one statement (one
// snapshot) that counts each webhook's deliveries by state and joins the
// delivery whose error was recorded last. A delivered delivery was last
// updated when it succeeded, so the newest such update is the webhook's
// last delivery.
func (s *Store) SummarizeDeliveries(ctx context.Context) ([]store.DeliverySummary, error) {
	const q = `SELECT c.webhook, c.pending, c.delivered, c.dead, c.delivered_us, c.error_us, COALESCE(e.last_error, ''), COALESCE(e.id, '')
FROM (SELECT webhook,
        SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending,
        SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS delivered,
        SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END) AS dead,
        COALESCE(MAX(CASE WHEN state = 'delivered' THEN update_us END), 0) AS delivered_us,
        COALESCE(MAX(CASE WHEN last_error <> '' THEN update_us END), 0) AS error_us
      FROM deliveries GROUP BY webhook) c
LEFT JOIN deliveries e ON e.webhook = c.webhook AND e.update_us = c.error_us AND e.last_error <> ''`
	rows, err := s.db.QueryContext(ctx, s.dialect.Rebind(q))
	if err != nil {
		return nil, fmt.Errorf("summarize deliveries: %w", err)
	}
	defer rows.Close()
	byName := map[string]int{} // index in out
	errID := map[string]string{}
	var out []store.DeliverySummary
	for rows.Next() {
		var (
			d                    store.DeliverySummary
			pending, done, dead  int64
			deliveredUS, errorUS int64
			id                   string
		)
		if err := rows.Scan(&d.Webhook, &pending, &done, &dead, &deliveredUS, &errorUS, &d.LastError, &id); err != nil {
			return nil, fmt.Errorf("summarize deliveries: %w", err)
		}
		d.Pending, d.Delivered, d.Dead = int(pending), int(done), int(dead)
		d.LastDelivered = timeOf(deliveredUS)
		if d.LastError != "" {
			d.LastErrorTime = timeOf(errorUS)
		}
		i, seen := byName[d.Webhook]
		switch {
		case !seen:
			byName[d.Webhook], errID[d.Webhook] = len(out), id
			out = append(out, d)
		case id > errID[d.Webhook]:
			// Errors recorded in the same microsecond: the greatest id
			// decides, whatever order the rows came in.
			out[i].LastError, errID[d.Webhook] = d.LastError, id
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("summarize deliveries: %w", err)
	}
	// Sorted here, not in SQL: the backends' collations differ.
	sort.Slice(out, func(i, j int) bool { return out[i].Webhook < out[j].Webhook })
	return out, nil
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
