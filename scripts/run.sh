#!/usr/bin/env bash
# Set up, then run the appliance's main job on its embedded default configuration (AE title
# RADIANT on port 11112, health and metrics on http://127.0.0.1:8480, data in ./data): once it
# is up, DCMTK sends it the 108-slice head CT series and the received study is listed. The
# daemon keeps running in the foreground until Ctrl-C (a graceful shutdown).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
bash scripts/setup.sh

BIN=target/release/appliance
DATA_DIR="${DATA_DIR:-$REPO_ROOT/data}"
"$BIN" serve --data-dir "$DATA_DIR" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon' INT TERM

for _ in $(seq 100); do
    curl -fs http://127.0.0.1:8480/health/ready >/dev/null 2>&1 && break
    sleep 0.1
done
echo "== sending the 108-slice CT series with DCMTK storescu"
/usr/bin/storescu -aet STORESCU -aec RADIANT 127.0.0.1 11112 fixtures/ct-series/*.dcm
sleep 11   # the example's quiet period for STORESCU is 10 s
echo "== appliance studies list --json"
"$BIN" studies list --json --data-dir "$DATA_DIR"
echo "== running; metrics at http://127.0.0.1:8480/metrics; Ctrl-C stops the appliance"
wait $daemon
