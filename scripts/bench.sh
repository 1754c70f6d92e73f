#!/usr/bin/env bash
# Performance figures, measured (never asserted): Go benchmarks of the hot
# parsers and of admin calls over mTLS beside the bare mTLS baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
benchtime=${BENCHTIME:-50000x}
echo "== machine: $(nproc) cores, $(go version | awk '{print $3}')"
echo "== SecretRef parsing and literal detection"
go test -run='^$' -bench=. -benchmem ./controlplane/secretref
echo
echo "== audit log: group-committed appends (SQLite), 64 goroutines"
go test -run='^$' -bench=Record -benchtime=50000x ./controlplane/audit | grep -E '^Benchmark' | awk '{printf "%s %s ns/op  (%.0f events/s)\n", $1, $3, 1e9/$3}'
echo
echo "== Resolve (cache hit) and admin reads over mTLS (64 callers, 64 connections) vs the bare mTLS health check"
go test -run='^$' -bench='Baseline|Admin|Resolve' -benchtime="$benchtime" ./controlplane/api | tee /tmp/secretplane-bench-api.txt
echo
awk '/^Benchmark/ { name=$1; for (i=2;i<=NF;i++) { if ($(i)=="calls/s") cps[name]=$(i-1); if ($(i)=="p50-µs") p50[name]=$(i-1); if ($(i)=="p99-µs") p99[name]=$(i-1) } }
END {
  printf "%-40s %12s %10s %10s %12s\n", "figure", "calls/s", "p50 µs", "p99 µs", "vs baseline";
  for (n in cps) if (n ~ /Baseline/) base=n;
  for (n in cps) printf "%-40s %12.0f %10s %10s %11.0f%%\n", n, cps[n], p50[n], p99[n], 100*cps[n]/cps[base];
}' /tmp/secretplane-bench-api.txt
