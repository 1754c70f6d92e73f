package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/secretplane/secretplane/store"
)

// secretKind describes the secrets table.
func secretKind() kind[store.Secret] {
	return kind[store.Secret]{
		table:   "secrets",
		noun:    "secret",
		columns: []string{"ref", "description", "owner", "required", "labels", "kind"},
		values: func(s store.Secret) ([]any, error) {
			labels, err := encodeLabels(s.Labels)
			if err != nil {
				return nil, err
			}
			return []any{s.Ref, s.Description, s.Owner, s.Required, labels, s.Kind}, nil
		},
		scan: func(row scanner) (store.Secret, error) {
			var (
				s                store.Secret
				labels           string
				created, updated int64
			)
			if err := row.Scan(&s.Name, &s.Ref, &s.Description, &s.Owner, &s.Required, &labels, &s.Kind, &s.Revision, &created, &updated); err != nil {
				return store.Secret{}, err
			}
			l, err := decodeLabels(labels)
			if err != nil {
				return store.Secret{}, err
			}
			s.Labels = l
			s.CreateTime, s.UpdateTime = time.UnixMicro(created).UTC(), time.UnixMicro(updated).UTC()
			return s, nil
		},
		meta: func(s *store.Secret, rev int64, created, updated time.Time) {
			s.Revision, s.CreateTime, s.UpdateTime = rev, created, updated
			if len(s.Labels) == 0 {
				s.Labels = nil
			}
		},
	}
}

// configKind describes the configs table.
func configKind() kind[store.ConfigDocument] {
	return kind[store.ConfigDocument]{
		table:   "configs",
		noun:    "config",
		columns: []string{"identity", "entries", "labels"},
		values: func(d store.ConfigDocument) ([]any, error) {
			labels, err := encodeLabels(d.Labels)
			if err != nil {
				return nil, err
			}
			entries, err := encodeEntries(d.Entries)
			if err != nil {
				return nil, err
			}
			return []any{d.Identity, entries, labels}, nil
		},
		scan: func(row scanner) (store.ConfigDocument, error) {
			var (
				d                store.ConfigDocument
				entries, labels  string
				created, updated int64
			)
			if err := row.Scan(&d.Name, &d.Identity, &entries, &labels, &d.Revision, &created, &updated); err != nil {
				return store.ConfigDocument{}, err
			}
			var err error
			if d.Entries, err = decodeEntries(entries); err != nil {
				return store.ConfigDocument{}, err
			}
			if d.Labels, err = decodeLabels(labels); err != nil {
				return store.ConfigDocument{}, err
			}
			d.CreateTime, d.UpdateTime = time.UnixMicro(created).UTC(), time.UnixMicro(updated).UTC()
			return d, nil
		},
		meta: func(d *store.ConfigDocument, rev int64, created, updated time.Time) {
			d.Revision, d.CreateTime, d.UpdateTime = rev, created, updated
			if len(d.Labels) == 0 {
				d.Labels = nil
			}
			if len(d.Entries) == 0 {
				d.Entries = nil
			}
		},
	}
}

// PutSecret implements store.Store.
func (s *Store) PutSecret(ctx context.Context, sec store.Secret, pre store.Precondition) (store.Secret, error) {
	return put(ctx, s, secretKind(), sec.Name, sec, pre)
}

// GetSecret implements store.Store.
func (s *Store) GetSecret(ctx context.Context, name string) (store.Secret, error) {
	return get(ctx, s, secretKind(), name)
}

// ListSecrets implements store.Store.
func (s *Store) ListSecrets(ctx context.Context, q store.ListQuery) ([]store.Secret, error) {
	return list(ctx, s, secretKind(), q)
}

// DeleteSecret implements store.Store.
func (s *Store) DeleteSecret(ctx context.Context, name string, pre store.Precondition) error {
	return del(ctx, s, secretKind(), name, pre)
}

// PutConfig implements store.Store.
func (s *Store) PutConfig(ctx context.Context, d store.ConfigDocument, pre store.Precondition) (store.ConfigDocument, error) {
	return put(ctx, s, configKind(), d.Name, d, pre)
}

// GetConfig implements store.Store.
func (s *Store) GetConfig(ctx context.Context, name string) (store.ConfigDocument, error) {
	return get(ctx, s, configKind(), name)
}

// ListConfigs implements store.Store.
func (s *Store) ListConfigs(ctx context.Context, q store.ListQuery) ([]store.ConfigDocument, error) {
	return list(ctx, s, configKind(), q)
}

// DeleteConfig implements store.Store.
func (s *Store) DeleteConfig(ctx context.Context, name string, pre store.Precondition) error {
	return del(ctx, s, configKind(), name, pre)
}

// SecretsByRef implements store.Store.
func (s *Store) SecretsByRef(ctx context.Context, ref string) ([]store.Secret, error) {
	k := secretKind()
	rows, err := s.db.QueryContext(ctx, s.dialect.Rebind(`SELECT `+k.selectCols()+` FROM secrets WHERE ref = $1 ORDER BY name LIMIT 1000`), ref)
	if err != nil {
		return nil, fmt.Errorf("secrets by ref: %w", err)
	}
	defer rows.Close()
	var out []store.Secret
	for rows.Next() {
		sec, err := k.scan(rows)
		if err != nil {
			return nil, fmt.Errorf("secrets by ref: %w", err)
		}
		out = append(out, sec)
	}
	return out, rows.Err()
}
