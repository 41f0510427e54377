#!/usr/bin/env bash
# Ingest benchmark: C-STORE throughput of the appliance against DCMTK storescp, Orthanc and a
# plain pynetdicom SCP, with DCMTK storescu as the sender (see hil-tests/src/bin/ingest_bench.rs).
#
# Builds the release binaries, makes sure the fixtures exist, then runs the benchmark.
# Arguments go to ingest_bench (e.g. --rounds 5). Runnable from any directory.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

cargo build --release -p appliance -p hil-tests
bash scripts/fixtures.sh
exec target/release/ingest_bench "$@"
