package awssm_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/awssm"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/awsfake"
)

// newStagingBackend returns a fake seeded with prod/db (version old1
// AWSPREVIOUS, old2 AWSCURRENT) and a Backend against it, with credentials
// from the environment (SigV4 signs, the fake checks a signature is there)
// and one attempt per call, so that an injected 5xx is not retried.
func newStagingBackend(t *testing.T) (f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
	t.Helper()
	awsfake.Credentials(t)
	t.Setenv("AWS_MAX_ATTEMPTS", "1")
	f, srv := awsfake.New(t)
	old1 = f.Put("prod/db", `{"password":"pw-0","user":"app","port":5432}`)
	old2 = f.Put("prod/db", `{"password":"pw-1","user":"app","port":5432,"id":12345678901234567890}`)
	b, err := awssm.New(context.Background(), awssm.Config{Region: "us-east-1", Endpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return f, b, old1, old2
}

// versionIDFor is the derivation awssm documents for StagedVersionID,
// computed here independently: a staged version's id is persisted at AWS,
// so the formula must not drift.
func versionIDFor(token string) string {
	sum := sha256.Sum256([]byte("secretplane/aws-sm/stage\x00" + token))
	u := sum[:16]
	u[6] = u[6]&0x0f | 0x80
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

var uuidV8 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

const (
	newValue = `{"password":"pw-2","user":"app","port":5432}`
	token    = "rotation-0192f1e2-prod-db"
)

func TestStagedWrites(t *testing.T) {
	ctx := context.Background()
	ref := secretref.MustParse("aws-sm://prod/db")
	field := secretref.MustParse("aws-sm://prod/db#password")
	id := versionIDFor(token)

	cases := []struct {
		name string
		run  func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string)
	}{
		{"derived token", func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
			if got := awssm.StagedVersionID(token); got != id {
				t.Fatalf("StagedVersionID(%q) = %s, want %s", token, got, id)
			}
			if !uuidV8.MatchString(id) || len(id) < 32 || len(id) > 64 {
				t.Fatalf("%s is not a 32-64 character UUID", id)
			}
			if awssm.StagedVersionID(token+"x") == id {
				t.Fatal("two tokens derive one version id")
			}
		}},
		{"whole rotation: Stage, Staged, Promote", func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
			f.ResetCalls()
			v, err := b.Stage(ctx, ref, []byte(newValue), token)
			if err != nil || v != id {
				t.Fatalf("stage: %q %v, want %s", v, err, id)
			}
			wantStages(t, f, map[string][]string{v: {"AWSPENDING"}, old2: {"AWSCURRENT"}, old1: {"AWSPREVIOUS"}})
			// Readers of the unversioned ref still get the old value; the
			// rotation's test step reads the pending one.
			if got, err := b.Read(ctx, ref); err != nil || got.Version != old2 || !strings.Contains(string(got.Data), "pw-1") {
				t.Fatalf("read after stage: %s %v, want the old version %s", got.Version, err, old2)
			}
			if got, err := b.Read(ctx, secretref.MustParse("aws-sm://prod/db?stage=AWSPENDING#password")); err != nil || string(got.Data) != "pw-2" || got.Version != v {
				t.Fatalf("read AWSPENDING: %q %s %v", got.Data, got.Version, err)
			}
			if s, err := b.Staged(ctx, ref, token); err != nil || s != v {
				t.Fatalf("staged: %q %v, want %s", s, err, v)
			}
			if err := b.Promote(ctx, ref, v); err != nil {
				t.Fatal(err)
			}
			wantStages(t, f, map[string][]string{v: {"AWSCURRENT"}, old2: {"AWSPREVIOUS"}})
			if got, err := b.Read(ctx, ref); err != nil || got.Version != v || string(got.Data) != newValue {
				t.Fatalf("read after promote: %s %v, want %s", got.Version, err, v)
			}
			wantCalls(t, f,
				"PutSecretValue stages=[AWSPENDING] token="+id,
				"GetSecretValue",
				"GetSecretValue stage=AWSPENDING",
				"DescribeSecret", // Staged
				"DescribeSecret", // Promote: who is AWSCURRENT
				"UpdateSecretVersionStage AWSCURRENT move="+v+" remove="+old2,
				"UpdateSecretVersionStage AWSPENDING remove="+v,
				"GetSecretValue",
			)
			if md, err := b.Describe(ctx, ref); err != nil || md.Version != v {
				t.Fatalf("describe after promote: %+v %v", md, err)
			}
		}},
		{"Stage twice with one token makes one version", func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
			for i := range 2 {
				v, err := b.Stage(ctx, field, []byte("pw-2"), token)
				if err != nil || v != id {
					t.Fatalf("stage %d: %q %v, want %s", i, v, err, id)
				}
			}
			// A resumed rotation that generated another value: AWS answers
			// ResourceExistsException, the version staged first stays.
			if v, err := b.Stage(ctx, field, []byte("pw-3"), token); err != nil || v != id {
				t.Fatalf("stage with another value: %q %v, want %s", v, err, id)
			}
			if n := len(f.Versions("prod/db")); n != 3 {
				t.Fatalf("%d versions at AWS, want 3 (2 seeded + 1 staged)", n)
			}
			if got := pendingValue(t, f); got["password"] != "pw-2" {
				t.Fatalf("staged password %v, want pw-2", got["password"])
			}
			puts := 0
			for _, c := range f.Calls() {
				if c.Op == "PutSecretValue" {
					puts++
					if c.ClientRequestToken != id || !slices.Equal(c.VersionStages, []string{"AWSPENDING"}) {
						t.Fatalf("put %s", c)
					}
				}
			}
			if puts != 3 {
				t.Fatalf("%d PutSecretValue calls, want 3", puts)
			}
			wantStages(t, f, map[string][]string{id: {"AWSPENDING"}, old2: {"AWSCURRENT"}, old1: {"AWSPREVIOUS"}})
		}},
		{"Staged before and after Stage", func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
			f.ResetCalls()
			if s, err := b.Staged(ctx, ref, token); err != nil || s != "" {
				t.Fatalf("staged before stage: %q %v", s, err)
			}
			wantCalls(t, f, "DescribeSecret") // looking writes nothing
			if _, err := b.Stage(ctx, ref, []byte(newValue), token); err != nil {
				t.Fatal(err)
			}
			if s, err := b.Staged(ctx, ref, token); err != nil || s != id {
				t.Fatalf("staged after stage: %q %v, want %s", s, err, id)
			}
			if s, err := b.Staged(ctx, ref, "another-rotation"); err != nil || s != "" {
				t.Fatalf("staged under another token: %q %v", s, err)
			}
			// Promoted, it is still found: a rotation that stopped after
			// promoting adopts it, and its Promote is a no-op.
			if err := b.Promote(ctx, ref, id); err != nil {
				t.Fatal(err)
			}
			if s, err := b.Staged(ctx, ref, token); err != nil || s != id {
				t.Fatalf("staged after promote: %q %v, want %s", s, err, id)
			}
			// Another token staged: AWSPENDING moves to its version; the
			// first keeps the labels it has.
			other, err := b.Stage(ctx, ref, []byte(`{"password":"pw-9"}`), "another-rotation")
			if err != nil {
				t.Fatal(err)
			}
			wantStages(t, f, map[string][]string{other: {"AWSPENDING"}, id: {"AWSCURRENT"}, old2: {"AWSPREVIOUS"}})
			if s, err := b.Staged(ctx, ref, "another-rotation"); err != nil || s != other {
				t.Fatalf("staged: %q %v, want %s", s, err, other)
			}
		}},
		{"Promote of the current version is a no-op", func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
			f.ResetCalls()
			if err := b.Promote(ctx, ref, old2); err != nil {
				t.Fatal(err)
			}
			wantCalls(t, f, "DescribeSecret")
			if _, err := b.Stage(ctx, ref, []byte(newValue), token); err != nil {
				t.Fatal(err)
			}
			if err := b.Promote(ctx, ref, id); err != nil {
				t.Fatal(err)
			}
			f.ResetCalls()
			if err := b.Promote(ctx, ref, id); err != nil {
				t.Fatal(err)
			}
			wantCalls(t, f, "DescribeSecret")
			wantStages(t, f, map[string][]string{id: {"AWSCURRENT"}, old2: {"AWSPREVIOUS"}})
		}},
		{"Promote interrupted after AWSCURRENT moved removes AWSPENDING only", func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
			if _, err := b.Stage(ctx, ref, []byte(newValue), token); err != nil {
				t.Fatal(err)
			}
			f.Attach("prod/db", "AWSCURRENT", id) // the first half of a Promote that then stopped
			wantStages(t, f, map[string][]string{id: {"AWSPENDING", "AWSCURRENT"}, old2: {"AWSPREVIOUS"}})
			f.ResetCalls()
			if err := b.Promote(ctx, ref, id); err != nil {
				t.Fatal(err)
			}
			wantCalls(t, f, "DescribeSecret", "UpdateSecretVersionStage AWSPENDING remove="+id)
			wantStages(t, f, map[string][]string{id: {"AWSCURRENT"}, old2: {"AWSPREVIOUS"}})
		}},
		{"Promote of the previous version rolls back", func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
			if _, err := b.Stage(ctx, ref, []byte(newValue), token); err != nil {
				t.Fatal(err)
			}
			if err := b.Promote(ctx, ref, id); err != nil {
				t.Fatal(err)
			}
			f.ResetCalls()
			if err := b.Promote(ctx, ref, old2); err != nil {
				t.Fatal(err)
			}
			wantCalls(t, f, "DescribeSecret", "UpdateSecretVersionStage AWSCURRENT move="+old2+" remove="+id)
			wantStages(t, f, map[string][]string{old2: {"AWSCURRENT"}, id: {"AWSPREVIOUS"}})
			if got, err := b.Read(ctx, field); err != nil || string(got.Data) != "pw-1" || got.Version != old2 {
				t.Fatalf("read after rollback: %q %s %v", got.Data, got.Version, err)
			}
		}},
		{"Stage with a field keeps the other keys", func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
			if _, err := b.Stage(ctx, field, []byte("pw-2"), token); err != nil {
				t.Fatal(err)
			}
			want := map[string]any{"password": "pw-2", "user": "app", "port": json.Number("5432"), "id": json.Number("12345678901234567890")}
			if got := pendingValue(t, f); !reflect.DeepEqual(got, want) {
				t.Fatalf("staged document %v, want %v", got, want)
			}
			if got, err := b.Read(ctx, secretref.MustParse("aws-sm://prod/db#password")); err != nil || string(got.Data) != "pw-1" {
				t.Fatalf("current password changed at Stage: %q %v", got.Data, err)
			}
		}},
		{"AWSCURRENT moved by another writer during Promote", func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
			if _, err := b.Stage(ctx, ref, []byte(newValue), token); err != nil {
				t.Fatal(err)
			}
			f.OnCall(func(c awsfake.Call) { // before the call is served
				if c.Op == "UpdateSecretVersionStage" {
					f.Attach("prod/db", "AWSCURRENT", old1)
					f.OnCall(nil)
				}
			})
			err := b.Promote(ctx, ref, id)
			if err == nil || !strings.Contains(err.Error(), "InvalidParameterException") {
				t.Fatalf("promote after AWSCURRENT moved: %v, want AWS's refusal", err)
			}
			// AWS refused the move: nothing promoted, the staged version
			// still pending.
			wantStages(t, f, map[string][]string{id: {"AWSPENDING"}, old1: {"AWSCURRENT"}, old2: {"AWSPREVIOUS"}})
		}},
		{"bad input and backend errors", func(t *testing.T, f *awsfake.Server, b *awssm.Backend, old1, old2 string) {
			errCases := []struct {
				name   string
				fault  string // operation the fake fails
				status int
				code   string
				op     func() error
				want   error
				calls  bool // whether the backend may call AWS at all
			}{
				{name: "Stage ?version=", want: backend.ErrInvalidValue, op: func() error {
					_, err := b.Stage(ctx, secretref.MustParse("aws-sm://prod/db?version="+old2), []byte(newValue), token)
					return err
				}},
				{name: "Stage ?stage=", want: backend.ErrInvalidValue, op: func() error {
					_, err := b.Stage(ctx, secretref.MustParse("aws-sm://prod/db?stage=AWSCURRENT#password"), []byte("pw-2"), token)
					return err
				}},
				{name: "Stage without a token", want: backend.ErrInvalidValue, op: func() error {
					_, err := b.Stage(ctx, ref, []byte(newValue), "")
					return err
				}},
				{name: "Stage through a JSON pointer", want: backend.ErrInvalidValue, op: func() error {
					_, err := b.Stage(ctx, secretref.MustParse("aws-sm://prod/db#/a/b"), []byte("pw-2"), token)
					return err
				}},
				{name: "Promote ?stage=", want: backend.ErrInvalidValue, op: func() error {
					return b.Promote(ctx, secretref.MustParse("aws-sm://prod/db?stage=AWSPENDING"), old1)
				}},
				{name: "Promote of an unknown version", want: backend.ErrNotFound, calls: true, op: func() error {
					return b.Promote(ctx, ref, versionIDFor("never-staged"))
				}},
				{name: "Promote on a missing secret", want: backend.ErrNotFound, calls: true, op: func() error {
					return b.Promote(ctx, secretref.MustParse("aws-sm://prod/missing"), old2)
				}},
				{name: "Stage on a missing secret", want: backend.ErrNotFound, calls: true, op: func() error {
					_, err := b.Stage(ctx, secretref.MustParse("aws-sm://prod/missing"), []byte(newValue), token)
					return err
				}},
				{name: "Stage, PutSecretValue answers 500", fault: "PutSecretValue", status: http.StatusInternalServerError, code: "InternalServiceError",
					want: backend.ErrUnavailable, calls: true, op: func() error {
						_, err := b.Stage(ctx, ref, []byte(newValue), token)
						return err
					}},
				{name: "Stage with a field, GetSecretValue answers 500", fault: "GetSecretValue", status: http.StatusInternalServerError, code: "InternalServiceError",
					want: backend.ErrUnavailable, calls: true, op: func() error {
						_, err := b.Stage(ctx, field, []byte("pw-2"), token)
						return err
					}},
				{name: "Stage, PutSecretValue denied", fault: "PutSecretValue", status: http.StatusBadRequest, code: "AccessDeniedException",
					want: backend.ErrPermissionDenied, calls: true, op: func() error {
						_, err := b.Stage(ctx, ref, []byte(newValue), token)
						return err
					}},
				{name: "Staged, DescribeSecret denied", fault: "DescribeSecret", status: http.StatusBadRequest, code: "AccessDeniedException",
					want: backend.ErrPermissionDenied, calls: true, op: func() error {
						_, err := b.Staged(ctx, ref, token)
						return err
					}},
				{name: "Promote, DescribeSecret answers 503", fault: "DescribeSecret", status: http.StatusServiceUnavailable, code: "ServiceUnavailable",
					want: backend.ErrUnavailable, calls: true, op: func() error {
						return b.Promote(ctx, ref, old1)
					}},
				{name: "Promote, UpdateSecretVersionStage denied", fault: "UpdateSecretVersionStage", status: http.StatusBadRequest, code: "AccessDeniedException",
					want: backend.ErrPermissionDenied, calls: true, op: func() error {
						return b.Promote(ctx, ref, old1)
					}},
			}
			for _, tc := range errCases {
				t.Run(tc.name, func(t *testing.T) {
					before := f.Versions("prod/db")
					if tc.fault != "" {
						f.Fail(tc.fault, tc.status, tc.code)
						defer f.Fail(tc.fault, 0, "")
					}
					f.ResetCalls()
					err := tc.op()
					if !errors.Is(err, tc.want) {
						t.Fatalf("got %v, want %v", err, tc.want)
					}
					for _, v := range []string{"pw-0", "pw-1", "pw-2", "5432"} {
						if strings.Contains(err.Error(), v) {
							t.Fatalf("error repeats a value: %v", err)
						}
					}
					if n := len(f.Calls()); !tc.calls && n != 0 {
						t.Fatalf("refused input still made %d calls: %v", n, f.Calls())
					}
					if after := f.Versions("prod/db"); !reflect.DeepEqual(before, after) {
						t.Fatalf("a failed call changed the secret: %v -> %v", before, after)
					}
				})
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, b, old1, old2 := newStagingBackend(t)
			tc.run(t, f, b, old1, old2)
		})
	}
}

// Invalidate takes every label off a version, so that no stage names it;
// the current version is refused.
func TestInvalidate(t *testing.T) {
	f, b, old1, old2 := newStagingBackend(t)
	ctx := context.Background()
	ref := secretref.MustParse("aws-sm://prod/db")
	if err := b.Invalidate(ctx, ref, old2); !errors.Is(err, backend.ErrInvalidValue) {
		t.Fatalf("invalidate the current version: %v", err)
	}
	if err := b.Invalidate(ctx, ref, old1); err != nil {
		t.Fatal(err)
	}
	if got := f.Stages("prod/db"); len(got[old1]) != 0 || !slices.Equal(got[old2], []string{"AWSCURRENT"}) {
		t.Fatalf("stages after invalidating %s: %v", old1, got)
	}
	if err := b.Invalidate(ctx, ref, old1); err != nil {
		t.Fatalf("invalidate twice: %v", err)
	}
	if _, err := b.Read(ctx, ref); err != nil {
		t.Fatalf("the current version after: %v", err)
	}
}
