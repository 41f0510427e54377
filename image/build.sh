#!/usr/bin/env bash
# Build the firmware bundle: the release binaries (appliance, updater), the systemd units, the
# default configuration, the reference model package, and the clinical self-test's golden study
# (fixtures/ct-series-lesion with what this build's `appliance infer` says of it, which the
# device's `appliance self-test` must reproduce), with bundle.json (SHA-256, size and mode of
# every file, version, hardware, the oldest version it can update from).
#
# Usage: image/build.sh [--version V] [--min-from V] [--out FILE]
#   --version   defaults to the workspace version (Cargo.toml)
#   --min-from  defaults to 0.1.0
#   --out       defaults to target/bundle/radiant-edge-VERSION-ARCH.tar
# Prints the bundle's path. Publish it with `fleet repo publish REPO FILE`.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
min_from=0.1.0
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --version) version="$2"; shift 2 ;;
        --min-from) min_from="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "image/build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
arch="$(uname -m)"
out="${out:-target/bundle/radiant-edge-$version-$arch.tar}"
mkdir -p "$(dirname "$out")"

cargo build --release -p appliance -p updater -p image --bin appliance --bin updater --bin bundle
# The release profile keeps debug info for benchmarks and backtraces; the device gets the
# binaries without it.
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
for bin in appliance updater; do
    strip --strip-debug -o "$staging/$bin" "target/release/$bin"
done
bash scripts/fixtures.sh >&2
target/release/appliance infer fixtures/ct-series-lesion --model models/reference/head-ct \
    > "$staging/expected.json"

target/release/bundle make --version "$version" --min-from "$min_from" --hardware "$arch" \
    --out "$out" \
    --file bin/appliance="$staging/appliance":755 \
    --file bin/updater="$staging/updater":755 \
    --file systemd/radiant-edge.service=image/systemd/radiant-edge.service:644 \
    --file systemd/radiant-updater.service=image/systemd/radiant-updater.service:644 \
    --file systemd/radiant-edge-restart.path=image/systemd/radiant-edge-restart.path:644 \
    --file systemd/radiant-edge-restart.service=image/systemd/radiant-edge-restart.service:644 \
    --file systemd/radiant-edge-models.service=image/systemd/radiant-edge-models.service:644 \
    --file systemd/radiant-edge-models.timer=image/systemd/radiant-edge-models.timer:644 \
    --file etc/appliance.toml=image/etc/appliance.toml:644 \
    --folder models/head-ct-ich=models/reference/head-ct \
    --folder selftest/study=fixtures/ct-series-lesion \
    --file selftest/expected.json="$staging/expected.json":644 >&2
echo "$out"
