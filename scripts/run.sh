#!/usr/bin/env bash
# Set up, then run the appliance's main job on its embedded default configuration (AE title
# RADIANT on port 11112, health and metrics on http://127.0.0.1:8480, data in ./data, the
# reference model on tract/CPU): DCMTK sends it a 108-slice head CT series with an implanted
# lesion, the study completes, the model runs and its result is printed; the result goes back
# as a DICOM SEG and SR to the default destination "pacs" (127.0.0.1:4242), played here by a
# throw-away Orthanc, whose holdings are printed. The daemon keeps running in the foreground
# until Ctrl-C (a graceful shutdown).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
bash scripts/setup.sh

BIN=target/release/appliance
DATA_DIR="${DATA_DIR:-$REPO_ROOT/data}"
"$BIN" models install models/reference/head-ct --data-dir "$DATA_DIR"

# The PACS: Orthanc on the default destination's port (4242), REST on 8042, storage in data/.
mkdir -p "$DATA_DIR/pacs"
cat >"$DATA_DIR/pacs/orthanc.json" <<JSON
{ "Name": "demo-pacs", "StorageDirectory": "$DATA_DIR/pacs/storage",
  "IndexDirectory": "$DATA_DIR/pacs/index", "DicomAet": "PACS", "DicomPort": 4242,
  "HttpPort": 8042, "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
  "DicomCheckCalledAet": false, "DicomAlwaysAllowStore": true, "Plugins": [] }
JSON
/usr/sbin/Orthanc "$DATA_DIR/pacs/orthanc.json" >"$DATA_DIR/pacs/orthanc.log" 2>&1 &
pacs=$!

"$BIN" serve --data-dir "$DATA_DIR" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null || true; kill $pacs 2>/dev/null || true' INT TERM EXIT

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
echo "== delivering the SEG and SR to the PACS (appliance outbox list)"
for _ in $(seq 60); do
    "$BIN" outbox list --state pending --data-dir "$DATA_DIR" | grep -q . || break
    sleep 0.5
done
"$BIN" outbox list --data-dir "$DATA_DIR"
echo "== what the PACS (Orthanc) now holds for the study: series and modalities"
for s in $(curl -fs http://127.0.0.1:8042/series | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)))'); do
    curl -fs "http://127.0.0.1:8042/series/$s" |
        python3 -c 'import json,sys; s=json.load(sys.stdin); t=s["MainDicomTags"]; print("  %-4s %4d instance(s)  %s" % (t.get("Modality", "?"), len(s["Instances"]), t.get("SeriesDescription", "")))'
done
echo "== running; metrics at http://127.0.0.1:8480/metrics; Ctrl-C stops the appliance"
wait $daemon
