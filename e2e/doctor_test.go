package e2e_test

import (
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// doctorRun runs `secretplane doctor` and returns its output and exit code.
func doctorRun(t *testing.T, dataDir string, args ...string) (string, string, int) {
	t.Helper()
	out, errOut, err := cli(t, dataDir, append([]string{"doctor"}, args...)...)
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out, errOut, 0
	case errors.As(err, &exit):
		return out, errOut, exit.ExitCode()
	default:
		t.Fatalf("doctor: %v", err)
		return "", "", -1
	}
}

func TestDoctor(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	startDevServer(t, dataDir)

	// A fresh dev server is clean: dev mode's own settings are no finding.
	out, errOut, code := doctorRun(t, dataDir)
	if code != 0 || !strings.Contains(out, "no problems found") {
		t.Fatalf("fresh dev server: exit %d\n%s%s", code, out, errOut)
	}

	const value = "pw-doctor-e2e-Zq8vW3xR"
	if _, errOut, err := cliStdin(t, dataDir, value, "dev", "local-put", "local://payments/db#password"); err != nil {
		t.Fatalf("local-put: %v %s", err, errOut)
	}
	mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "local://payments/db#password")                                    // no owner
	mustCLI(t, dataDir, "secret", "put", "payments/gone", "--ref", "local://payments/gone#password", "--owner", "payments")         // no value
	mustCLI(t, dataDir, "secret", "put", "payments/vault", "--ref", "vault://secret/payments/none#password", "--owner", "payments") // no Vault backend
	if _, errOut, err := cliStdin(t, dataDir, "policies:\n  - name: api-read\n    subject: spiffe://secretplane.test/workload/payments-api\n    verbs: [read]\n    objects: [\"payments/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
		t.Fatalf("policy: %v %s", err, errOut)
	}

	out, errOut, code = doctorRun(t, dataDir)
	if code != 2 {
		t.Fatalf("exit %d, want 2 (failures)\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"CHECK", "SEVERITY", "SUBJECT", "MESSAGE"} {
		if !strings.Contains(out, want) {
			t.Fatalf("table header lacks %s:\n%s", want, out)
		}
	}
	jout, _, jcode := doctorRun(t, dataDir, "-o", "json")
	if jcode != 2 {
		t.Fatalf("json: exit %d", jcode)
	}
	var resp struct {
		Findings []struct{ Check, Severity, Subject, Message string }
	}
	if err := json.Unmarshal([]byte(jout), &resp); err != nil {
		t.Fatalf("json: %v\n%s", err, jout)
	}
	found := map[string]bool{}
	for _, f := range resp.Findings {
		found[f.Check+"/"+f.Severity+"/"+f.Subject] = true
	}
	for _, want := range []string{
		"secret-owner/warning/payments/db",
		"ref-accessible/failure/payments/gone",
		"ref-accessible/failure/payments/vault",
		"grant-breadth/warning/spiffe://secretplane.test/workload/payments-api",
	} {
		if !found[want] {
			t.Errorf("no finding %s in\n%s", want, out)
		}
	}
	if strings.Contains(out+jout+errOut, value) {
		t.Fatal("doctor printed a value")
	}

	// Warnings only: the failures fixed, the unowned secret and the broad
	// grant remain.
	mustCLI(t, dataDir, "secret", "delete", "payments/gone")
	mustCLI(t, dataDir, "secret", "delete", "payments/vault")
	out, errOut, code = doctorRun(t, dataDir)
	if code != 1 || !strings.Contains(out, "secret-owner") || strings.Contains(out, "failure") {
		t.Fatalf("exit %d, want 1 (warnings only)\n%s%s", code, out, errOut)
	}
}
