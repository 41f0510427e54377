#!/usr/bin/env bash
# Build the DICOM test fixtures in <repo>/fixtures/ (gitignored).
#
# Owns: installing the fixture inputs (apt: invesalius-examples, mricron-data; pip:
# pydicom, pydicom-data, pynetdicom, numpy, highdicom, nibabel) when missing, then running
# scripts/make_fixtures.py and scripts/make_mr_fixtures.py, which return at once when their
# part of fixtures/ is complete.
# Idempotent; runnable from any directory; needs root only to install.
# Extra arguments go to make_fixtures.py (e.g. --force).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

# Debian packages carrying Cranium.inv3 (source of the CT series) and the Colin27 T1 MRI with
# its BET brain (source of the MR series).
for pkg in invesalius-examples mricron-data; do
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        echo "fixtures: installing $pkg" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends "$pkg"
    fi
done

# pip requirements that are not importable (or too old) yet. Checked with
# find_spec so nothing heavy gets imported; pydicom-data's module is data_store.
missing="$("$PYTHON" - <<'PY'
import importlib.metadata
import importlib.util


def major(dist):
    try:
        return int(importlib.metadata.version(dist).split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


need = []
if importlib.util.find_spec("pydicom") is None or major("pydicom") < 3:
    need.append("pydicom>=3,<4")  # make_fixtures.py uses the pydicom 3 API
if importlib.util.find_spec("data_store") is None:
    need.append("pydicom-data")
if importlib.util.find_spec("pynetdicom") is None or major("pynetdicom") < 2:
    need.append("pynetdicom>=2")
if importlib.util.find_spec("numpy") is None:
    need.append("numpy")
if importlib.util.find_spec("highdicom") is None:
    need.append("highdicom")  # the independent reader of the SEG and SR we write
if importlib.util.find_spec("nibabel") is None:
    need.append("nibabel")  # reads the NIfTI sources of the MR series
print(" ".join(need))
PY
)"
if [[ -n "$missing" ]]; then
    echo "fixtures: pip installing $missing" >&2
    # shellcheck disable=SC2086  # one word per requirement is intended
    # Debian's own python3 refuses user-wide installs (PEP 668) unless told otherwise.
    "$PYTHON" -m pip install --quiet $missing 2>/dev/null ||
        "$PYTHON" -m pip install --quiet --break-system-packages $missing
fi

"$PYTHON" "$REPO_ROOT/scripts/make_fixtures.py" "$@"
# The T1 MRI series (fixtures/mr); the MNI152 template comes from the nilearn wheel, which the
# script downloads without its dependencies.
"$PYTHON" "$REPO_ROOT/scripts/make_mr_fixtures.py"
