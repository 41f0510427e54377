#!/usr/bin/env bash
# Power-cut exploration (issue 16): every durable path of the appliance (ingest, study
# completion with inference and delivery, labelled cases through fine-tune and champion,
# purge, model install, a firmware update rolled back then one committed, the site's part of
# a federated round) run on the lazy file system
# (hil-tests/src/lazyfs), cut right after a sync drawn from the path's trace of syncs, restarted
# on what survived and its invariants checked (hil-tests/src/power_cut.rs).
#
# Usage: scripts/crashcheck.sh [ARGS...]     e.g. --cuts 125 --seed 1, --path ingest,
#        --path ingest --cut 17 --seed 42 to replay one trial a report names.
# Needs /dev/fuse and fuse3 (scripts/setup.sh installs it); runs as the user who mounts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >&2
cargo build --release -p hil-tests --bin crashcheck >&2
exec target/release/crashcheck "$@"
