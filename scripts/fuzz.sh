#!/usr/bin/env bash
# Fuzz one target with AFL++ (the `afl` crate, stable toolchain) for SECONDS, then print its
# executions, run time and crash/hang counts from AFL++'s fuzzer_stats.
#
#   scripts/fuzz.sh TARGET SECONDS      TARGET: pdu dimse dataset volume seg sr_read manifest
#
# Builds fuzz/ (its own workspace and target folder; CI never builds it) with
# `cargo afl build --release`, then runs `cargo afl fuzz -V SECONDS` from the committed seeds in
# fuzz/seeds/TARGET into fuzz/out/TARGET (git-ignored; an earlier run there is resumed from its
# queue, AFL_AUTORESUME). Crashes land in fuzz/out/TARGET/default/crashes/. Needs
# `cargo install cargo-afl` (see fuzz/README.md). Extra environment: FUZZ_NICE (default 19),
# FUZZ_MEM_MB (AFL++ memory limit, default 2048), FUZZ_TIMEOUT_MS (per-input limit; default
# AFL++'s own choice, which a loaded machine turns into false hangs).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGETS="pdu dimse dataset volume seg sr_read manifest"

usage() {
    echo "usage: scripts/fuzz.sh TARGET SECONDS   (TARGET: ${TARGETS// /, })" >&2
    exit 2
}
[[ $# -eq 2 ]] || usage
target="$1"
seconds="$2"
[[ " $TARGETS " == *" $target "* ]] || usage
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || usage

cd "$REPO_ROOT/fuzz"
nice -n "${FUZZ_NICE:-19}" cargo afl build --release --bin "$target"

out="$REPO_ROOT/fuzz/out/$target"
mkdir -p "$out"
export AFL_SKIP_CPUFREQ=1                       # shared machine: no CPU governor to set
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1  # core_pattern belongs to the host
export AFL_NO_UI=1                              # status lines into the log, not a TUI
export AFL_AUTORESUME=1                         # a second run continues the first one's queue
export AFL_NO_AFFINITY=1                        # other fuzzers and compilers share the cores
timeout=()
[[ -n "${FUZZ_TIMEOUT_MS:-}" ]] && timeout=(-t "$FUZZ_TIMEOUT_MS")
nice -n "${FUZZ_NICE:-19}" cargo afl fuzz -V "$seconds" -m "${FUZZ_MEM_MB:-2048}" "${timeout[@]}" \
    -i "$REPO_ROOT/fuzz/seeds/$target" -o "$out" -- "$REPO_ROOT/fuzz/target/release/$target"

stats="$out/default/fuzzer_stats"
field() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
echo "target $target: $(field execs_done) executions in $(field run_time) s" \
    "($(field execs_per_sec) per s), corpus $(field corpus_count)," \
    "crashes $(field saved_crashes), hangs $(field saved_hangs)"
