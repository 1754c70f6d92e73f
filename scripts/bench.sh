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
echo "== audit log: group-committed appends (SQLite), 64 goroutines"
go test -run='^$' -bench=Record -benchtime=50000x ./controlplane/audit | grep -E '^Benchmark' | awk '{printf "%s %s ns/op  (%.0f events/s)\n", $1, $3, 1e9/$3}'
echo
echo "== over mTLS at 64 callers: bare health check (baseline), admin read, Resolve cache hit"
go test -run='^$' -bench='Baseline|Admin|Resolve' -benchtime="$benchtime" ./controlplane/api | grep -E '^Benchmark' | tee "$out/api.txt"
echo
echo "== direct Vault KV v2 read over TLS at 64 callers (Vault 1.19 dev mode)"
go test -run='^$' -bench=VaultDirect -benchtime="$benchtime" -timeout 20m ./e2e | grep -E '^Benchmark' | tee "$out/vault.txt"
echo
echo "== server (no race detector) with 100,000 cached 1 KiB secrets from Vault (a few minutes)"
go test -run='^$' -bench=ServerMemory -benchtime=1x -timeout 30m ./e2e | grep -E '^Benchmark' | tee "$out/memory.txt"
echo

cat "$out"/*.txt | awk '
function metric(line, unit,   i, f, n) {
  n = split(line, f, /[ \t]+/)
  for (i = 2; i <= n; i++) if (f[i] == unit) return f[i-1]
  return ""
}
/^BenchmarkBaseline/          { bc = metric($0, "calls/s"); b99 = metric($0, "p99-µs"); b50 = metric($0, "p50-µs") }
/^BenchmarkResolveCacheHit/   { rc = metric($0, "calls/s"); r99 = metric($0, "p99-µs"); r50 = metric($0, "p50-µs") }
/^BenchmarkAdminGetSecret/    { ac = metric($0, "calls/s"); a99 = metric($0, "p99-µs"); a50 = metric($0, "p50-µs") }
/^BenchmarkVaultDirect/       { vc = metric($0, "calls/s"); v99 = metric($0, "p99-µs"); v50 = metric($0, "p50-µs") }
/^BenchmarkServerMemory/      { rss = metric($0, "rss-MiB"); cold = metric($0, "cold-resolves/s") }
END {
  printf "%-46s %10s %9s %9s   %s\n", "figure (64 callers, mTLS)", "calls/s", "p50 µs", "p99 µs", "vs target"
  printf "%-46s %10.0f %9s %9s   %s\n", "bare mTLS health check (baseline)", bc, b50, b99, "-"
  printf "%-46s %10.0f %9s %9s   %.0f%% of baseline calls/s (target >= 70%%), p99 %.2fx (target <= 1.5x)\n", "Resolve, cache hit, policy + audit", rc, r50, r99, 100*rc/bc, r99/b99
  printf "%-46s %10.0f %9s %9s   %s\n", "admin GetSecret (SQLite read)", ac, a50, a99, "-"
  printf "%-46s %10.0f %9s %9s   Resolve %.2fx its calls/s (target >= 2x), p99 %s (target lower)\n", "direct Vault KV v2 read over TLS", vc, v50, v99, rc/vc, (r99 < v99 ? "lower" : "NOT lower")
  printf "%-46s %10s   %s\n", "server RSS, 100,000 cached 1 KiB secrets", rss " MiB", (rss < 400 ? "under" : "OVER") " the 400 MiB target; cold resolves " sprintf("%.0f", cold) "/s"
}'
