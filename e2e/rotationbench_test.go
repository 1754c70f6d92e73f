package e2e_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/secretplane/secretplane/identity"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// BenchmarkRotation1kWatch1kSDS times a rotation through the real server
// (built without the race detector) from `rotate start` to completed,
// while 1,000 Watch consumers (client library, 1,000 SPIFFE identities:
// the registry counts Watch consumers by identity) and 1,000 Envoy SDS
// streams (one identity, told apart by node id, over 50 connections) are
// held by a load driver in a process of its own (internal/rotload). A
// rotation completes only when all 2,000 have acknowledged the new
// version; the consumers' hooks do nothing, so there is no apply time in
// the figure.
//
// The secret is bound to the dev server's local backend; the random
// rotator writes each new version. Each of a few rotations is timed from
// just before RotationService.StartRotation to the GetRotation poll (every
// 10 ms) that first sees it completed (rotate-ms: the median), and from
// the same start to the moment the last consumer had the new value as the
// driver saw it (its hook ran, or its SDS ACK was sent). Run it with
// -benchtime=1x.
func BenchmarkRotation1kWatch1kSDS(b *testing.B) {
	const (
		watches    = 1000
		identities = 1000
		sdsStreams = 1000
		sdsConns   = 50
		rotations  = 3
		name       = "bench/rot"
		ref        = "local://bench/rot#v"
		initial    = "rotation-bench-initial-value"
	)
	dir := b.TempDir()
	bin := filepath.Join(dir, "secretplane")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/secretplane/secretplane/cmd/secretplane").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	loadBin := filepath.Join(dir, "rotload")
	if out, err := exec.Command("go", "build", "-o", loadBin, "github.com/secretplane/secretplane/internal/rotload").CombinedOutput(); err != nil {
		b.Fatalf("build rotload: %v\n%s", err, out)
	}
	dataDir := filepath.Join(dir, "data")
	srv := startDevServerBinary(b, bin, dataDir, "--log-level", "warn", "--cache-ttl", "1h", "--rotation-deadline", "60s")
	if _, errOut, err := cliStdin(b, dataDir, "policies:\n  - name: rotload\n    subject: spiffe://secretplane.test/workload/*\n    verbs: [read, watch]\n    objects: [\"bench/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
		b.Fatalf("policy: %v %s", err, errOut)
	}
	if _, errOut, err := cliStdin(b, dataDir, initial, "dev", "local-put", ref); err != nil {
		b.Fatalf("local-put: %v %s", err, errOut)
	}
	mustCLI(b, dataDir, "secret", "put", name, "--ref", ref)
	rc := spv1.NewRotationServiceClient(adminConn(b, dataDir))
	ep := readDevEndpoint(b, dataDir)
	ctx := context.Background()

	drv := exec.Command(loadBin, "-addr", ep.Address, "-server-id", ep.ServerID, "-ca-dir", filepath.Join(dataDir, identity.DevCADir), "-name", name,
		"-watch", strconv.Itoa(watches), "-identities", strconv.Itoa(identities), "-sds", strconv.Itoa(sdsStreams), "-sds-conns", strconv.Itoa(sdsConns))
	load := startDriver(b, drv, srv)
	var ready struct {
		OpenMS        float64        `json:"open_ms"`
		WatchValues   map[string]int `json:"watch_values"`
		WatchVersions map[string]int `json:"watch_versions"`
		SDSValues     map[string]int `json:"sds_values"`
	}
	load.read(b, "ready", &ready)
	old := rotDigest(initial)
	if ready.WatchValues[old] != watches || ready.SDSValues[old] != sdsStreams {
		b.Fatalf("after opening, the Watch consumers hold %v and the SDS streams %v; want all on %s", ready.WatchValues, ready.SDSValues, old)
	}
	b.Logf("%d Watch streams (%d identities) and %d SDS streams (%d conns) hold the first value after %.1fs", watches, identities, sdsStreams, sdsConns, ready.OpenMS/1000)

	consumersRE := regexp.MustCompile(`^all (\d+) consumers acknowledged`)
	var took, server, last, p50 []float64 // ms, per rotation
	counted := 0
	for k := 1; k <= rotations; k++ {
		time.Sleep(time.Second) // the registry's write-behind and the server settle
		srv0, drv0 := cpuTime(b, srv.cmd.Process.Pid), cpuTime(b, drv.Process.Pid)
		start := time.Now()
		r, err := rc.StartRotation(ctx, &spv1.StartRotationRequest{Secret: name})
		if err != nil {
			b.Fatalf("rotation %d: start: %v", k, err)
		}
		started := time.Since(start)
		load.send(b, "await %d %s", start.UnixNano(), old)
		seen := map[string]time.Duration{r.GetState(): started} // when each state was first seen
		for !slices.Contains([]string{"completed", "failed", "rolled_back"}, r.GetState()) {
			if time.Since(start) > 90*time.Second {
				b.Fatalf("rotation %d still %s after 90s: %s", k, r.GetState(), r.GetDetail())
			}
			time.Sleep(10 * time.Millisecond)
			if r, err = rc.GetRotation(ctx, &spv1.GetRotationRequest{Secret: name, Id: r.GetId()}); err != nil {
				b.Fatalf("rotation %d: get: %v", k, err)
			}
			if _, ok := seen[r.GetState()]; !ok {
				seen[r.GetState()] = time.Since(start)
			}
		}
		done := seen[r.GetState()]
		if r.GetState() != "completed" {
			b.Fatalf("rotation %d: %s after %v: %s\nrotload:\n%s", k, r.GetState(), done, r.GetDetail(), load.stderr.String())
		}
		var ch struct {
			Consumers     int            `json:"consumers"`
			Reached       int            `json:"reached"`
			WatchLat      []int64        `json:"watch_lat_us"`
			SDSLat        []int64        `json:"sds_lat_us"`
			WatchValues   map[string]int `json:"watch_values"`
			WatchVersions map[string]int `json:"watch_versions"`
			SDSValues     map[string]int `json:"sds_values"`
			HookCalls     int            `json:"hook_calls"`
			Errors        int            `json:"errors"`
			FirstError    string         `json:"first_error"`
			SDSNacks      int            `json:"sds_nacks"`
		}
		load.read(b, "changed", &ch)
		srvUsed, drvUsed := cpuTime(b, srv.cmd.Process.Pid)-srv0, cpuTime(b, drv.Process.Pid)-drv0
		if ch.Reached != ch.Consumers || ch.Errors > 0 || ch.SDSNacks > 0 {
			b.Fatalf("rotation %d: %d of %d consumers have the new value, %d errors (first: %s), %d NACKs\nrotload:\n%s", k, ch.Reached, ch.Consumers, ch.Errors, ch.FirstError, ch.SDSNacks, load.stderr.String())
		}
		if len(ch.WatchVersions) != 1 || ch.WatchVersions[r.GetToVersion()] != watches {
			b.Fatalf("rotation %d to version %s: the Watch consumers hold versions %v", k, r.GetToVersion(), ch.WatchVersions)
		}
		if len(ch.WatchValues) != 1 || len(ch.SDSValues) != 1 || !slices.Equal(slices.Collect(maps.Keys(ch.WatchValues)), slices.Collect(maps.Keys(ch.SDSValues))) {
			b.Fatalf("rotation %d: the consumers disagree on the new value: Watch %v, SDS %v", k, ch.WatchValues, ch.SDSValues)
		}
		for v := range ch.WatchValues {
			old = v
		}
		if m := consumersRE.FindStringSubmatch(r.GetDetail()); m != nil {
			counted, _ = strconv.Atoi(m[1])
		} else {
			b.Logf("rotation %d: detail %q does not count the consumers", k, r.GetDetail())
		}
		lat := slices.Concat(ch.WatchLat, ch.SDSLat)
		slices.Sort(lat)
		slices.Sort(ch.WatchLat)
		slices.Sort(ch.SDSLat)
		srvMS := float64(r.GetUpdateTime().AsTime().Sub(r.GetCreateTime().AsTime()).Microseconds()) / 1000
		lastMS := float64(lat[len(lat)-1]) / 1000
		b.Logf("rotation %d (%s -> %s): completed after %.0f ms (server's own record %.0f ms); states first seen at %s; last consumer had it at %.0f ms "+
			"(Watch p50 %.0f / last %.0f ms, SDS p50 %.0f / last %.0f ms); %s; CPU: server %v, rotload %v",
			k, r.GetFromVersion(), r.GetToVersion(), rotMS(done), srvMS, rotStateTimes(seen), lastMS,
			pct(ch.WatchLat, 50)/1000, float64(ch.WatchLat[len(ch.WatchLat)-1])/1000, pct(ch.SDSLat, 50)/1000, float64(ch.SDSLat[len(ch.SDSLat)-1])/1000,
			r.GetDetail(), srvUsed, drvUsed)
		took, server, last, p50 = append(took, rotMS(done)), append(server, srvMS), append(last, lastMS), append(p50, pct(lat, 50)/1000)
	}
	if want := identities + sdsStreams; counted != want {
		b.Logf("the registry counted %d consumers; %d identities + %d SDS nodes make %d", counted, identities, sdsStreams, want)
	}
	b.ReportMetric(watches, "watch-streams")
	b.ReportMetric(float64(counted-sdsStreams), "watch-identities")
	b.ReportMetric(sdsStreams, "sds-streams")
	b.ReportMetric(float64(counted), "consumers")
	b.ReportMetric(ready.OpenMS/1000, "open-s")
	b.ReportMetric(rotMedian(took), "rotate-ms")
	b.ReportMetric(slices.Max(took), "rotate-max-ms")
	b.ReportMetric(rotMedian(server), "rotate-server-ms")
	b.ReportMetric(rotMedian(p50), "consumer-p50-ms")
	b.ReportMetric(rotMedian(last), "last-consumer-ms")
}

// rotDigest is how internal/rotload names a value: the first 16 hex
// digits of its SHA-256.
func rotDigest(v string) string {
	h := sha256.Sum256([]byte(v))
	return hex.EncodeToString(h[:8])
}

func rotMS(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// rotMedian is the median of xs (which it sorts).
func rotMedian(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// rotStateTimes lists when each state was first seen, in order.
func rotStateTimes(seen map[string]time.Duration) string {
	states := slices.SortedFunc(maps.Keys(seen), func(a, b string) int { return int(seen[a] - seen[b]) })
	parts := make([]string, len(states))
	for i, s := range states {
		parts[i] = fmt.Sprintf("%s %.0f ms", s, rotMS(seen[s]))
	}
	return strings.Join(parts, ", ")
}
