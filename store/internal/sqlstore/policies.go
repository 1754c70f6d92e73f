package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/secretplane/secretplane/store"
)

// policyKind describes the policies table.
func policyKind() kind[store.Policy] {
	return kind[store.Policy]{
		table:   "policies",
		noun:    "policy",
		columns: []string{"description", "subject", "verbs", "objects"},
		values: func(p store.Policy) ([]any, error) {
			verbs, err := encodeStrings(p.Verbs)
			if err != nil {
				return nil, err
			}
			objects, err := encodeStrings(p.Objects)
			if err != nil {
				return nil, err
			}
			return []any{p.Description, p.Subject, verbs, objects}, nil
		},
		scan: func(row scanner) (store.Policy, error) {
			var (
				p                store.Policy
				verbs, objects   string
				created, updated int64
			)
			if err := row.Scan(&p.Name, &p.Description, &p.Subject, &verbs, &objects, &p.Revision, &created, &updated); err != nil {
				return store.Policy{}, err
			}
			var err error
			if p.Verbs, err = decodeStrings(verbs); err != nil {
				return store.Policy{}, err
			}
			if p.Objects, err = decodeStrings(objects); err != nil {
				return store.Policy{}, err
			}
			p.CreateTime, p.UpdateTime = time.UnixMicro(created).UTC(), time.UnixMicro(updated).UTC()
			return p, nil
		},
		meta: func(p *store.Policy, rev int64, created, updated time.Time) {
			p.Revision, p.CreateTime, p.UpdateTime = rev, created, updated
			if len(p.Verbs) == 0 {
				p.Verbs = nil
			}
			if len(p.Objects) == 0 {
				p.Objects = nil
			}
		},
	}
}

func encodeStrings(ss []string) (string, error) {
	if ss == nil {
		ss = []string{}
	}
	raw, err := json.Marshal(ss)
	if err != nil {
		return "", fmt.Errorf("encode list: %w", err)
	}
	return string(raw), nil
}

func decodeStrings(s string) ([]string, error) {
	var out []string
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		return nil, fmt.Errorf("decode list: %w", err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// PutPolicy implements store.Store.
func (s *Store) PutPolicy(ctx context.Context, p store.Policy, pre store.Precondition) (store.Policy, error) {
	return put(ctx, s, policyKind(), p.Name, p, pre)
}

// GetPolicy implements store.Store.
func (s *Store) GetPolicy(ctx context.Context, name string) (store.Policy, error) {
	return get(ctx, s, policyKind(), name)
}

// ListPolicies implements store.Store.
func (s *Store) ListPolicies(ctx context.Context, q store.ListQuery) ([]store.Policy, error) {
	return list(ctx, s, policyKind(), q)
}

// DeletePolicy implements store.Store.
func (s *Store) DeletePolicy(ctx context.Context, name string, pre store.Precondition) error {
	return del(ctx, s, policyKind(), name, pre)
}
