package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/secretplane/secretplane/store"
)

const consumerColumns = "secret, identity, channel, node, first_seen_us, last_seen_us, version, acked_version, ack_error, ack_time_us"

// UpsertConsumers implements store.ConsumerStore: one statement per chunk,
// merging with what other replicas wrote (earliest first sighting, newest
// sighting's version, newest acknowledgement).
func (s *Store) UpsertConsumers(ctx context.Context, cs []store.Consumer) error {
	const perRow, maxRows = 10, 200
	for start := 0; start < len(cs); start += maxRows {
		chunk := cs[start:min(start+maxRows, len(cs))]
		args := make([]any, 0, len(chunk)*perRow)
		for _, c := range chunk {
			var ackUS int64
			if !c.AckTime.IsZero() {
				ackUS = c.AckTime.UnixMicro()
			}
			args = append(args, c.Secret, c.Identity, c.Channel, c.Node, c.FirstSeen.UnixMicro(), c.LastSeen.UnixMicro(), c.Version, c.AckedVersion, c.AckError, ackUS)
		}
		q := `INSERT INTO consumers (` + consumerColumns + `) VALUES ` + valuesList(len(chunk), perRow) + `
ON CONFLICT (secret, identity, channel, node) DO UPDATE SET
  first_seen_us = CASE WHEN excluded.first_seen_us < consumers.first_seen_us THEN excluded.first_seen_us ELSE consumers.first_seen_us END,
  version       = CASE WHEN excluded.last_seen_us >= consumers.last_seen_us THEN excluded.version ELSE consumers.version END,
  last_seen_us  = CASE WHEN excluded.last_seen_us > consumers.last_seen_us THEN excluded.last_seen_us ELSE consumers.last_seen_us END,
  acked_version = CASE WHEN excluded.ack_time_us >= consumers.ack_time_us THEN excluded.acked_version ELSE consumers.acked_version END,
  ack_error     = CASE WHEN excluded.ack_time_us >= consumers.ack_time_us THEN excluded.ack_error ELSE consumers.ack_error END,
  ack_time_us   = CASE WHEN excluded.ack_time_us > consumers.ack_time_us THEN excluded.ack_time_us ELSE consumers.ack_time_us END`
		if _, err := s.db.ExecContext(ctx, s.dialect.Rebind(q), args...); err != nil {
			return fmt.Errorf("upsert %d consumers: %w", len(chunk), err)
		}
	}
	return nil
}

// ListConsumers implements store.ConsumerStore.
func (s *Store) ListConsumers(ctx context.Context, secret string) ([]store.Consumer, error) {
	rows, err := s.db.QueryContext(ctx, s.dialect.Rebind(`SELECT `+consumerColumns+` FROM consumers WHERE secret = $1 ORDER BY identity, channel, node`), secret)
	if err != nil {
		return nil, fmt.Errorf("list consumers of %s: %w", secret, err)
	}
	defer rows.Close()
	var out []store.Consumer
	for rows.Next() {
		var (
			c                  store.Consumer
			first, last, ackUS int64
		)
		if err := rows.Scan(&c.Secret, &c.Identity, &c.Channel, &c.Node, &first, &last, &c.Version, &c.AckedVersion, &c.AckError, &ackUS); err != nil {
			return nil, fmt.Errorf("list consumers of %s: %w", secret, err)
		}
		c.FirstSeen, c.LastSeen = time.UnixMicro(first).UTC(), time.UnixMicro(last).UTC()
		if ackUS != 0 {
			c.AckTime = time.UnixMicro(ackUS).UTC()
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list consumers of %s: %w", secret, err)
	}
	return out, nil
}
