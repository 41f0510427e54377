#!/usr/bin/env bash
# The whole test suite: unit tests of every crate and the whole-system tests of hil-tests,
# which start real peers (DCMTK, Orthanc) on loopback. One profile (release) for everything.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
bash scripts/setup.sh
cargo test --release --workspace
