package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/secretplane/secretplane/store"
)

const auditColumns = "seq, time_us, actor, action, target, decision, policy, outcome, request_id, ref, refused, prev_hash, hash"

// AppendAudit implements store.AuditStore: the chain head row is locked
// (FOR UPDATE in PostgreSQL; BEGIN IMMEDIATE in SQLite) so appenders on
// every replica extend one chain.
func (s *Store) AppendAudit(ctx context.Context, fn func(store.AuditChainHead) ([]store.AuditEvent, error)) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("append audit: begin: %w", err)
	}
	defer tx.Rollback()
	var head store.AuditChainHead
	if err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`+s.dialect.ForUpdate()).Scan(&head.Seq, &head.Hash); err != nil {
		return fmt.Errorf("append audit: read chain head: %w", err)
	}
	events, err := fn(head)
	if err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	if len(events) == 0 {
		return nil
	}
	if err := s.insertAudit(ctx, tx, events); err != nil {
		return err
	}
	last := events[len(events)-1]
	if _, err := tx.ExecContext(ctx, s.dialect.Rebind(`UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1`), last.Seq, last.Hash); err != nil {
		return fmt.Errorf("append audit: move chain head: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("append audit: commit: %w", err)
	}
	return nil
}

// insertAudit writes events in the way that suits the engine (see
// Dialect.Embedded).
func (s *Store) insertAudit(ctx context.Context, tx *sql.Tx, events []store.AuditEvent) error {
	const perRow, maxRows = 13, 256
	row := func(e store.AuditEvent) []any {
		return []any{e.Seq, e.Time.UnixMicro(), e.Actor, e.Action, e.Target, e.Decision, e.Policy, e.Outcome, e.RequestID, e.Ref, e.Refused, e.PrevHash, e.Hash}
	}
	if s.dialect.Embedded() {
		stmt, err := tx.PrepareContext(ctx, s.dialect.Rebind(`INSERT INTO audit_events (`+auditColumns+`) VALUES `+valuesList(1, perRow)))
		if err != nil {
			return fmt.Errorf("append audit: prepare insert: %w", err)
		}
		defer stmt.Close()
		// Each row runs under a context without cancellation, and the loop
		// checks ctx itself: given one that can end, the driver starts a
		// goroutine per statement to watch it, which cost more than the
		// insert. A row takes microseconds, so the batch still stops
		// promptly, and the transaction rolls back.
		//
		// The engine runs on this goroutine, and a batch of thousands of
		// rows would hold a processor for milliseconds while the calls
		// being served wait for it (the audit ingester's batches set
		// Resolve's p99). So the loop yields every 64 rows, well under a
		// millisecond.
		rowCtx := context.WithoutCancel(ctx)
		for i, e := range events {
			if i%64 == 63 {
				runtime.Gosched()
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("append audit event %d: %w", e.Seq, err)
			}
			if _, err := stmt.ExecContext(rowCtx, row(e)...); err != nil {
				if cerr := ctx.Err(); cerr != nil {
					// database/sql rolled back as ctx ended: say why.
					err = cerr
				}
				return fmt.Errorf("append audit event %d: %w", e.Seq, err)
			}
		}
		return nil
	}
	for start := 0; start < len(events); start += maxRows {
		chunk := events[start:min(start+maxRows, len(events))]
		args := make([]any, 0, len(chunk)*perRow)
		for _, e := range chunk {
			args = append(args, row(e)...)
		}
		q := `INSERT INTO audit_events (` + auditColumns + `) VALUES ` + valuesList(len(chunk), perRow)
		if _, err := tx.ExecContext(ctx, s.dialect.Rebind(q), args...); err != nil {
			return fmt.Errorf("append audit events %d to %d: %w", chunk[0].Seq, chunk[len(chunk)-1].Seq, err)
		}
	}
	return nil
}

// QueryAudit implements store.AuditStore.
func (s *Store) QueryAudit(ctx context.Context, q store.AuditQuery) ([]store.AuditEvent, error) {
	if q.Limit <= 0 {
		return nil, fmt.Errorf("query audit: limit must be positive")
	}
	where := []string{"seq > $1"}
	args := []any{q.AfterSeq}
	if q.Actor != "" {
		args = append(args, q.Actor)
		where = append(where, fmt.Sprintf("actor = $%d", len(args)))
	}
	if q.Action != "" {
		args = append(args, q.Action)
		where = append(where, fmt.Sprintf("action = $%d", len(args)))
	}
	args = append(args, q.Limit)
	order := "ASC"
	if q.Newest {
		order = "DESC"
	}
	query := fmt.Sprintf(`SELECT %s FROM audit_events WHERE %s ORDER BY seq %s LIMIT $%d`, auditColumns, strings.Join(where, " AND "), order, len(args))
	rows, err := s.db.QueryContext(ctx, s.dialect.Rebind(query), args...)
	if err != nil {
		return nil, fmt.Errorf("query audit: %w", err)
	}
	defer rows.Close()
	var out []store.AuditEvent
	for rows.Next() {
		var (
			e  store.AuditEvent
			us int64
		)
		if err := rows.Scan(&e.Seq, &us, &e.Actor, &e.Action, &e.Target, &e.Decision, &e.Policy, &e.Outcome, &e.RequestID, &e.Ref, &e.Refused, &e.PrevHash, &e.Hash); err != nil {
			return nil, fmt.Errorf("query audit: %w", err)
		}
		e.Time = time.UnixMicro(us).UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query audit: %w", err)
	}
	if q.Newest {
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out, nil
}
