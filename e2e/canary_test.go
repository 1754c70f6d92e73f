package e2e_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/secretplane/secretplane/client"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/envoysim"
)

// newCanary returns a unique secret-looking value: a GitHub-token-shaped
// string with 36 random characters, so that a hit can only be a leak.
func newCanary(t *testing.T) string {
	return "ghp_" + randomString(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", 36)
}

func randomString(t *testing.T, alphabet string, n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		k, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			t.Fatal(err)
		}
		b.WriteByte(alphabet[k.Int64()])
	}
	return b.String()
}

// lowerCanaries returns unique secrets in the lower-case shapes generated
// credentials take without a known format: a word prefix and a hex body,
// and 32 random lower-case alphanumerics. The last is drawn until the
// literal detector flags it: its rule is statistical (it flags about 98%
// of such strings, measured in secretref's TestRandomLowerAlnumRates), and
// this test is about where a flagged value can go, not about the rate.
func lowerCanaries(t *testing.T) []string {
	const hex, alnum = "0123456789abcdef", "abcdefghijklmnopqrstuvwxyz0123456789"
	out := []string{
		"canary-" + randomString(t, hex, 24),
		"token-" + randomString(t, hex, 32),
		"api-key-" + randomString(t, hex, 40),
	}
	for {
		s := randomString(t, alnum, 32)
		if _, ok := secretref.DetectLiteral(s); ok {
			return append(out, s)
		}
	}
}

// The canary test plants a unique secret in every input an admin could get
// wrong and as a real secret value (local backend, resolved by a granted
// workload), drives the APIs through the CLI, and asserts the value appears
// nowhere but in that one Resolve response: not in the server's logs, not
// in any other response or error, not in the database files (audit rows
// included), not in the local backend's file (sealed).
func TestCanaryNeverLeaks(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	// A short TTL so that a new version is seen within seconds by the
	// watching client below.
	mirror := filepath.Join(dataDir, "audit-mirror.jsonl")
	srv := startDevServer(t, dataDir, "--cache-ttl", "2s", "--audit-file", mirror, "--metrics-refresh", "200ms")
	canary, rotated := newCanary(t), newCanary(t)
	lower := strings.ToLower(canary)
	shapes := lowerCanaries(t)

	var transcript strings.Builder
	generated := "" // the value a rotation below makes
	leaks := func(text string) bool {
		for _, c := range append([]string{canary, lower, canary[4:], rotated, rotated[4:]}, shapes...) {
			if strings.Contains(text, c) {
				return true
			}
		}
		if generated != "" && strings.Contains(text, generated) {
			return true
		}
		// The hex bodies alone, too: a prefix dropped is still a leak.
		for _, c := range shapes[:3] {
			if strings.Contains(text, c[strings.LastIndexByte(c, '-')+1:]) {
				return true
			}
		}
		return false
	}
	step := 0
	run := func(stdin string, args ...string) {
		step++
		out, errOut, _ := cliStdin(t, dataDir, stdin, args...)
		if leaks(out + errOut) {
			t.Errorf("step %d (secretplane %s) echoes the canary in its output", step, args[0]+" "+args[1])
		}
		transcript.WriteString(out)
		transcript.WriteString(errOut)
	}

	// Good data first, so the database is not empty.
	run("", "secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password")
	docOK := "name: payments/api\nentries:\n  HOST: db.internal\n  PORT: 5432\n"
	run(docOK, "config", "put", "-f", "-")

	// Attempts to put the secret where it does not belong.
	attempts := [][]string{
		{"secret", "put", "payments/leak", "--ref", canary},
		{"secret", "put", "payments/leak", "--ref", "vault://svc:" + canary + "@secret/payments/db#password"},
		{"secret", "put", "payments/leak", "--ref", "vault://secret/payments/db#password", "--description", canary},
		{"secret", "put", "payments/leak", "--ref", "vault://secret/payments/db#password", "--owner", canary},
		{"secret", "put", "payments/leak", "--ref", "vault://secret/payments/db#password", "--label", "token=" + canary},
		{"secret", "put", "payments/leak", "--ref", "vault://secret/payments/db#password", "--label", lower + "=x"},
		{"secret", "put", canary, "--ref", "vault://secret/payments/db#password"},
		{"secret", "put", "payments/" + lower, "--ref", "vault://secret/payments/db#password"},
		{"secret", "get", canary},
		{"secret", "get", lower},
		{"secret", "delete", lower},
		{"secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password", "--etag", canary},
		{"secret", "list", "--page-token", canary},
		{"secret", "list", "--prefix", lower},
		{"ref", "check", canary},
		{"ref", "check", "vault://secret/payments/db?version=" + canary + "#password"},
		{"ref", "check", "aws-sm://prod/db?stage=" + canary + "#password"},
		{"ref", "check", "vault://secret/payments/db#" + canary},
		{"config", "get", lower},
	}
	for _, a := range attempts {
		run("", a...)
	}
	docs := []string{
		"name: payments/api\nentries:\n  API_TOKEN: " + canary + "\n",
		"name: payments/api\nentries:\n  API_TOKEN: {literal: \"" + canary + "\"}\n",
		"name: payments/api\nentries:\n  DB: vault://u:" + canary + "@secret/payments/db#password\n",
		"name: payments/api\nentries:\n  " + canary + ": x\n",
		"name: payments/api\nlabels: {owner: " + canary + "}\nentries:\n  A: b\n",
		"name: payments/api\nidentity: spiffe://secretplane.test/" + canary + "\nentries:\n  A: b\n",
		"name: payments/api\nentries:\n  A: b\n  A: " + canary + "\n",
		"name: payments/api\nentries:\n  - {key: A, literal: \"password=" + canary + "\"}\n",
		"{\"name\": \"payments/api\", \"entries\": {\"A\": \"" + canary + "\"}}",
		"name: [" + canary + "\n",
	}
	for _, d := range docs {
		run(d, "config", "put", "-f", "-")
	}
	// The lower-case shapes, everywhere a user could put one: a config
	// literal, a request id, a policy's name, a field name the parsers
	// report, explain's arguments, a secret name and a ref's locator.
	for _, s := range shapes {
		run("name: payments/api\nentries:\n  TOKEN: "+s+"\n", "config", "put", "-f", "-")
		run("name: payments/api\nentries:\n  TOKEN: {literal: \""+s+"\"}\n", "config", "put", "-f", "-", "--dry-run")
		run("name: payments/api\nentries:\n  A: {"+s+": x}\n", "config", "put", "-f", "-")
		run("name: payments/api\n"+s+": x\n", "config", "put", "-f", "-")
		run("name: payments/api\nlabels: {"+s+": [x]}\n", "config", "put", "-f", "-")
		run("", "--request-id", s, "secret", "list")
		run("", "--request-id", s, "secret", "get", "payments/nope")
		run("policies:\n  - name: "+s+"\n    subject: spiffe://secretplane.test/workload/x\n    verbs: [read]\n    objects: [\"payments/*\"]\n", "policy", "apply", "-f", "-")
		run("policies:\n  - name: p\n    subject: spiffe://secretplane.test/workload/x\n    verbs: [read]\n    objects: [\"payments/*\"]\n    "+s+": 1\n", "policy", "apply", "-f", "-")
		run("", "policy", "get", s)
		run("", "policy", "delete", s)
		run("", "policy", "explain", "spiffe://secretplane.test/workload/"+s, "payments/db")
		run("", "policy", "explain", "spiffe://secretplane.test/workload/x", "payments/"+s)
		run("", "policy", "explain", "spiffe://secretplane.test/workload/x", "local://payments/"+s+"#k", "--verb", "bind")
		run("", "secret", "put", "payments/"+s, "--ref", "local://payments/db#password")
		run("", "secret", "put", "payments/x", "--ref", "local://"+s+"/db#password")
		run("", "secret", "put", "payments/x", "--ref", "local://payments/db#password", "--description", s)
	}
	// The canary as a real secret value: stored in the local backend,
	// registered by reference, granted to one workload and resolved by it.
	// Only that Resolve response may carry it.
	if out, errOut, err := cliStdin(t, dataDir, canary, "dev", "local-put", "local://payments/token#value"); err != nil {
		t.Fatalf("local-put: %v %s %s", err, out, errOut)
	}
	run("", "secret", "put", "payments/token", "--ref", "local://payments/token#value")
	run("name: payments/api\nentries:\n  TOKEN: local://payments/token#value\n", "config", "put", "-f", "-")
	run("policies:\n  - name: api-read\n    subject: spiffe://secretplane.test/workload/payments-api\n    verbs: [read]\n    objects: [\"payments/*\"]\n", "policy", "apply", "-f", "-")
	svid := filepath.Join(t.TempDir(), "svid")
	run("", "dev", "issue", "payments-api", "--out", svid)
	asAPI := []string{"--cert", filepath.Join(svid, "svid.pem"), "--key", filepath.Join(svid, "svid_key.pem"), "--bundle", filepath.Join(svid, "bundle.pem")}
	resolved, errOut, err := cli(t, dataDir, append(asAPI, "resolve", "payments/token", "--raw")...)
	if err != nil || resolved != canary {
		t.Fatalf("granted workload did not resolve the value: %v %s", err, errOut)
	}
	run("", append(asAPI, "resolve", "payments/db")...) // not in the backend: an error, no value
	issueOther := filepath.Join(t.TempDir(), "other")
	run("", "dev", "issue", "billing-api", "--out", issueOther)
	run("", "--cert", filepath.Join(issueOther, "svid.pem"), "--key", filepath.Join(issueOther, "svid_key.pem"), "--bundle", filepath.Join(issueOther, "bundle.pem"), "resolve", "payments/token")

	// The value watched through the client library and rotated: the
	// service's hook fails with an error that quotes the new value, which
	// the server must keep out of the consumers registry, logs and
	// responses.
	run("policies:\n  - name: api-read\n    subject: spiffe://secretplane.test/workload/payments-api\n    verbs: [read, watch]\n    objects: [\"payments/*\"]\n", "policy", "apply", "-f", "-")
	ep := readDevEndpoint(t, dataDir)
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Address: ep.Address, ServerID: spiffeid.RequireFromString(ep.ServerID),
		CertFile: filepath.Join(svid, "svid.pem"), KeyFile: filepath.Join(svid, "svid_key.pem"), BundleFile: filepath.Join(svid, "bundle.pem")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hooked := make(chan string, 4)
	w, err := c.Watch(ctx, []string{"payments/token"}, func(_ context.Context, _, new client.Secret) error {
		hooked <- string(new.Value)
		return fmt.Errorf("could not apply %s to the pool", new.Value)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if out, errOut, err := cliStdin(t, dataDir, rotated, "dev", "local-put", "local://payments/token#value"); err != nil {
		t.Fatalf("local-put: %v %s %s", err, out, errOut)
	}
	select {
	case v := <-hooked:
		if v != rotated {
			t.Fatal("the rotation hook got another value than the one written")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the watching client saw no new version within 15s")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _, _ := cli(t, dataDir, "secret", "consumers", "payments/token", "-o", "json")
		if strings.Contains(out, "watch") && strings.Contains(out, "withheld") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the failed acknowledgement is not in the consumers registry:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Over SDS, an Envoy of the same identity is served the value and
	// NACKs it with an error that quotes it: the registry keeps the NACK,
	// never its text.
	src, err := identity.LoadFiles(filepath.Join(svid, "svid.pem"), filepath.Join(svid, "svid_key.pem"), filepath.Join(svid, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	sdsConn, err := grpc.NewClient(ep.Address, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, spiffeid.RequireFromString(ep.ServerID)))))
	if err != nil {
		t.Fatal(err)
	}
	defer sdsConn.Close()
	for _, mode := range envoysim.Modes {
		env := envoysim.New(sdsConn, envoysim.Options{Mode: mode, NodeID: "canary-" + mode.String(), Reject: func(_ string, s *tlsv3.Secret) error {
			return fmt.Errorf("bad generic secret %s", s.GetGenericSecret().GetSecret().GetInlineBytes())
		}})
		// Open until the registry has its NACK: closed at once (or its
		// stream's context ended), the NACK counted here may not have
		// reached the server.
		defer env.Close()
		env.Subscribe(ctx, "payments/token")
		for deadline := time.Now().Add(10 * time.Second); ; {
			if _, _, nacks := env.Counts(); nacks > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no SDS response to NACK", mode)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		out, errOut, err := cli(t, dataDir, "secret", "consumers", "payments/token", "-o", "json")
		if strings.Contains(out, "canary-delta-ads") && strings.Count(out, "withheld") >= 1+len(envoysim.Modes) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the SDS NACKs are not in the consumers registry, or their text is not withheld:\n%s\n%v %s", out, err, errOut)
		}
		time.Sleep(200 * time.Millisecond)
	}
	run("", "secret", "consumers", "payments/token", "-o", "json")

	// A rotation of it through the API, with a policy whose parameter is
	// the canary first (refused: parameters are not values). The value it
	// generates reaches the watching client only, and it fails: the
	// client's hook and the Envoys reject it, quoting it.
	run("", "rotate", "policy", "set", "payments/token", "--param", "format="+canary)
	run("", "rotate", "policy", "set", "payments/token", "--param", "format="+lower)
	run("", "rotate", "policy", "set", "payments/token", "--param", "format=password", "--param", "length=40")
	run("", "rotate", "start", "payments/token", "--wait", "30s")
	select {
	case generated = <-hooked:
		if len(generated) != 40 {
			t.Fatalf("the rotation generated a value of %d characters, the policy asks 40", len(generated))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the rotated value never reached the watching client")
	}
	run("", "rotate", "status", "payments/token")
	run("", "rotate", "list", "payments/token", "-o", "json")
	run("", "rotate", "policy", "show", "payments/token", "-o", "json")

	// Reads after the attempts.
	run("", "secret", "list", "-o", "json")
	run("", "secret", "get", "payments/token", "-o", "json")
	run("", "config", "get", "payments/api", "-o", "json")
	run("", "audit", "tail", "-n", "200", "-o", "json")
	// What operators scrape: after an inventory refresh has seen the
	// rotated secret.
	var scraped string
	for deadline := time.Now().Add(20 * time.Second); ; {
		scraped = srv.scrapeMetrics(t)
		if strings.Contains(scraped, `secretplane_rotation_state{secret="payments/token"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the metrics never showed the rotation of payments/token:\n%s", scraped)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, want := range []string{"secretplane_cache_hits_total", `grpc_method="Resolve"`, "secretplane_sds_nacks_total"} {
		if !strings.Contains(scraped, want) {
			t.Fatalf("the scrape lacks %s: scanning the wrong text?", want)
		}
	}
	srv.stop(t)

	// Check every place: responses (CLI output), logs, database files.
	places := map[string]string{
		"CLI responses and errors": transcript.String(),
		"server output and logs":   srv.out.String(),
		"metrics":                  scraped,
	}
	// The database, SQLite's WAL and the audit journal (secretplane.db-audit/).
	err = filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dataDir, path)
		if !strings.HasPrefix(rel, "secretplane.db") && !strings.HasPrefix(rel, "local-secrets") && path != mirror {
			return nil
		}
		raw, err := os.ReadFile(path)
		places["database file "+rel] = string(raw)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := places["database file secretplane.db"]; !ok {
		t.Fatal("no database file found to scan")
	}
	if m := places["database file audit-mirror.jsonl"]; !strings.Contains(m, "SecretsService.Resolve") || !strings.Contains(m, "PolicyService.PutPolicy") {
		t.Fatal("the audit mirror file has no Resolve or policy events to scan")
	}
	journaled := false
	for where, text := range places {
		journaled = journaled || strings.Contains(where, "secretplane.db-audit/") && strings.Contains(text, "SecretsService.Resolve")
	}
	if !journaled {
		t.Fatal("no audit journal segment with a Resolve event found to scan")
	}
	for where, text := range places {
		if leaks(text) {
			t.Errorf("canary found in %s", where)
		}
	}
	// The test must have exercised something: refusals were logged and the
	// good data is there.
	if !strings.Contains(srv.out.String(), "InvalidArgument") {
		t.Error("server logs show no refused request; did the attempts reach the server?")
	}
	if !strings.Contains(places["database file secretplane.db"], "payments/db") {
		t.Error("database file does not hold the good secret; scanning the wrong file?")
	}
}
