#!/usr/bin/env bash
# The whole test suite: unit tests of every crate and the whole-system tests of hil-tests,
# which start real peers (DCMTK, Orthanc) on loopback. One profile (release) for everything.
# Ends with one summary line over all test binaries.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
bash scripts/setup.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --no-fail-fast --workspace --lib --bins --tests 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
