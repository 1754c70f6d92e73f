package rotation_test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/secretplane/secretplane/client"
	"github.com/secretplane/secretplane/controlplane/backend/awssm"
	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/awsfake"
	"github.com/secretplane/secretplane/internal/envoysim"
	"github.com/secretplane/secretplane/internal/server"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// awsFixture is the server fixture with an aws-sm backend pointed at the
// protocol-level Secrets Manager fake.
type awsFixture struct {
	*fixture
	fake *awsfake.Server
	sm   *awssm.Backend // the backend the server uses, for a test to act as a crashed run would
}

const awsSecret = "payments/db" // its name in secretplane and at AWS

func newAWSFixture(t *testing.T, tune func(*server.Config)) *awsFixture {
	t.Helper()
	awsfake.Credentials(t)
	t.Setenv("AWS_MAX_ATTEMPTS", "1") // an injected fault is answered, not retried
	fake, srv := awsfake.New(t)
	sm, err := awssm.New(context.Background(), awssm.Config{Region: "us-east-1", Endpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *server.Config) {
		c.Backends.Extra = append(c.Backends.Extra, sm)
		if tune != nil {
			tune(c)
		}
	})
	return &awsFixture{fixture: f, fake: fake, sm: sm}
}

// seedAWS puts value as the first (AWSCURRENT) version of the secret at
// the fake, binds the secret to ref, lets the apps read and watch it, and
// returns the version.
func (a *awsFixture) seedAWS(ref, value string) string {
	a.t.Helper()
	ctx := context.Background()
	v := a.fake.Put(awsSecret, value)
	admin := spv1.NewAdminServiceClient(a.dial("/ops/admin"))
	if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: awsSecret, Ref: ref}}); err != nil {
		a.t.Fatal(err)
	}
	if _, err := a.srv.Store().PutPolicy(ctx, store.Policy{Name: "apps", Subject: "spiffe://" + td + "/app/*", Verbs: []string{"read", "watch"}, Objects: []string{"payments/*"}}, store.Precondition{}); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		a.t.Fatal(err)
	}
	if err := a.srv.Policy().Load(ctx); err != nil {
		a.t.Fatal(err)
	}
	return v
}

// writes is the fake's record of the calls that changed versions or
// labels, in order (the reads the cache and the steps make in between
// are left out: how many there are is not the protocol).
func (a *awsFixture) writes() []string {
	var out []string
	for _, c := range a.fake.Calls() {
		if c.Writes() {
			out = append(out, c.String())
		}
	}
	return out
}

func (a *awsFixture) wantWrites(t *testing.T, want ...string) {
	t.Helper()
	if got := a.writes(); !slices.Equal(got, want) {
		t.Fatalf("writes at AWS:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func (a *awsFixture) wantStages(t *testing.T, want map[string][]string) {
	t.Helper()
	got := a.fake.Stages(awsSecret)
	for _, ss := range got {
		slices.Sort(ss)
	}
	if !maps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("labels at AWS %v, want %v", got, want)
	}
}

// valueOf is the document or string of version id at the fake, as the
// ref (whole value, or #password) selects it.
func (a *awsFixture) valueOf(t *testing.T, ref, id string) string {
	t.Helper()
	for _, v := range a.fake.Versions(awsSecret) {
		if v.ID != id {
			continue
		}
		if !strings.HasSuffix(ref, "#password") {
			return v.Value
		}
		var doc map[string]string
		if err := json.Unmarshal([]byte(v.Value), &doc); err != nil {
			t.Fatalf("version %s is not a JSON document: %v", id, err)
		}
		return doc["password"]
	}
	t.Fatalf("no version %s at AWS", id)
	return ""
}

// holds waits until the watcher holds value (any when "") at version (any
// when "").
func holds(t *testing.T, w *client.Watcher, value, version string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := w.Get(awsSecret)
		if (value == "" || string(got.Value) == value) && (version == "" || got.Version == version) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watcher holds version %s (%d bytes), want %s", got.Version, len(got.Value), version)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// applied records the versions a Watch consumer's hook was called with,
// in order.
type applied struct {
	mu       sync.Mutex
	versions []string
}

func (a *applied) get() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.versions)
}

// watch is a Watch consumer through the client library whose hook records
// every version it is given.
func (a *awsFixture) watch(ctx context.Context, path string) (*client.Watcher, *applied) {
	a.t.Helper()
	c, err := client.New(ctx, client.Config{Address: a.srv.Addr(), ServerID: a.id, Source: a.source(path)})
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { c.Close() })
	rec := &applied{}
	w, err := c.Watch(ctx, []string{awsSecret}, func(_ context.Context, _, s client.Secret) error {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rec.versions = append(rec.versions, s.Version)
		return nil
	})
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(w.Close)
	return w, rec
}

// A manual rotation of an aws-sm secret stages the new value under
// AWSPENDING with a ClientRequestToken derived from the rotation's id,
// serves nothing new while pending, then moves AWSCURRENT to it (AWS keeps
// the old one as AWSPREVIOUS) and removes AWSPENDING; the Watch consumer
// ends on the new version, and AWS has exactly one new version.
func TestAWSRotationStagesThenPromotes(t *testing.T) {
	for _, tc := range []struct {
		name, ref, seed, old string // old: the value the ref selects from seed
	}{
		{"whole value", "aws-sm://" + awsSecret, "initial-value", "initial-value"},
		{"JSON key", "aws-sm://" + awsSecret + "#password", `{"password":"initial-value","user":"app"}`, "initial-value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAWSFixture(t, nil)
			old := a.seedAWS(tc.ref, tc.seed)
			ctx := context.Background()
			w, rec := a.watch(ctx, "/app/one")
			holds(t, w, tc.old, old)

			// What the consumer has when the rotation moves AWSCURRENT:
			// the staged version is not served while pending. (Asked of
			// the watcher, not by a Resolve: a resolving identity would be
			// one more consumer for the rotation to wait for.)
			type seen struct {
				watched client.Secret
				applied []string
				stages  map[string][]string
			}
			var (
				mu     sync.Mutex
				atMove *seen
			)
			a.fake.OnCall(func(c awsfake.Call) {
				if c.Op != "UpdateSecretVersionStage" || c.VersionStage != "AWSCURRENT" {
					return
				}
				s := &seen{stages: a.fake.Stages(awsSecret), applied: rec.get()}
				s.watched, _ = w.Get(awsSecret)
				mu.Lock()
				defer mu.Unlock()
				if atMove == nil {
					atMove = s
				}
			})
			a.fake.ResetCalls()
			m := a.srv.Rotations()
			r, err := m.Start(ctx, rotation.StartRequest{Secret: awsSecret, Actor: "spiffe://" + td + "/ops/admin"})
			if err != nil {
				t.Fatal(err)
			}
			done := wait(t, m, r.ID)
			staged := awssm.StagedVersionID(r.ID)
			if done.State != rotation.Completed || done.FromVersion != old || done.ToVersion != staged {
				t.Fatalf("rotation %+v, want completed from %s to %s", done, old, staged)
			}
			a.wantWrites(t,
				"PutSecretValue stages=[AWSPENDING] token="+staged,
				"UpdateSecretVersionStage AWSCURRENT move="+staged+" remove="+old,
				"UpdateSecretVersionStage AWSPENDING remove="+staged,
			)
			mu.Lock()
			before := atMove
			mu.Unlock()
			switch {
			case before == nil:
				t.Fatal("AWSCURRENT was never moved")
			case !maps.EqualFunc(before.stages, map[string][]string{old: {"AWSCURRENT"}, staged: {"AWSPENDING"}}, slices.Equal):
				t.Fatalf("labels before the promotion %v, want %s AWSCURRENT and %s AWSPENDING", before.stages, old, staged)
			case before.watched.Version != old || string(before.watched.Value) != tc.old || len(before.applied) != 0:
				t.Fatalf("before the promotion the watcher had version %s (given %v), want %s only", before.watched.Version, before.applied, old)
			}
			a.wantStages(t, map[string][]string{staged: {"AWSCURRENT"}, old: {"AWSPREVIOUS"}})
			if n := len(a.fake.Versions(awsSecret)); n != 2 {
				t.Fatalf("%d versions at AWS, want 2 (the seeded one and one new)", n)
			}
			nu := a.valueOf(t, tc.ref, staged)
			if nu == tc.old || len(nu) != 32 {
				t.Fatalf("the new value is %d bytes, the same as the old: %v", len(nu), nu == tc.old)
			}
			if strings.Contains(tc.ref, "#") {
				var doc map[string]string
				_ = json.Unmarshal([]byte(a.fake.Versions(awsSecret)[1].Value), &doc)
				if doc["user"] != "app" {
					t.Fatalf("the staged document lost its other keys: %v", slices.Collect(maps.Keys(doc)))
				}
			}
			holds(t, w, nu, staged)
			if got := rec.get(); !slices.Equal(got, []string{staged}) {
				t.Fatalf("the watcher's hook was given versions %v, want only %s", got, staged)
			}
		})
	}
}

// A server that stopped mid-rotation resumes it at start and adopts the
// version it staged under the rotation's id, whether it stopped before
// recording it (pending) or after (propagating, not promoted): AWS gets no
// second PutSecretValue and has exactly one new version.
func TestAWSRotationResumesAdoptingTheStagedVersion(t *testing.T) {
	const ref = "aws-sm://" + awsSecret
	for _, tc := range []struct {
		name     string
		state    string
		recorded bool // whether the record names the staged version
	}{
		{"staged, not recorded", rotation.Pending, false},
		{"recorded, not promoted", rotation.Propagating, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAWSFixture(t, nil)
			old := a.seedAWS(ref, "initial-value")
			ctx := context.Background()
			r := store.Rotation{ID: "rot-resume", Secret: awsSecret, Ref: ref, Method: "random", State: tc.state, FromVersion: old}
			// As the crashed run did: the value staged under the rotation's id.
			staged, err := a.sm.Stage(ctx, secretref.MustParse(ref), []byte("staged-before-the-crash"), r.ID)
			if err != nil {
				t.Fatal(err)
			}
			if tc.recorded {
				r.ToVersion = staged
			}
			if _, err := a.srv.Store().CreateRotation(ctx, r); err != nil {
				t.Fatal(err)
			}
			a.fake.ResetCalls()
			a.stop()
			a.start()
			w, _ := a.watch(ctx, "/app/one")
			done := wait(t, a.srv.Rotations(), r.ID)
			if done.State != rotation.Completed || done.ToVersion != staged {
				t.Fatalf("resumed rotation %+v, want completed to %s", done, staged)
			}
			a.wantWrites(t,
				"UpdateSecretVersionStage AWSCURRENT move="+staged+" remove="+old,
				"UpdateSecretVersionStage AWSPENDING remove="+staged,
			)
			a.wantStages(t, map[string][]string{staged: {"AWSCURRENT"}, old: {"AWSPREVIOUS"}})
			if n := len(a.fake.Versions(awsSecret)); n != 2 {
				t.Fatalf("%d versions at AWS, want 2: a second version was staged", n)
			}
			holds(t, w, "staged-before-the-crash", staged)
		})
	}
}

// A rotation whose new version is taken back puts AWSCURRENT back on the
// original version (the rotated one AWSPREVIOUS, never deleted), and the
// Watch consumer back on the original value at its own version: at the
// deadline with auto-rollback (a consumer never acknowledged), by Cancel
// while verifying, and by Rollback after completion.
func TestAWSRotationRollsBackByPromotingTheOriginal(t *testing.T) {
	const ref = "aws-sm://" + awsSecret
	for _, tc := range []struct {
		name  string
		tune  func(*server.Config)
		stuck bool // an SDS consumer seen, then never acknowledging
		// act takes the rotation back and returns it as it ends.
		act func(t *testing.T, m *rotation.Manager, id string, w *client.Watcher) store.Rotation
	}{
		{"auto-rollback at the deadline", func(c *server.Config) { c.Rotation.AutoRollback = true }, true,
			func(t *testing.T, m *rotation.Manager, id string, w *client.Watcher) store.Rotation {
				done := wait(t, m, id, rotation.RolledBack)
				if !strings.Contains(done.Detail, "deadline passed; not acknowledged by spiffe://"+td+"/app/stuck (sds, node stuck-1)") {
					t.Fatalf("detail %q does not name the consumer that lagged", done.Detail)
				}
				return done
			}},
		{"cancel while verifying", func(c *server.Config) { c.Rotation.Deadline = time.Minute }, true,
			func(t *testing.T, m *rotation.Manager, id string, w *client.Watcher) store.Rotation {
				wait(t, m, id, rotation.Verifying)
				holds(t, w, "", awssm.StagedVersionID(id)) // it has the new version: cancelling takes it back
				done, err := m.Cancel(context.Background(), id, "spiffe://"+td+"/ops/admin")
				if err != nil {
					t.Fatal(err)
				}
				return done
			}},
		{"rollback after completion", nil, false,
			func(t *testing.T, m *rotation.Manager, id string, w *client.Watcher) store.Rotation {
				if done := wait(t, m, id); done.State != rotation.Completed {
					t.Fatalf("rotation %+v", done)
				}
				done, err := m.Rollback(context.Background(), id, "spiffe://"+td+"/ops/admin")
				if err != nil {
					t.Fatal(err)
				}
				return done
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAWSFixture(t, tc.tune)
			old := a.seedAWS(ref, "initial-value")
			ctx := context.Background()
			w, rec := a.watch(ctx, "/app/one")
			holds(t, w, "initial-value", old)
			if tc.stuck {
				stuck := envoysim.New(a.dial("/app/stuck"), envoysim.Options{Mode: envoysim.SotW, NodeID: "stuck-1"})
				stuck.Subscribe(ctx, awsSecret)
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := stuck.Wait(wctx, awsSecret, nil)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				stuck.Close() // seen, never acknowledges what follows
			}
			a.fake.ResetCalls()
			m := a.srv.Rotations()
			r, err := m.Start(ctx, rotation.StartRequest{Secret: awsSecret})
			if err != nil {
				t.Fatal(err)
			}
			done := tc.act(t, m, r.ID, w)
			staged := awssm.StagedVersionID(r.ID)
			if done.State != rotation.RolledBack || done.ToVersion != staged || !strings.HasSuffix(done.Detail, "current again as "+old) {
				t.Fatalf("rotation %+v, want rolled back to %s", done, old)
			}
			a.wantWrites(t,
				"PutSecretValue stages=[AWSPENDING] token="+staged,
				"UpdateSecretVersionStage AWSCURRENT move="+staged+" remove="+old,
				"UpdateSecretVersionStage AWSPENDING remove="+staged,
				"UpdateSecretVersionStage AWSCURRENT move="+old+" remove="+staged,
			)
			a.wantStages(t, map[string][]string{old: {"AWSCURRENT"}, staged: {"AWSPREVIOUS"}})
			if n := len(a.fake.Versions(awsSecret)); n != 2 {
				t.Fatalf("%d versions at AWS, want 2: the rollback wrote a version", n)
			}
			holds(t, w, "initial-value", old)
			// Each once: the rollback refreshes before it unpins, so no
			// consumer is given the rotated value again from the cache.
			if got := rec.get(); !slices.Equal(got, []string{staged, old}) {
				t.Fatalf("the watcher's hook was given versions %v, want %s then %s", got, staged, old)
			}
		})
	}
}

// A rotation that AWS refuses in pending (PutSecretValue denied or
// failing, the look for a staged version denied) fails there, naming the
// step and AWS's error code: nothing is staged, the consumers keep the
// version they had, and the secret is served unpinned again (a next
// rotation starts, and completes once AWS accepts).
func TestAWSRotationRefusedInPending(t *testing.T) {
	const ref = "aws-sm://" + awsSecret
	a := newAWSFixture(t, func(c *server.Config) { c.Rotation.AutoRollback = true })
	old := a.seedAWS(ref, "initial-value")
	ctx := context.Background()
	w, rec := a.watch(ctx, "/app/one")
	holds(t, w, "initial-value", old)
	m := a.srv.Rotations()
	for _, tc := range []struct {
		name   string
		op     string
		status int
		code   string
		want   []string // in the rotation's detail
	}{
		{"PutSecretValue denied", "PutSecretValue", http.StatusBadRequest, "AccessDeniedException",
			[]string{"write the new version", "stage version", "AWSPENDING", "permission denied", "AccessDeniedException"}},
		{"PutSecretValue failing", "PutSecretValue", http.StatusInternalServerError, "InternalServiceError",
			[]string{"write the new version", "backend unavailable", "InternalServiceError"}},
		{"DescribeSecret denied", "DescribeSecret", http.StatusBadRequest, "AccessDeniedException",
			[]string{"look for a version staged before", "permission denied", "AccessDeniedException"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.fake.Fail(tc.op, tc.status, tc.code)
			defer a.fake.Fail(tc.op, 0, "")
			a.fake.ResetCalls()
			r, err := m.Start(ctx, rotation.StartRequest{Secret: awsSecret})
			if err != nil {
				t.Fatalf("start (after the last row's failure too): %v", err)
			}
			done := wait(t, m, r.ID)
			if done.State != rotation.Failed || done.ToVersion != "" || done.FromVersion != old {
				t.Fatalf("rotation %+v, want failed in pending with no new version", done)
			}
			for _, s := range tc.want {
				if !strings.Contains(done.Detail, s) {
					t.Fatalf("detail %q does not say %q", done.Detail, s)
				}
			}
			if got := a.fake.Stages(awsSecret); !maps.EqualFunc(got, map[string][]string{old: {"AWSCURRENT"}}, slices.Equal) || len(a.fake.Versions(awsSecret)) != 1 {
				t.Fatalf("AWS has %d versions labelled %v after a refused rotation, want only %s AWSCURRENT", len(a.fake.Versions(awsSecret)), got, old)
			}
			for _, c := range a.fake.Calls() {
				if c.Op == "UpdateSecretVersionStage" {
					t.Fatalf("a refused rotation still moved labels: %s", c)
				}
			}
			if got, _ := w.Get(awsSecret); got.Version != old || string(got.Value) != "initial-value" || len(rec.get()) != 0 {
				t.Fatalf("the watcher moved to version %s (its hook was given %v)", got.Version, rec.get())
			}
		})
	}
	// Not left pinned: a rotation starts (a pinned secret is refused as
	// bound to a fixed version) and completes.
	a.fake.ResetCalls()
	r, err := m.Start(ctx, rotation.StartRequest{Secret: awsSecret})
	if err != nil {
		t.Fatal(err)
	}
	done := wait(t, m, r.ID)
	staged := awssm.StagedVersionID(r.ID)
	if done.State != rotation.Completed || done.ToVersion != staged {
		t.Fatalf("rotation after the failures %+v", done)
	}
	a.wantStages(t, map[string][]string{staged: {"AWSCURRENT"}, old: {"AWSPREVIOUS"}})
	holds(t, w, a.valueOf(t, ref, staged), staged)
}

// AWS refusing the promotion (AWSCURRENT cannot be moved) fails the
// rotation in propagating, naming the step, and rolls it back (even
// without auto-rollback: nothing new was served); the secret is not left
// pinned: consumers keep what AWS has current, and the next rotation
// starts and completes.
func TestAWSRotationRefusedAtPromotion(t *testing.T) {
	const ref = "aws-sm://" + awsSecret
	a := newAWSFixture(t, nil)
	old := a.seedAWS(ref, "initial-value")
	ctx := context.Background()
	w, _ := a.watch(ctx, "/app/one")
	holds(t, w, "initial-value", old)
	m := a.srv.Rotations()
	a.fake.FailNext("UpdateSecretVersionStage", http.StatusBadRequest, "AccessDeniedException")
	r, err := m.Start(ctx, rotation.StartRequest{Secret: awsSecret})
	if err != nil {
		t.Fatal(err)
	}
	done := wait(t, m, r.ID, rotation.RolledBack)
	if !strings.Contains(done.Detail, "make the new version current") || !strings.Contains(done.Detail, "AccessDeniedException") {
		t.Fatalf("rotation %+v, want failed at the promotion and rolled back", done)
	}
	holds(t, w, "initial-value", old)
	next, err := m.Start(ctx, rotation.StartRequest{Secret: awsSecret})
	if err != nil {
		t.Fatalf("the secret was left pinned: %v", err)
	}
	if done := wait(t, m, next.ID); done.State != rotation.Completed {
		t.Fatalf("next rotation %+v", done)
	}
	a.wantStages(t, map[string][]string{awssm.StagedVersionID(next.ID): {"AWSCURRENT"}, old: {"AWSPREVIOUS"}})
}
