package e2e_test

import (
	"path/filepath"
	"strings"
	"testing"
)

// The confused-deputy probe of issue 14, as an attacker with a prefix
// admin's identity runs it against a dev server: admin on payments/* must
// not let the payments lead bind a name to another team's backend path and
// read it through a workload. With bind on local://payments/* the lead
// binds local://payments/... and nothing else; the victim's audit names
// the attempt and the ref; an operator upgrading finds old bindings that
// the rule would refuse; dry runs answer alike for refs it may not bind.
func TestConfusedDeputyProbe(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	startDevServer(t, dataDir)
	mustCLI(t, dataDir, "policy", "apply", "-f", filepath.Join("..", "docs", "examples", "policies.yaml"))
	// Another team's secret, registered by the root admin.
	if out, errOut, err := cliStdin(t, dataDir, "victim-Zq8vW3xRpL2", "dev", "local-put", "local://canary/value#k"); err != nil {
		t.Fatalf("local-put: %v %s %s", err, out, errOut)
	}
	if out, errOut, err := cliStdin(t, dataDir, "pa55-w0rd", "dev", "local-put", "local://payments/db#password"); err != nil {
		t.Fatalf("local-put: %v %s %s", err, out, errOut)
	}
	mustCLI(t, dataDir, "secret", "put", "canary/s", "--ref", "local://canary/value#k")
	as := func(name string) []string {
		dir := filepath.Join(t.TempDir(), name)
		mustCLI(t, dataDir, "dev", "issue", name, "--out", dir)
		return []string{"--cert", filepath.Join(dir, "svid.pem"), "--key", filepath.Join(dir, "svid_key.pem"), "--bundle", filepath.Join(dir, "bundle.pem")}
	}
	lead, api := as("payments-lead"), as("payments-api")
	refused := func(args ...string) string {
		t.Helper()
		_, errOut, err := cli(t, dataDir, args...)
		if err == nil || !strings.Contains(errOut, "PermissionDenied") {
			t.Fatalf("secretplane %s: want PermissionDenied, got %v %s", strings.Join(args, " "), err, errOut)
		}
		return errOut
	}

	refused(append(lead, "secret", "get", "canary/s")...)
	msg := refused(append(lead, "secret", "put", "payments/steal", "--ref", "local://canary/value#k")...)
	if !strings.Contains(msg, "not allowed bind on local://canary/value#k") {
		t.Fatalf("the refusal does not name the missing bind: %s", msg)
	}
	if _, errOut, err := cli(t, dataDir, append(api, "resolve", "payments/steal")...); err == nil || !strings.Contains(errOut, "NotFound") {
		t.Fatalf("the stolen binding exists: %v %s", err, errOut)
	}
	// Inside its patterns the lead binds; beside and outside them it does not.
	mustCLI(t, dataDir, append(lead, "secret", "put", "payments/db-local", "--ref", "local://payments/db#password")...)
	mustCLI(t, dataDir, append(lead, "secret", "put", "payments/db", "--ref", "vault://secret/payments/db?version=3#password")...)
	for _, ref := range []string{"local://payments-old/db#password", "local://canary/other#k", "vault://secret/billing/db#password", "aws-sm://prod/billing/db#password"} {
		refused(append(lead, "secret", "put", "payments/x", "--ref", ref)...)
	}
	if out := mustCLI(t, dataDir, append(api, "resolve", "payments/db-local", "--raw")...); out != "pa55-w0rd" {
		t.Fatalf("resolve: %q", out)
	}

	// The victim's side: the audit names the attempt and the ref.
	out := mustCLI(t, dataDir, "audit", "query", "--actor", "spiffe://secretplane.test/workload/payments-lead", "--action", "AdminService.PutSecret", "-o", "json")
	for _, want := range []string{`"target": "payments/steal"`, `"ref": "local://canary/value#k"`, `"refused": "local://canary/value#k"`, `"outcome": "PermissionDenied"`, `"outcome": "ok"`, `"ref": "local://payments/db#password"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("audit lacks %s:\n%s", want, out)
		}
	}

	// Explain says why.
	if out := mustCLI(t, dataDir, "policy", "explain", "spiffe://secretplane.test/workload/payments-lead", "local://payments/db#password", "--verb", "bind"); !strings.Contains(out, `granted by policy "payments-team-bind"`) {
		t.Fatalf("explain bind: %s", out)
	}
	if out := mustCLI(t, dataDir, "policy", "explain", "spiffe://secretplane.test/workload/payments-lead", "local://canary/value#k", "--verb", "bind"); !strings.Contains(out, "denied") {
		t.Fatalf("explain bind: %s", out)
	}

	// Upgrading: a binding made before the rule (here by the root admin)
	// that the lead could not make is listed, with exit code 1.
	mustCLI(t, dataDir, "secret", "put", "payments/legacy", "--ref", "local://canary/value#k")
	out, errOut, err := cli(t, dataDir, "policy", "audit-bindings")
	if err == nil || !strings.Contains(out, "payments/legacy") || !strings.Contains(out, "payments-team-admin") || strings.Contains(out, "payments/db-local") || !strings.Contains(errOut, "1 grants of admin lack bind") {
		t.Fatalf("audit-bindings: %v\n%s\n%s", err, out, errOut)
	}
	refused(append(lead, "secret", "put", "payments/legacy", "--ref", "local://canary/value#k", "--description", "touched")...)
	mustCLI(t, dataDir, "secret", "put", "payments/legacy", "--ref", "local://payments/db#password")
	if out := mustCLI(t, dataDir, "policy", "audit-bindings"); !strings.Contains(out, "covered") {
		t.Fatalf("audit-bindings after the fix: %s", out)
	}

	// Dry runs are no oracle: a foreign-bound ref, a missing path and an
	// ungranted present one answer alike, naming nothing else.
	if out, errOut, err := cliStdin(t, dataDir, "x", "dev", "local-put", "local://probe/present#k"); err != nil {
		t.Fatalf("local-put: %v %s %s", err, out, errOut)
	}
	answer := func(ref string) string {
		doc := "name: payments/api\nidentity: spiffe://secretplane.test/workload/payments-api\nentries:\n  A: " + ref + "\n"
		_, errOut, err := cliStdin(t, dataDir, doc, append(lead, "config", "put", "-f", "-", "--dry-run")...)
		if err == nil {
			t.Fatalf("dry run with %s accepted", ref)
		}
		return strings.ReplaceAll(errOut, ref, "<REF>")
	}
	foreign, missing, present := answer("local://canary/value#k"), answer("local://probe/missing#k"), answer("local://probe/present#k")
	if foreign != missing || missing != present || !strings.Contains(foreign, "bind on <REF>") || strings.Contains(foreign, "canary/s") {
		t.Fatalf("dry-run answers differ or name another team's secret:\n%s\n%s\n%s", foreign, missing, present)
	}
}
