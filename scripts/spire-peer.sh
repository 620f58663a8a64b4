#!/usr/bin/env bash
# Builds SPIRE (spire-server and spire-agent) from the Go module proxy into a cache directory
# outside the repository, once per machine: SPIRE is a peer to measure and interoperate with,
# never part of Sigil, so none of its code enters this repository. CI does not need it.
#
#   scripts/spire-peer.sh            build (or reuse) and print the binaries' directory
#
# SIGIL_SPIRE_CACHE (default /var/tmp/sigil-spire) holds one scratch Go module per version;
# SIGIL_SPIRE_VERSION (default v1.13.3) picks the version. The proxy refuses
# `go install pkg@version` for SPIRE (its go.mod has replace directives), so the binaries are
# declared as tools of a scratch module (`go get -tool`) and installed from it with GOBIN set.
# The version is stamped the way SPIRE's Makefile stamps a release (`version.gittag`), so
# `--version` prints it as a release binary does. A second run whose binaries exist and report
# the version does nothing.
set -euo pipefail

version="${SIGIL_SPIRE_VERSION:-v1.13.3}"
cache="${SIGIL_SPIRE_CACHE:-/var/tmp/sigil-spire}/$version"
go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
# SPIRE v1.13.3 asks for Go >= 1.25.3. The toolchain is pinned to one the proxy serves, so every
# machine's cache is built by the same compiler (a Go >= 1.21 fetches it). An explicit
# GOTOOLCHAIN wins.
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
programs=(spire-server spire-agent)

fail() {
  echo "spire-peer: $*" >&2
  exit 1
}

# Prints nothing and succeeds when $1 exists and reports $version.
up_to_date() {
  local bin="$cache/bin/$1"
  [ -x "$bin" ] || return 1
  "$bin" --version 2>&1 | grep -qx "${version#v}"
}

if up_to_date spire-server && up_to_date spire-agent; then
  echo "spire-peer: SPIRE $version already built in $cache/bin" >&2
  echo "$cache/bin"
  exit 0
fi

[ -x "$go" ] || fail "no Go toolchain found (set GO=/path/to/go)"
mkdir -p "$cache/module" "$cache/bin"
cd "$cache/module"
if [ ! -f go.mod ]; then
  "$go" mod init sigil.peer/spire >/dev/null 2>&1 || fail "go mod init failed in $cache/module"
fi
export GOBIN="$cache/bin"
for program in "${programs[@]}"; do
  pkg="github.com/spiffe/spire/cmd/$program"
  echo "spire-peer: go get -tool $pkg@$version" >&2
  "$go" get -tool "$pkg@$version" || fail "go get -tool $pkg@$version failed (see above)"
  echo "spire-peer: go install $pkg (GOBIN=$GOBIN)" >&2
  "$go" install -ldflags "-X github.com/spiffe/spire/pkg/common/version.gittag=${version#v}" "$pkg" ||
    fail "go install $pkg failed (see above)"
done
for program in "${programs[@]}"; do
  up_to_date "$program" ||
    fail "$cache/bin/$program does not report version ${version#v}: $("$cache/bin/$program" --version 2>&1 | head -1)"
done
echo "spire-peer: SPIRE $version built in $cache/bin" >&2
echo "$cache/bin"
