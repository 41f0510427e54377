#!/usr/bin/env bash
# Install what the appliance and its tests need on Debian 12 (Rust toolchain assumed), build the
# release binaries, and prepare the DICOM fixtures. Idempotent: packages already present are
# not reinstalled, and cargo and the fixture builder skip what is up to date.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

# Real peers the tests start (DCMTK, Orthanc, dciodvfy) and the CT source of the fixtures.
# cmake builds CharLS (JPEG-LS) for dicom-pixeldata; binutils strips the firmware bundle's binaries;
# systemd-analyze checks the image's units; headless Chromium (with a font for the screenshots)
# browses the web console; rsyslog receives the audit trail; fuse3 mounts the power-cut file system.
APT_PACKAGES=(dcmtk orthanc dicom3tools invesalius-examples curl cmake mosquitto binutils systemd
    chromium fonts-dejavu-core rsyslog fuse3)
python3 -m pip --version >/dev/null 2>&1 || APT_PACKAGES+=(python3-pip)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The Debian package starts a system Orthanc on the default ports; the tests start their own.
    if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true; fi
    $SUDO service orthanc stop >/dev/null 2>&1 || true
    # Likewise the system mosquitto: the federation tests start their own TLS broker.
    if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
    $SUDO service mosquitto stop >/dev/null 2>&1 || true
fi

bash scripts/fixtures.sh

# ONNX Runtime for the `ort` backend: the shared library of the PyPI wheel, loaded at run time.
if ! python3 -c "import onnxruntime" 2>/dev/null; then
    echo "setup: pip installing onnxruntime" >&2
    python3 -m pip install --quiet onnxruntime 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages onnxruntime
fi
cargo build --release --workspace --bins
