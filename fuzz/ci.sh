#!/usr/bin/env bash
# Runs the cheap fuzz targets (those over sigil-proto alone) for a bounded time each, on the
# stable toolchain and without cargo-fuzz: it builds them with the coverage flags cargo-fuzz
# passes (no sanitizer, so no -Z flag is needed) and runs libFuzzer on a scratch corpus seeded
# from the committed one. Any crash fails the run and leaves the input in fuzz/artifacts/.
#   fuzz/ci.sh [SECONDS_PER_TARGET]   (default 15)
# The server/agent targets (server_config, agent_config, csr, jwt_svid) need both crates built
# again with instrumentation; CI covers their input space with proptests instead (README
# "Fuzzing"). Run them locally with cargo-fuzz: cargo fuzz run --features server-agent csr
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-15}"
targets=(spiffe_id selector id_template hcl)

host="$(rustc -vV | sed -n 's/^host: //p')"
# --target keeps the instrumentation off build scripts and proc macros, as cargo-fuzz does.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# A debug build: it compiles in half the time of a release one, which matters more for a
# 15-second smoke run than the executions per second it gives up.
cargo build --locked --target "$host" $(printf -- '--bin %s ' "${targets[@]}")

mkdir -p artifacts
for t in "${targets[@]}"; do
  scratch="$(mktemp -d)"
  echo "fuzzing $t for ${seconds}s"
  rc=0
  "$CARGO_TARGET_DIR/$host/debug/$t" "$scratch" "corpus/$t" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -artifact_prefix="artifacts/$t-" -print_final_stats=1 >"$scratch.log" 2>&1 || rc=$?
  grep -E '^(Done|stat::number_of_executed_units|SUMMARY)|panicked' "$scratch.log" || true
  if [ "$rc" -ne 0 ]; then tail -n 30 "$scratch.log" >&2; fi
  rm -f "$scratch.log"
  rm -rf "$scratch"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz target $t failed (exit $rc); the crashing input is in fuzz/artifacts/" >&2
    exit 1
  fi
done
