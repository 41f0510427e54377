#!/usr/bin/env bash
# Benchmarks (not tests); see README's Benchmark section.
#   ingest: C-STORE throughput of the appliance against DCMTK storescp, Orthanc and a plain
#           pynetdicom SCP, with DCMTK storescu as the sender (hil-tests/src/bin/ingest_bench.rs).
#   infer:  per-study inference latency by stage for tract and ONNX Runtime on the CPU, with
#           Python onnxruntime on the same tensors as the reference (hil-tests/src/bin/infer_bench.rs).
#   learn:  inference latency of studies arriving while idle and while `appliance learn now`
#           fine-tunes, which must yield (hil-tests/src/bin/learn_bench.rs). Not in the default set.
#   federation: the fleet at scale, 200 light clients over mosquitto with mutual TLS against the
#           `federation` server, plain and with secure aggregation: connect time, round time,
#           server CPU and memory, bytes per device (hil-tests/src/bin/fleet_bench.rs); then the
#           federated-learning experiment on four simulated sites
#           (hil-tests/src/bin/fed_experiment.rs). Not in the default set.
#
# Usage: scripts/bench.sh [ingest|infer|learn|federation] [ARGS...]
#   With no selector ingest and infer run, in that order, and ARGS (e.g. --rounds 5) go to both;
#   with a selector only that benchmark runs and ARGS go to it (e.g. `scripts/bench.sh ingest
#   --tcp-nodelay`, `scripts/bench.sh infer --rounds 9`); `federation` runs `fleet_bench
#   --secure-aggregation` and then fed_experiment, and ARGS go to both (e.g. `scripts/bench.sh
#   federation --rounds 5`). Builds the release binaries and makes sure the fixtures exist
#   first. Runnable from any directory.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

benches=(ingest_bench infer_bench)
packages=(-p appliance -p hil-tests)
case "${1:-}" in
    ingest | infer | learn)
        benches=("$1_bench")
        shift
        ;;
    federation)
        benches=("fleet_bench --secure-aggregation" fed_experiment)
        packages+=(-p federation -p updater)
        shift
        ;;
esac

cargo build --release "${packages[@]}"
bash scripts/fixtures.sh
for bench in "${benches[@]}"; do
    read -r -a command <<<"$bench"
    [[ ${#benches[@]} -eq 1 ]] || echo "== ${bench} $*"
    "target/release/${command[0]}" "${command[@]:1}" "$@"
    [[ ${#benches[@]} -eq 1 ]] || echo
done
