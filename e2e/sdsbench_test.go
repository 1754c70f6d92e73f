package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/testcert"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// BenchmarkSDSStreams10k measures the real server (built without the race
// detector) holding 10,000 Envoy SDS streams, one name each, opened over
// 250 mTLS connections by a load driver in a process of its own
// (internal/sdsload, one internal/envoysim client per stream): the
// server's resident memory and bytes per stream, and the latency from one
// content change of the secret to every stream having received and ACKed
// it (per-stream p50 and p99 over several changes, and the slowest).
//
// A change writes a new certificate to the dev server's local backend
// under a new path and rebinds the secret to it (AdminService.PutSecret):
// a rebind polls the name at once, where a new value at the same path
// would wait for the cache's next refresh. The latency runs from just
// before the PutSecret call to the moment each stream's ACK is sent. Run
// it with -benchtime=1x.
func BenchmarkSDSStreams10k(b *testing.B) {
	const (
		streams = 10_000
		conns   = 250
		changes = 5
		name    = "bench/cert"
	)
	dir := b.TempDir()
	bin := filepath.Join(dir, "secretplane")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/secretplane/secretplane/cmd/secretplane").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	loadBin := filepath.Join(dir, "sdsload")
	if out, err := exec.Command("go", "build", "-o", loadBin, "github.com/secretplane/secretplane/internal/sdsload").CombinedOutput(); err != nil {
		b.Fatalf("build sdsload: %v\n%s", err, out)
	}
	dataDir := filepath.Join(dir, "data")
	srv := startDevServerBinary(b, bin, dataDir, "--log-level", "warn", "--cache-ttl", "1h")
	if _, errOut, err := cliStdin(b, dataDir, "policies:\n  - name: sdsload\n    subject: spiffe://secretplane.test/workload/sdsload\n    verbs: [read]\n    objects: [\"bench/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
		b.Fatalf("policy: %v %s", err, errOut)
	}
	admin := devAdminClient(b, dataDir)
	ctx := context.Background()
	// stage writes certificate k to its own path of the local backend and
	// returns that ref and the leaf's serial.
	stage := func(k int) (ref, serial string) {
		b.Helper()
		bundle, serial := benchCertificate(b)
		ref = fmt.Sprintf("local://bench/v%d#pem", k)
		if _, errOut, err := cliStdin(b, dataDir, string(bundle), "dev", "local-put", ref); err != nil {
			b.Fatalf("local-put: %v %s", err, errOut)
		}
		return ref, serial
	}
	bind := func(ref string) {
		b.Helper()
		if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: name, Ref: ref, Kind: "tls_certificate"}}); err != nil {
			b.Fatal(err)
		}
	}
	ref, serial := stage(0)
	bind(ref)
	svid := filepath.Join(dir, "svid")
	mustCLI(b, dataDir, "dev", "issue", "sdsload", "--out", svid)
	ep := readDevEndpoint(b, dataDir)
	time.Sleep(time.Second) // let the server settle after its start and the setup calls
	before := rssMiB(b, srv.cmd.Process.Pid)

	drv := exec.Command(loadBin, "-addr", ep.Address, "-server-id", ep.ServerID,
		"-cert", filepath.Join(svid, identity.SVIDCertFile), "-key", filepath.Join(svid, identity.SVIDKeyFile), "-bundle", filepath.Join(svid, identity.BundleFile),
		"-streams", strconv.Itoa(streams), "-conns", strconv.Itoa(conns), "-name", name, "-mode", "sotw")
	load := startDriver(b, drv, srv)
	var ready struct {
		Streams int            `json:"streams"`
		OpenMS  float64        `json:"open_ms"`
		Serials map[string]int `json:"serials"`
	}
	load.read(b, "ready", &ready)
	if len(ready.Serials) != 1 || ready.Serials[serial] != streams {
		b.Fatalf("after opening, the streams hold %v; want all %d on %s", ready.Serials, streams, serial)
	}
	b.Logf("%d streams opened and holding the first certificate in %.1fs", streams, ready.OpenMS/1000)
	time.Sleep(2 * time.Second) // the audit log and consumer registry catch up
	held := rssMiB(b, srv.cmd.Process.Pid)
	driverRSS := rssMiB(b, drv.Process.Pid)

	var (
		lat            []int64 // per stream and change, µs
		srvCPU, drvCPU time.Duration
	)
	for k := 1; k <= changes; k++ {
		ref, serial := stage(k)
		time.Sleep(500 * time.Millisecond)
		srv0, drv0 := cpuTime(b, srv.cmd.Process.Pid), cpuTime(b, drv.Process.Pid)
		start := time.Now()
		bind(ref)
		bound := time.Since(start)
		load.send(b, "expect %s %d", serial, start.UnixNano())
		var ch struct {
			Reached    int     `json:"reached"`
			Lat        []int64 `json:"lat_us"`
			Errors     int     `json:"errors"`
			FirstError string  `json:"first_error"`
			Received   int     `json:"received"`
			Acks       int     `json:"acks"`
			Nacks      int     `json:"nacks"`
		}
		load.read(b, "change", &ch)
		srvUsed, drvUsed := cpuTime(b, srv.cmd.Process.Pid)-srv0, cpuTime(b, drv.Process.Pid)-drv0
		srvCPU, drvCPU = srvCPU+srvUsed, drvCPU+drvUsed
		if ch.Reached != streams || ch.Errors > 0 || ch.Nacks > 0 {
			b.Fatalf("change %d: %d of %d streams reached, %d stream errors (first: %s), %d NACKs\nsdsload:\n%s", k, ch.Reached, streams, ch.Errors, ch.FirstError, ch.Nacks, load.stderr.String())
		}
		slices.Sort(ch.Lat)
		b.Logf("change %d: PutSecret %v; all %d streams ACKed: first %.1f ms, p50 %.1f ms, p99 %.1f ms, last %.1f ms; CPU: server %v, sdsload %v (responses %d, ACKs %d)",
			k, bound.Round(time.Millisecond), streams, float64(ch.Lat[0])/1000, pct(ch.Lat, 50)/1000, pct(ch.Lat, 99)/1000, float64(ch.Lat[len(ch.Lat)-1])/1000,
			srvUsed, drvUsed, ch.Received, ch.Acks)
		lat = append(lat, ch.Lat...)
	}
	after := rssMiB(b, srv.cmd.Process.Pid)
	slices.Sort(lat)
	b.ReportMetric(streams, "streams")
	b.ReportMetric(conns, "conns")
	b.ReportMetric(before, "rss-before-MiB")
	b.ReportMetric(held, "rss-MiB")
	b.ReportMetric((held-before)*(1<<20)/streams, "bytes/stream")
	b.ReportMetric(after, "rss-after-changes-MiB")
	b.ReportMetric(driverRSS, "driver-rss-MiB")
	b.ReportMetric(ready.OpenMS/1000, "open-s")
	// CPU time each process spent per change, from the change until the
	// last stream ACKed it (both share this machine's cores)
	b.ReportMetric(float64(srvCPU.Milliseconds())/changes, "server-cpu-ms/change")
	b.ReportMetric(float64(drvCPU.Milliseconds())/changes, "driver-cpu-ms/change")
	b.ReportMetric(pct(lat, 50)/1000, "fanout-p50-ms")
	b.ReportMetric(pct(lat, 99)/1000, "fanout-p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/1000, "fanout-max-ms")
}

// cpuTime is the user and system CPU time process pid has used.
func cpuTime(b *testing.B, pid int) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// the fields after the command name (which is in parentheses)
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, raw)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, raw)
	}
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// pct is the p-th percentile (nearest rank) of sorted.
func pct(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i])
}

// benchCertificate is a fresh certificate and its key as one PEM
// bundle, and the certificate's serial (hex).
func benchCertificate(b *testing.B) ([]byte, string) {
	p := testcert.New(b, testcert.Options{CommonName: "sdsbench.secretplane.test"})
	return p.Bundle(), p.Serial.Text(16)
}
