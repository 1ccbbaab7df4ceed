#!/usr/bin/env bash
# Runs the whole meshd test suite on a fresh machine: installs the test dependencies
# (bcoin from npm, cargo-nextest and cargo-fuzz if missing), checks formatting and lints,
# then runs every test (unit, property, integration over loopback, end-to-end with the real
# binary, interop with bcoin) and every fuzz target for 20 s on its stored corpus. Exits
# non-zero on the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-test-deps.sh

# A CI run builds once from a clean clone: incremental caches would only take disk (a full
# one ran out of space during the fuzz builds).
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=0
fi

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check

echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

echo "== tests" >&2
# Tests that cannot find a dependency skip outside CI (and fail in CI); each skip is logged
# here and listed at the end, so a skip is never silent.
export MESHD_SKIP_LOG
MESHD_SKIP_LOG="$(mktemp)"
trap 'rm -f "$MESHD_SKIP_LOG"' EXIT
cargo nextest run --workspace --no-fail-fast --profile ci
if [ -s "$MESHD_SKIP_LOG" ]; then
  echo "== SKIPPED tests ($(wc -l <"$MESHD_SKIP_LOG")): dependencies missing outside CI" >&2
  sed 's/^/   /' "$MESHD_SKIP_LOG" >&2
else
  echo "== skipped tests: none" >&2
fi

# Every fuzz target for a short, bounded time on its stored corpus, so a regression in a
# decoder of peer input is caught here (longer runs: scripts/fuzz.sh 600).
echo "== fuzz targets (20 s each)" >&2
bash scripts/fuzz.sh 20
