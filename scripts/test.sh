#!/usr/bin/env bash
# Runs every test. Starts what the tests need: PostgreSQL 15 is started by
# the tests themselves (e2e/testenv) from Debian's postgresql-15, which this
# script installs when it is missing and we may.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_bindir=/usr/lib/postgresql/15/bin
if [ ! -x "$pg_bindir/initdb" ] && [ -z "${SECRETPLANE_TEST_POSTGRES_DSN:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing postgresql-15 (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
  else
    echo "PostgreSQL 15 is missing: apt-get install -y postgresql-15" >&2
    exit 1
  fi
fi

# promtool, from Debian's prometheus package, for the alert rule tests in
# deploy/; SECRETPLANE_REQUIRE_PROMTOOL makes them fail rather than skip
# without it.
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing prometheus (Debian, for promtool)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is missing: apt-get install -y prometheus" >&2
    exit 1
  fi
fi
export SECRETPLANE_REQUIRE_PROMTOOL=1

# SPIRE 1.13.3 (server and agent) and Vault 1.19.0 for the identity and
# backend tests: built once, in parallel, from the Go module proxy into the
# user's cache (about 12 and 5 minutes cold on 2 cores), reused by every
# later run and fresh clone.
echo "== tools"
./scripts/tools.sh all >/dev/null
SECRETPLANE_SPIRE_BIN_DIR=$(./scripts/tools.sh spire)
SECRETPLANE_VAULT_BIN=$(./scripts/tools.sh vault)/vault
export SECRETPLANE_SPIRE_BIN_DIR SECRETPLANE_VAULT_BIN
echo "SPIRE: $SECRETPLANE_SPIRE_BIN_DIR"
echo "Vault: $SECRETPLANE_VAULT_BIN ($("$SECRETPLANE_VAULT_BIN" version))"

echo "== lint"
make --no-print-directory lint

echo "== go test -race ./..."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
go test -race -count=1 -timeout 25m -v ./... >"$log" 2>&1
rc=$?
set -e
# Top-level tests and their first-level subtests (the store conformance
# suite shows one line per backend), failures in full, and package results.
grep -E '^(    )?--- (PASS|FAIL|SKIP)|^(ok|FAIL|panic:)|^\s+\S+_test\.go:[0-9]+:' "$log" || true
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
echo
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit $rc
