#!/usr/bin/env bash
# Set up, then run the appliance's main job on its embedded default configuration (AE title
# RADIANT on port 11112, health and metrics on http://127.0.0.1:8480, data in ./data, the
# reference model on tract/CPU): DCMTK sends it a 108-slice head CT series with an implanted
# lesion, the study completes, the model runs and its result is printed. The daemon keeps
# running in the foreground until Ctrl-C (a graceful shutdown).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
bash scripts/setup.sh

BIN=target/release/appliance
DATA_DIR="${DATA_DIR:-$REPO_ROOT/data}"
"$BIN" models install models/reference/head-ct --data-dir "$DATA_DIR"
"$BIN" serve --data-dir "$DATA_DIR" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon' INT TERM

for _ in $(seq 100); do
    curl -fs http://127.0.0.1:8480/health/ready >/dev/null 2>&1 && break
    sleep 0.1
done
echo "== sending the 108-slice head CT (implanted lesion) with DCMTK storescu"
/usr/bin/storescu -aet STORESCU -aec RADIANT 127.0.0.1 11112 fixtures/ct-series-lesion/*.dcm
STUDY=$(python3 -c "import json; print(json.load(open('fixtures/ct-series-lesion/manifest.json'))['study_instance_uid'])")
echo "== waiting for the study to complete (quiet period 10 s) and for inference"
for _ in $(seq 120); do
    "$BIN" results show "$STUDY" --json --data-dir "$DATA_DIR" 2>/dev/null | grep -q '"state":"done"' && break
    sleep 0.5
done
echo "== appliance studies list --json"
"$BIN" studies list --json --data-dir "$DATA_DIR"
echo "== appliance results show $STUDY"
"$BIN" results show "$STUDY" --data-dir "$DATA_DIR"
echo "== running; metrics at http://127.0.0.1:8480/metrics; Ctrl-C stops the appliance"
wait $daemon
