#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: which execution providers the ONNX Runtime library offers,
# then deepbet through the appliance on CUDA (`appliance infer --backend ort`) and on the CPU
# (`--backend ort-cpu`) for every MR fixture: latency of each and whether the masks are equal.
#
# Needs the release binary and fixtures/mr (scripts/setup.sh makes both; this script does not
# build, so it can run where there is no network) and the onnxruntime-gpu wheel's library:
#   ORT_GPU_LIBRARY=/path/to/onnxruntime/capi/libonnxruntime.so.1.x  (its folder also holds
#   libonnxruntime_providers_cuda.so), else the library of `$PYTHON -c "import onnxruntime"`.
# CUDA and cuDNN come from the system, or from the nvidia-* pip wheels of $PYTHON's
# site-packages (PyTorch's), which are put on LD_LIBRARY_PATH.
# Usage: scripts/gpu-check.sh [ROUNDS]   (default 5). Exits 2 without an NVIDIA GPU, 1 when
# CUDA did not run or a mask differs.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
rounds="${1:-5}"
PYTHON="${PYTHON:-python3}"
app=target/release/appliance

if ! nvidia-smi -L; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi failed)" >&2
    exit 2
fi
[[ -x $app ]] || { echo "gpu-check: $app missing (cargo build --release -p appliance)" >&2; exit 1; }
ls -d fixtures/mr/*/ >/dev/null || { echo "gpu-check: fixtures/mr missing (bash scripts/fixtures.sh)" >&2; exit 1; }

lib="${ORT_GPU_LIBRARY:-$("$PYTHON" -c "import onnxruntime, os, glob; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.*'))[0])")}"
echo "ONNX Runtime library: $lib"
ls "$(dirname "$lib")" | grep -E 'providers' || echo "(no provider libraries next to it)"
nvidia_libs="$("$PYTHON" - <<'PY' 2>/dev/null || true
import glob, os, site
paths = []
for root in site.getsitepackages():
    paths += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")))
print(":".join(paths))
PY
)"
export LD_LIBRARY_PATH="${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$PYTHON" -c "import onnxruntime as o; print('providers (python onnxruntime):', o.get_available_providers())" || true

out="$(mktemp -d)"
status=0
printf '| series | backend | first run ms | median of %s runs ms | masks equal to ort-cpu |\n| --- | --- | --- | --- | --- |\n' "$rounds"
for series in fixtures/mr/*/; do
    name="$(basename "$series")"
    for backend in ort-cpu ort; do
        times=()
        for ((i = 0; i < rounds; i++)); do
            start=$(date +%s%N)
            RUST_LOG=warn "$app" infer "$series" --model models/deepbet/package --backend "$backend" \
                --ort-library "$lib" --label-map "$out/$name-$backend.u8" >"$out/$name-$backend.json" 2>>"$out/infer.log"
            times+=("$((($(date +%s%N) - start) / 1000000))")
        done
        ran="$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['backend'])" "$out/$name-$backend.json")"
        median="$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
        equal="-"
        if [[ $backend == ort ]]; then
            if cmp -s "$out/$name-ort.u8" "$out/$name-ort-cpu.u8"; then equal=yes; else
                equal="no: $(cmp -l "$out/$name-ort.u8" "$out/$name-ort-cpu.u8" | wc -l) voxels differ"
                status=1
            fi
            [[ $ran == ort-cuda ]] || { echo "gpu-check: $name ran on $ran, not CUDA" >&2; status=1; }
        fi
        printf '| %s | %s | %s | %s | %s |\n' "$name" "$ran" "${times[0]}" "$median" "$equal"
    done
done
"$PYTHON" - "$out" <<'PY'
import json, sys, glob, os
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*-ort.json"))):
    t = json.load(open(path))["timings"]
    stages = ", ".join(f"{s['stage']} graph {s['graph_ms']:.0f} ms" for s in t.get("stages", []))
    print(f"{os.path.basename(path)}: {stages}")
PY
exit "$status"
