package e2e_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/client"
	"github.com/secretplane/secretplane/e2e/testenv"
)

// A new version written to Vault directly is detected by the real binary
// and pushed to a service watching through the client library within the
// refresh interval; the rotation hook fires exactly once, and the service's
// acknowledgement shows in `secret consumers`.
func TestVaultRotationReachesWatchingClient(t *testing.T) {
	v := testenv.StartVault(t)
	root := v.RootClient(t)
	ctx := context.Background()
	put := func(pw string) {
		t.Helper()
		if _, err := root.KVv2("secret").Put(ctx, "payments/db", map[string]any{"password": pw}); err != nil {
			t.Fatal(err)
		}
	}
	put("rot-pw-one")
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	const ttl = 2 * time.Second // values refresh at 0.75 x TTL +- 10%
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startDevServer(t, dataDir, "--vault-addr", v.Addr, "--vault-token-file", tokenFile, "--cache-ttl", ttl.String())
	mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password")
	if _, errOut, err := cliStdin(t, dataDir, "policies:\n  - name: api-watch\n    subject: spiffe://secretplane.test/workload/payments-api\n    verbs: [read, watch]\n    objects: [\"payments/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
		t.Fatalf("policy: %v %s", err, errOut)
	}
	svid := filepath.Join(t.TempDir(), "svid")
	mustCLI(t, dataDir, "dev", "issue", "payments-api", "--out", svid)
	ep := readDevEndpoint(t, dataDir)
	c, err := client.New(ctx, client.Config{Address: ep.Address, ServerID: spiffeid.RequireFromString(ep.ServerID),
		CertFile: filepath.Join(svid, "svid.pem"), KeyFile: filepath.Join(svid, "svid_key.pem"), BundleFile: filepath.Join(svid, "bundle.pem")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	var (
		mu    sync.Mutex
		calls []string
	)
	fired := make(chan time.Time, 10)
	w, err := c.Watch(ctx, []string{"payments/db"}, func(_ context.Context, old, new client.Secret) error {
		mu.Lock()
		calls = append(calls, string(old.Value)+" -> "+string(new.Value)+" (v"+new.Version+")")
		mu.Unlock()
		fired <- time.Now()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if cur, _ := w.Get("payments/db"); string(cur.Value) != "rot-pw-one" || cur.Version != "1" {
		t.Fatalf("initial: %+v", cur)
	}

	put("rot-pw-two")
	written := time.Now()
	select {
	case at := <-fired:
		took := at.Sub(written)
		t.Logf("Vault write -> rotation hook: %v (refresh interval 0.75 x %v +- 10%%)", took.Round(time.Millisecond), ttl)
		if took > ttl {
			t.Fatalf("the new version took %v, longer than the refresh interval", took)
		}
	case <-time.After(4 * ttl):
		t.Fatalf("no rotation within %v\n%s", 4*ttl, srv.out.String())
	}
	time.Sleep(3 * ttl) // several more refreshes
	mu.Lock()
	got := append([]string(nil), calls...)
	mu.Unlock()
	if len(got) != 1 || got[0] != "rot-pw-one -> rot-pw-two (v2)" {
		t.Fatalf("hook calls: %q", got)
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		out := mustCLI(t, dataDir, "secret", "consumers", "payments/db")
		if strings.Contains(out, "spiffe://secretplane.test/workload/payments-api") && strings.Contains(out, "watch") && strings.Contains(out, " 2 ") {
			if strings.Contains(out, "rot-pw") {
				t.Fatal("consumers output carries a value")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumers:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if strings.Contains(srv.out.String(), "rot-pw") {
		t.Fatal("a value reached the server's logs")
	}
}
