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
#   models: deepbet per study on the MR fixtures, the appliance (ONNX Runtime and tract on the
#           CPU) against deepbet's own PyTorch pipeline, per stage, with peak memory
#           (models/deepbet/bench.py), a random-weight 100 M-parameter network's latency and
#           memory (models/synthetic/make_package.py), one labelled case's learning data of
#           each (hil-tests/src/bin/sampled_cache_bench.rs: bytes against the bound, time to
#           the trainable stage, sampling, a fine-tune), then mask parity and Dice
#           (models/deepbet/parity.py).
#           Needs a Python with torch, safetensors and deepbet 1.0.2: $DEEPBET_PYTHON, else a
#           venv made in target/deepbet-venv (PyPI's torch, several GB). Not in
#           the default set.
#
# Usage: scripts/bench.sh [ingest|infer|learn|federation|models] [ARGS...]
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
if [[ "${1:-}" == models ]]; then
    shift
    cargo build --release -p appliance -p hil-tests --bin appliance --bin sampled_cache_bench
    bash scripts/fixtures.sh
    python="${DEEPBET_PYTHON:-}"
    if [[ -z "$python" ]]; then
        python=target/deepbet-venv/bin/python
        if ! "$python" -c "import deepbet, torch" 2>/dev/null; then
            python3 -m venv target/deepbet-venv
            "$python" -m pip install --quiet deepbet==1.0.2 safetensors
        fi
    fi
    ort="$(python3 -c "import onnxruntime, os, glob; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.*'))[0])")"
    # The random-weight 100 M-parameter network, exported once into target/.
    grep -qs '^\[stages.trainable\]' target/synthetic-100m/manifest.toml ||
        "$python" models/synthetic/make_package.py --out target/synthetic-100m
    "$python" models/deepbet/bench.py --appliance target/release/appliance --ort-library "$ort" \
        --deepbet-python "$python" --synthetic target/synthetic-100m \
        --cache-bench target/release/sampled_cache_bench "$@" fixtures/mr/*/
    "$python" models/deepbet/parity.py --appliance target/release/appliance --ort-library "$ort" \
        fixtures/mr/*/
    exit 0
fi

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
