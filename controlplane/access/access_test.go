package access_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/access"
	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
)

// flakyStore is a real SQLite store whose audit appends fail while down is
// set.
type flakyStore struct {
	*sqlite.Store
	down atomic.Bool
}

func (s *flakyStore) AppendAudit(ctx context.Context, fn func(store.AuditChainHead) ([]store.AuditEvent, error)) error {
	if s.down.Load() {
		return errors.New("disk full")
	}
	return s.Store.AppendAudit(ctx, fn)
}

type env struct {
	guard *access.Guard
	log   *audit.Log
	st    *flakyStore
	lead  spiffeid.ID
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	raw, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	st := &flakyStore{Store: raw}
	engine := policy.NewEngine(st, nil, slog.New(slog.DiscardHandler))
	if _, _, err := policy.NewManager(st, engine).Put(ctx, store.Policy{Name: "lead", Subject: "spiffe://td.test/payments/lead",
		Verbs: []string{"admin", "bind"}, Objects: []string{"payments/*", "local://payments/*"}}, policy.Write{}); err != nil {
		t.Fatal(err)
	}
	l := audit.New(st, audit.Options{})
	lctx, cancel := context.WithCancel(ctx)
	go l.Run(lctx)
	t.Cleanup(func() { cancel(); <-l.Done() })
	return &env{guard: access.NewGuard(engine, l), log: l, st: st, lead: spiffeid.RequireFromString("spiffe://td.test/payments/lead")}
}

func (e *env) events(t *testing.T) []store.AuditEvent {
	t.Helper()
	evs, err := e.log.QueryAudit(context.Background(), store.AuditQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestAuthorize(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		req     access.Request
		err     string // "" allowed; else in the error
		refused string
	}{
		{"admin on a name", access.Request{Verb: policy.Admin, Names: []string{"payments/db"}}, "", ""},
		{"admin elsewhere", access.Request{Verb: policy.Admin, Names: []string{"payments/db", "billing/db"}}, "not allowed admin on billing/db", "billing/db"},
		{"bind inside", access.Request{Verb: policy.Admin, Names: []string{"payments/db"}, Binds: []string{"local://payments/db#pw"}}, "", ""},
		{"bind outside", access.Request{Verb: policy.Admin, Names: []string{"payments/db"}, Binds: []string{"local://canary/value#k"}}, "not allowed bind on local://canary/value#k", "local://canary/value#k"},
		{"both missing", access.Request{Verb: policy.Admin, Names: []string{"billing/db"}, Binds: []string{"local://canary/value#k"}}, "admin on billing/db; nor bind on local://canary/value#k", "billing/db,local://canary/value#k"},
		{"an unparseable bind is left to the call", access.Request{Verb: policy.Admin, Names: []string{"payments/db"}, Binds: []string{"nope"}}, "", ""},
		{"no names", access.Request{Verb: policy.Read, Field: "names"}, "names: is required", ""},
		{"a secret for a name", access.Request{Verb: policy.Read, Field: "name", Names: []string{"canary-3f9a0c2be41d7785a6c0d2e1"}}, "name: looks like a secret value", ""},
		{"too many", access.Request{Verb: policy.Read, Names: make([]string, 3), MaxNames: 2}, "the limit is 2", ""},
		{"listing", access.Request{Verb: policy.Admin, Listing: true, Prefix: "payments/"}, "", ""},
		{"listing everything", access.Request{Verb: policy.Admin, Listing: true}, "not allowed admin on *", "*"},
		{"no rule", access.Request{NoRule: true, Action: "X.Y"}, "X.Y has no authorisation rule", "X.Y"},
		{"anyone", access.Request{Anyone: true}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			tc.req.Actor, tc.req.RequestID = e.lead, "r1"
			tc.req.Action = orDefault(tc.req.Action, "Svc.Call")
			call, err := e.guard.Authorize(ctx, tc.req)
			evs := e.events(t)
			if tc.err == "" {
				if err != nil || call == nil {
					t.Fatalf("refused: %v", err)
				}
				if len(evs) != 0 {
					t.Fatalf("a read was recorded before it ran: %+v", evs)
				}
				if err := call.Finish(ctx, audit.OK); err != nil {
					t.Fatal(err)
				}
				if evs = e.events(t); len(evs) != 1 || evs[0].Decision != audit.Allow || evs[0].Outcome != audit.OK {
					t.Fatalf("audit: %+v", evs)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want %q", err, tc.err)
			}
			var denied *access.DeniedError
			var verr *validate.Error
			if !errors.As(err, &denied) && !errors.As(err, &verr) {
				t.Fatalf("error type %T", err)
			}
			if len(evs) != 1 || evs[0].Decision != audit.Deny || evs[0].Refused != tc.refused || strings.Contains(evs[0].Target, "3f9a0c2b") {
				t.Fatalf("audit: %+v", evs)
			}
		})
	}
}

// Fail closed: a refusal that cannot be recorded, a write whose decision
// cannot be, and a read whose event cannot be, all fail with
// ErrAuditUnavailable; a write's outcome is never lost.
func TestAuditFailure(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.st.down.Store(true)
	read := access.Request{Actor: e.lead, Action: "Svc.Read", Verb: policy.Admin, Names: []string{"payments/db"}}
	write := read
	write.Action, write.Writes = "Svc.Write", true
	denied := read
	denied.Names = []string{"billing/db"}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := e.guard.Authorize(short, denied); !errors.Is(err, access.ErrAuditUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unrecorded refusal: %v", err)
	}
	if _, err := e.guard.Authorize(ctx, write); !errors.Is(err, access.ErrAuditUnavailable) {
		t.Fatalf("unrecorded write decision: %v", err)
	}
	call, err := e.guard.Authorize(ctx, read)
	if err != nil {
		t.Fatal(err)
	}
	if err := call.Finish(ctx, audit.OK); !errors.Is(err, access.ErrAuditUnavailable) {
		t.Fatalf("unrecorded read: %v", err)
	}
	// A write decided while the log worked, finished while it does not.
	e.st.down.Store(false)
	wcall, err := e.guard.Authorize(ctx, write)
	if err != nil {
		t.Fatal(err)
	}
	e.st.down.Store(true)
	wcall.NoteRef("local://payments/db#pw")
	if err := wcall.Finish(ctx, "Aborted"); err != nil {
		t.Fatalf("a write's outcome failed the call: %v", err)
	}
	e.st.down.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := e.events(t)
		if len(evs) == 2 && evs[1].Outcome == "Aborted" && evs[1].Ref == "local://payments/db#pw" && evs[0].Outcome == audit.Authorized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the write's outcome was not recorded as a follow-up: %+v", evs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
