#!/usr/bin/env bash
# Performance figures, measured (never asserted): Go benchmarks and the load
# driver (internal/loadtest, 64 callers on 64 connections), printed with
# DESIGN.md's targets in one table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
benchtime=${BENCHTIME:-50000x}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Vault 1.19.0 for the direct-read comparison and the memory figure: built
# once into the user's cache (see scripts/tools.sh), reused afterwards.
SECRETPLANE_VAULT_BIN=$(./scripts/tools.sh vault)/vault
export SECRETPLANE_VAULT_BIN

echo "== machine: $(nproc) cores, $(go version | awk '{print $3}')"
echo "== SecretRef parsing and literal detection"
go test -run='^$' -bench=. -benchmem ./controlplane/secretref | grep -E '^Benchmark'
echo
echo "== audit log: group-committed appends on SQLite, 64 goroutines: a transaction per batch (direct,"
echo "   as on PostgreSQL) and through the journal (the embedded store's way)"
go test -run='^$' -bench=Record -benchtime=50000x ./controlplane/audit | grep -E '^Benchmark' | awk '{printf "%s %s ns/op  (%.0f events/s)\n", $1, $3, 1e9/$3}'
echo "== the journal's ingester: SQLite insert cost per audit event, batches of 512"
go test -run='^$' -bench=AppendAudit -benchtime=100000x ./store/sqlite | grep -E '^Benchmark'
echo
echo "== over mTLS at 64 callers: bare health check (baseline), admin read, Resolve cache hit (metrics"
echo "   off, and on with a scrape every second)"
echo "   (three rounds, each running the three back to back: this machine's speed drifts with its"
echo "   neighbours, so the table takes each figure's median of the three)"
go test -c -o "$out/api.test" ./controlplane/api
for round in 1 2 3; do
  (cd controlplane/api && "$out/api.test" -test.run='^$' -test.bench='Baseline|Admin|Resolve' -test.benchtime="$benchtime") | grep -E '^Benchmark' | tee -a "$out/api.txt"
done
echo
echo "== direct Vault KV v2 read over TLS at 64 callers (Vault 1.19 dev mode)"
go test -run='^$' -bench=VaultDirect -benchtime="$benchtime" -timeout 20m ./e2e | grep -E '^Benchmark' | tee "$out/vault.txt"
echo
echo "== server (no race detector) with 100,000 cached 1 KiB secrets from Vault (a few minutes)"
go test -run='^$' -bench=ServerMemory -benchtime=1x -timeout 30m ./e2e | grep -E '^Benchmark' | tee "$out/memory.txt"
echo
echo "== SDS: 10,000 streams of one name each over 250 mTLS connections, held against the server (no race"
echo "   detector) by the load driver internal/sdsload in a process of its own; then 5 content changes,"
echo "   each timed until every stream has received and ACKed it (a minute or so; both processes share"
echo "   this machine's cores)"
go test -run='^$' -bench=SDSStreams10k -benchtime=1x -timeout 30m ./e2e | grep -E '^Benchmark' | tee "$out/sds.txt"
echo
echo "== rotation: 1,000 Watch consumers (client library, 1,000 identities) and 1,000 SDS streams (50 conns)"
echo "   held by the load driver internal/rotload in a process of its own against the server (no race"
echo "   detector); three rotations, each timed from StartRotation to the GetRotation poll (every 10 ms)"
echo "   that sees it completed, i.e. every consumer acknowledged (the hooks do nothing: no apply time)"
go test -run='^$' -bench=Rotation1k -benchtime=1x -timeout 20m ./e2e | grep -E '^Benchmark' | tee "$out/rotation.txt"
echo

cat "$out"/*.txt | awk '
function metric(line, unit,   i, f, n) {
  n = split(line, f, /[ \t]+/)
  for (i = 2; i <= n; i++) if (f[i] == unit) return f[i-1]
  return ""
}
# median of the values kept for key k
function median(k,   n, i, j, t, v) {
  n = cnt[k]
  for (i = 1; i <= n; i++) v[i] = val[k, i]
  for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j-1] > v[j]; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
  return n % 2 ? v[(n+1)/2] : (v[n/2] + v[n/2+1]) / 2
}
function keep(k, x) { if (x != "") val[k, ++cnt[k]] = x }
function keep3(p, line) { keep(p "c", metric(line, "calls/s")); keep(p "50", metric(line, "p50-µs")); keep(p "99", metric(line, "p99-µs")); keep(p "cpu", metric(line, "cpu-µs/call")) }
/^BenchmarkBaseline/          { keep3("b", $0) }
/^BenchmarkResolveCacheHitMetrics/ { keep3("m", $0); next }
/^BenchmarkResolveCacheHit/   { keep3("r", $0) }
/^BenchmarkAdminGetSecret/    { keep3("a", $0) }
/^BenchmarkVaultDirect/       { keep3("v", $0) }
/^BenchmarkServerMemory/      { rss = metric($0, "rss-MiB"); cold = metric($0, "cold-resolves/s") }
/^BenchmarkSDSStreams10k/     { sn = metric($0, "streams"); sc = metric($0, "conns"); srss = metric($0, "rss-MiB"); sbefore = metric($0, "rss-before-MiB"); sbps = metric($0, "bytes/stream")
                                s50 = metric($0, "fanout-p50-ms"); s99 = metric($0, "fanout-p99-ms"); smax = metric($0, "fanout-max-ms") }
/^BenchmarkRotation1k/        { rms = metric($0, "rotate-ms"); rmax = metric($0, "rotate-max-ms"); rlast = metric($0, "last-consumer-ms")
                                rws = metric($0, "watch-streams"); rwi = metric($0, "watch-identities"); rsds = metric($0, "sds-streams"); rcons = metric($0, "consumers") }
END {
  bc = median("bc"); b50 = median("b50"); b99 = median("b99"); bcpu = median("bcpu")
  rc = median("rc"); r50 = median("r50"); r99 = median("r99"); rcpu = median("rcpu")
  mc = median("mc"); m50 = median("m50"); m99 = median("m99"); mcpu = median("mcpu")
  ac = median("ac"); a50 = median("a50"); a99 = median("a99"); acpu = median("acpu")
  vc = median("vc"); v50 = median("v50"); v99 = median("v99"); vcpu = median("vcpu")
  printf "%-46s %10s %9s %9s %9s   %s\n", "figure (64 callers, mTLS; medians)", "calls/s", "p50 µs", "p99 µs", "CPU µs", "vs target"
  printf "%-46s %10.0f %9.0f %9.0f %9.1f   %s\n", "bare mTLS health check (baseline)", bc, b50, b99, bcpu, "-"
  printf "%-46s %10.0f %9.0f %9.0f %9.1f   %.0f%% of baseline calls/s (target >= 70%%), p99 %.2fx (target <= 1.5x)\n", "Resolve, cache hit, policy + audit", rc, r50, r99, rcpu, 100*rc/bc, r99/b99
  printf "%-46s %10.0f %9.0f %9.0f %9.1f   %+.1f%% calls/s vs metrics off (target within 3%%)\n", "Resolve, cache hit, metrics on, scraped 1/s", mc, m50, m99, mcpu, 100*(mc-rc)/rc
  printf "%-46s %10.0f %9.0f %9.0f %9.1f   %s\n", "admin GetSecret (SQLite read)", ac, a50, a99, acpu, "-"
  printf "%-46s %10.0f %9.0f %9.0f %9.1f   Resolve %.2fx its calls/s (target >= 2x), p99 %s (target lower)\n", "direct Vault KV v2 read over TLS", vc, v50, v99, vcpu, rc/vc, (r99 < v99 ? "lower" : "NOT lower")
  print "(CPU µs: CPU time of the bench process per call, client and server together; Vault runs in a process of its own)"
  printf "%-46s %10s   %s\n", "server RSS, 100,000 cached 1 KiB secrets", rss " MiB", (rss < 400 ? "under" : "OVER") " the 400 MiB target; cold resolves " sprintf("%.0f", cold) "/s"
  printf "%-46s %10s   %s\n", sprintf("SDS: server RSS, %d streams (%d conns)", sn, sc), sprintf("%.0f MiB", srss), (srss+0 < 2048 ? "under" : "OVER") " the 2 GiB target; " sprintf("%.0f bytes/stream (%.0f MiB before the streams)", sbps, sbefore)
  printf "%-46s %10s   %s\n", sprintf("SDS fan-out: change -> all %d streams ACKed", sn), "", sprintf("p50 %.0f ms, p99 %.0f ms, last %.0f ms: p99 ", s50, s99, smax) (s99+0 < 1000 ? "under" : "OVER") " the 1 s target"
  printf "%-46s %10s   %s\n", "rotation: start -> completed, 1,000 Watch + 1,000 SDS", sprintf("%.0f ms", rms), (rms+0 < 2000 ? "under" : "OVER") " the 2 s target (+ apply time; none here): " sprintf("median of 3, slowest %.0f ms; last consumer had it at %.0f ms; %d consumers counted (%d Watch streams as %d identities, %d SDS nodes)", rmax, rlast, rcons, rws, rwi, rsds)
}'
