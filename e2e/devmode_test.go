package e2e_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The README tour: start the dev server, register a secret, store a
// configuration that points at it, restart, and find everything again.
func TestDevModeTourAndRestart(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startDevServer(t, dataDir)
	if !strings.Contains(srv.out.String(), "secretplane secret put") {
		t.Fatalf("dev server did not print next steps:\n%s", srv.out.String())
	}

	out := mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password", "--owner", "team-payments")
	if !strings.Contains(out, "payments/db created") {
		t.Fatalf("put: %s", out)
	}
	out = mustCLI(t, dataDir, "secret", "get", "payments/db")
	for _, want := range []string{"vault://secret/payments/db#password", "team-payments"} {
		if !strings.Contains(out, want) {
			t.Fatalf("get output lacks %q:\n%s", want, out)
		}
	}
	// Values in the embedded backend, registered, granted to the service.
	for ref, value := range map[string]string{"local://payments/db#password": "pw-1", "local://payments/stripe#api_key": "sk-1"} {
		if _, errOut, err := cliStdin(t, dataDir, value, "dev", "local-put", ref); err != nil {
			t.Fatalf("local-put: %v %s", err, errOut)
		}
	}
	mustCLI(t, dataDir, "secret", "put", "payments/db-local", "--ref", "local://payments/db#password")
	mustCLI(t, dataDir, "secret", "put", "payments/stripe", "--ref", "local://payments/stripe#api_key")
	if _, errOut, err := cliStdin(t, dataDir, "policies:\n  - name: api-read\n    subject: spiffe://secretplane.test/workload/payments-api\n    verbs: [read]\n    objects: [\"payments/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
		t.Fatalf("policy: %v %s", err, errOut)
	}
	doc := filepath.Join(t.TempDir(), "api.yaml")
	if err := os.WriteFile(doc, []byte(`name: payments/api
identity: spiffe://secretplane.test/workload/payments-api
labels: {team: payments}
entries:
  DB_HOST: db.internal.example.com
  DB_PASSWORD: local://payments/db#password
  STRIPE_KEY: {ref: "local://payments/stripe#api_key"}
  TIMEOUT: 30s
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := mustCLI(t, dataDir, "config", "put", "-f", doc, "--dry-run"); !strings.Contains(out, "dry run") {
		t.Fatalf("dry run: %s", out)
	}
	if _, errOut, err := cli(t, dataDir, "config", "get", "payments/api"); err == nil || !strings.Contains(errOut, "NotFound") {
		t.Fatalf("dry run stored the document: %v %s", err, errOut)
	}
	mustCLI(t, dataDir, "config", "put", "-f", doc)
	out = mustCLI(t, dataDir, "config", "get", "payments/api", "-o", "json")
	for _, want := range []string{`"ref": "local://payments/db#password"`, `"ref": "local://payments/stripe#api_key"`, `"literal": "30s"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("config get lacks %s:\n%s", want, out)
		}
	}
	// A ref no backend can see is refused, naming the entry.
	if _, errOut, err := cliStdin(t, dataDir, "name: payments/api\nentries:\n  X: vault://secret/payments/db#password\n", "config", "put", "-f", "-"); err == nil || !strings.Contains(errOut, "FailedPrecondition") || !strings.Contains(errOut, "config.entries[0].ref") {
		t.Fatalf("invisible ref: %v %s", err, errOut)
	}
	// The JSON output is valid input (round trip through stdin).
	if _, errOut, err := cliStdin(t, dataDir, out, "config", "put", "-f", "-"); err != nil {
		t.Fatalf("config put from get -o json: %v: %s", err, errOut)
	}

	// A bad ref is refused by the CLI with the field named.
	_, errOut, err := cli(t, dataDir, "secret", "put", "payments/x", "--ref", "vault://secret/../etc#p")
	if err == nil || !strings.Contains(errOut, "secret.ref") {
		t.Fatalf("bad ref: err=%v stderr=%s", err, errOut)
	}

	srv.stop(t)
	startDevServer(t, dataDir)
	out = mustCLI(t, dataDir, "secret", "list")
	if !strings.Contains(out, "payments/db") || !strings.Contains(out, "vault://secret/payments/db#password") {
		t.Fatalf("after restart, list lacks the secret:\n%s", out)
	}
	out = mustCLI(t, dataDir, "config", "list")
	if !strings.Contains(out, "payments/api") {
		t.Fatalf("after restart, config list lacks the document:\n%s", out)
	}

	// A workload identity from the dev CA is not an admin.
	svidDir := filepath.Join(t.TempDir(), "svid")
	mustCLI(t, dataDir, "dev", "issue", "payments-api", "--out", svidDir)
	_, errOut, err = cli(t, dataDir, "--cert", filepath.Join(svidDir, "svid.pem"), "--key", filepath.Join(svidDir, "svid_key.pem"), "--bundle", filepath.Join(svidDir, "bundle.pem"), "secret", "list")
	if err == nil || !strings.Contains(errOut, "PermissionDenied") {
		t.Fatalf("workload listing secrets: err=%v stderr=%s", err, errOut)
	}
}
