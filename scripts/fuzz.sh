#!/usr/bin/env bash
# Runs every fuzz target for a while (default 60 s each) on its stored corpus
# (fuzz/corpus/<target>, kept in the repository), with libFuzzer through cargo-fuzz. Needs
# cargo-fuzz (installed here if missing); on a stable toolchain RUSTC_BOOTSTRAP=1 lets it use
# the nightly flags it needs. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/ (keep it as a regression test).
#   scripts/fuzz.sh [SECONDS]          fuzz each target for SECONDS
#   scripts/fuzz.sh --minimize         shrink the stored corpora (cargo fuzz cmin)
#   scripts/fuzz.sh --grow SECONDS     fuzz each target's stored corpus in place for SECONDS,
#                                      then minimise it (the long runs in RELIABILITY.md)
# A normal run leaves the stored corpus untouched (it fuzzes a scratch copy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
targets=(frame_decoder message_decode handshake header_chain stun_response state_file v2_transport header_store config_file socks5_reply tor_control fleet_messages compact_blocks port_mapping overlay_announce)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
if [ "${1:-}" = "--grow" ]; then
  for t in "${targets[@]}"; do
    echo "== fuzz $t for ${2:-600}s, growing corpus/$t" >&2
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="${2:-600}" -rss_limit_mb=2048 \
      -print_final_stats=1
    cargo fuzz cmin "$t" "corpus/$t"
  done
  exit 0
fi
if [ "${1:-}" = "--minimize" ]; then
  for t in "${targets[@]}"; do
    cargo fuzz cmin "$t" "corpus/$t"
  done
  exit 0
fi
secs="${1:-60}"
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${secs}s" >&2
  log="$(mktemp)"
  # libFuzzer adds what it finds to its first corpus directory: a scratch copy keeps the
  # stored corpus as committed (grow it on purpose with --minimize after a long run).
  work="$(mktemp -d)"
  cp -r "corpus/$t/." "$work/"
  if ! cargo fuzz run "$t" "$work" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
      -print_final_stats=1 2>"$log"; then
    tail -40 "$log" >&2
    echo "fuzz target $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  summary+=("$t: $runs runs, $cov edges, no crash")
  rm -rf "$log" "$work"
done
echo "== fuzz summary (${secs}s per target)" >&2
printf '  %s\n' "${summary[@]}" >&2
