#!/usr/bin/env bash
# Builds the real components the tests run (SPIRE server and agent, HashiCorp
# Vault) from the Go module proxy, pinned by the tools/ modules, into the
# user's cache keyed by version, once. Later runs (and fresh clones) reuse
# them. Prints the directory holding the binaries.
#
#   scripts/tools.sh spire|vault    build if absent, print the directory
#   scripts/tools.sh all            both, in parallel
set -euo pipefail
cd "$(dirname "$0")/.."

SPIRE_VERSION=1.13.3
VAULT_VERSION=1.19.0
cache="${XDG_CACHE_HOME:-$HOME/.cache}/secretplane/tools"
mkdir -p "$cache"

# build NAME VERSION MODULE_DIR GONOSUMDB PKG...: go build PKG... into
# $cache/NAME-VERSION, under a lock so concurrent callers build once.
build() {
  local name=$1 version=$2 moddir=$3 nosum=$4
  shift 4
  local dir="$cache/$name-$version"
  local stamp="$dir/.complete"
  if [ -f "$stamp" ]; then echo "$dir"; return; fi
  exec {lock}>"$cache/.$name-$version.lock"
  flock "$lock"
  if [ ! -f "$stamp" ]; then
    echo "building $name $version into $dir (once; cached by version)" >&2
    local tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    (cd "$moddir" && GOFLAGS=-mod=mod GONOSUMDB="$nosum" go build -trimpath -ldflags="-s -w" -o "$tmp/" "$@") >&2
    rm -rf "$dir"
    mv "$tmp" "$dir"
    touch "$stamp"
  fi
  flock -u "$lock"
  echo "$dir"
}

spire() {
  grep -q "github.com/spiffe/spire v$SPIRE_VERSION" tools/spire/go.mod || { echo "tools/spire/go.mod does not pin SPIRE $SPIRE_VERSION" >&2; exit 1; }
  build spire "$SPIRE_VERSION" tools/spire github.com/GoogleCloudPlatform/cloudsql-proxy \
    github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
}

vault() {
  grep -q "github.com/hashicorp/vault v$VAULT_VERSION" tools/vault/go.mod || { echo "tools/vault/go.mod does not pin Vault $VAULT_VERSION" >&2; exit 1; }
  build vault "$VAULT_VERSION" tools/vault github.com/GoogleCloudPlatform/cloudsql-proxy,github.com/hashicorp \
    github.com/hashicorp/vault
}

case "${1:-all}" in
  spire) spire ;;
  vault) vault ;;
  all)
    spire & s=$!
    vault & v=$!
    wait "$s" && wait "$v"
    ;;
  *) echo "usage: $0 spire|vault|all" >&2; exit 2 ;;
esac
