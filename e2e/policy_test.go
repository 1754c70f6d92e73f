package e2e_test

import (
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	_ "modernc.org/sqlite"
)

// Policies through the CLI: apply, list, explain; a workload granted admin
// on its team's prefix manages exactly that; every decision is in the audit
// log, and `audit verify` catches tampering with the database.
func TestPoliciesAndAuditThroughTheCLI(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startDevServer(t, dataDir)
	root := filepath.Join("..", "docs", "examples", "policies.yaml")
	out := mustCLI(t, dataDir, "policy", "apply", "-f", root)
	if strings.Count(out, "created") != 4 {
		t.Fatalf("apply: %s", out)
	}
	out = mustCLI(t, dataDir, "policy", "list")
	for _, want := range []string{"payments-api-read", "payments-team-admin", "gateway-tls"} {
		if !strings.Contains(out, want) {
			t.Fatalf("list lacks %s:\n%s", want, out)
		}
	}
	out = mustCLI(t, dataDir, "policy", "explain", "spiffe://secretplane.test/workload/payments-api", "payments/db")
	if !strings.Contains(out, `granted by policy "payments-api-read"`) {
		t.Fatalf("explain: %s", out)
	}
	out = mustCLI(t, dataDir, "policy", "explain", "spiffe://secretplane.test/workload/payments-api", "billing/db")
	if !strings.Contains(out, "denied: no policy grants") {
		t.Fatalf("explain deny: %s", out)
	}
	// Bad policy documents are refused whole, naming the problem.
	for _, bad := range []struct{ doc, want string }{
		{"policies:\n  - name: x\n    subject: spiffe://secretplane.test/a\n    verbs: [read]\n    objects: [a]\n    extra: 1\n", "field extra not found"},
		{"policies:\n  - name: x\n    subject: spiffe://secretplane.test/a\n    verbs: [delete]\n    objects: [a]\n", "verbs[0]"},
		{"policies:\n  - name: x\n    subject: not-an-id\n    verbs: [read]\n    objects: [a]\n", "policy.subject"},
		{"policies:\n  - name: x\n    subject: spiffe://secretplane.test/*\n    verbs: [admin]\n    objects: [\"*\"]\n", "force it"},
	} {
		_, errOut, err := cliStdin(t, dataDir, bad.doc, "policy", "apply", "-f", "-")
		if err == nil || !strings.Contains(errOut, bad.want) {
			t.Fatalf("bad policy accepted or unclear (want %q): %v %s", bad.want, err, errOut)
		}
	}

	// The payments lead manages payments/*, and nothing else.
	lead := filepath.Join(t.TempDir(), "lead")
	mustCLI(t, dataDir, "dev", "issue", "payments-lead", "--out", lead)
	asLead := []string{"--cert", filepath.Join(lead, "svid.pem"), "--key", filepath.Join(lead, "svid_key.pem"), "--bundle", filepath.Join(lead, "bundle.pem")}
	mustCLI(t, dataDir, append(asLead, "secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password")...)
	if _, errOut, err := cli(t, dataDir, append(asLead, "secret", "put", "billing/db", "--ref", "vault://secret/billing/db#password")...); err == nil || !strings.Contains(errOut, "PermissionDenied") {
		t.Fatalf("lead wrote billing/db: %v %s", err, errOut)
	}
	if _, errOut, err := cli(t, dataDir, append(asLead, "policy", "list")...); err == nil || !strings.Contains(errOut, "PermissionDenied") {
		t.Fatalf("lead listed policies: %v %s", err, errOut)
	}

	out = mustCLI(t, dataDir, "audit", "query", "--actor", "spiffe://secretplane.test/workload/payments-lead")
	if !strings.Contains(out, "allow") || !strings.Contains(out, "deny") || !strings.Contains(out, "billing/db") || !strings.Contains(out, "payments-team-admin") {
		t.Fatalf("audit query:\n%s", out)
	}
	if out := mustCLI(t, dataDir, "audit", "verify"); !strings.Contains(out, "chain intact") {
		t.Fatalf("verify: %s", out)
	}
	mustCLI(t, dataDir, "audit", "tail", "-n", "5")

	// Tamper with the database while the server is down.
	srv.stop(t)
	db, err := sql.Open("sqlite", filepath.Join(dataDir, "secretplane.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE audit_events SET decision = 'allow', outcome = 'authorized' WHERE decision = 'deny'`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	startDevServer(t, dataDir)
	out, _, err = cli(t, dataDir, "audit", "verify")
	if err == nil || !strings.Contains(out, "modified") {
		t.Fatalf("tampering not reported: %v\n%s", err, out)
	}
}
