#!/usr/bin/env python3
"""Write the reference validation set ``models/reference/head-ct/validation.safetensors``.

The set the validation gate (``models::gate``) scores a fine-tuned head on, to check that
learning at a site did not make the model worse on what it was built for. It uses the
anatomy, labels and simulated-study generator of ``train_head_ct.py`` (imported, not copied)
with split 2: seeds ``[20250611, 2, k]``, never used for training (split 0) nor for the
card's held-out metrics (split 1). Nothing is trained here; ``backbone.onnx`` and
``head.safetensors`` are not read nor written.

Content: the first ``POSITIVES`` studies of split 2 with lesions and the first ``NEGATIVES``
without, in study order. From each, ``SLICES`` consecutive model-grid slices:

- with lesions: centred on the slice with the most lesion pixels;
- without: centred on a slice drawn (seed ``[20250611, 2, k, 1]``) among those whose
  intracranial area is at least half the study's largest, so that the negatives cover
  several levels of the brain.

File format (safetensors, little-endian):

- ``input`` U8 [slices, 3, 64, 64]: the model input (the windowed channels, in [0, 1])
  quantised as round(255 * value). The set *is* these values: a reader dequantises with
  value / 255 and runs the backbone on that, never on the unquantised floats.
- ``labels`` U8 [slices, 64, 64]: 0 background, 1 intracranial space, 2 lesion, on the
  model grid (as ``model_labels`` makes them).
- ``slices`` U32 [cases]: slices per case, in file order (they sum to the first dimension).
- ``finding`` U8 [cases]: 1 when the case's slices contain a lesion pixel, else 0.
- ``pixel_ml`` F64 [cases]: volume of one model pixel, 3.9 * 3.9 * slice spacing / 1000.
- metadata: ``about``, ``quantisation``, and ``cases`` (JSON: per case its study index,
  first slice and lesions).

Then the ``[validation]`` section of ``head-ct/manifest.toml`` (file, sha256, cases) is
written, replacing an earlier one; the rest of the manifest is left as it is, byte for
byte. ``train_head_ct.py`` keeps that section when it rewrites the manifest, since the
set depends only on the anatomy and the study generator, not on the backbone or head; run
this script again whenever the generator or the input contract changes.

Usage: ``python3 models/reference/make_validation_set.py`` (about a minute on 2 CPU cores;
deterministic: same bytes on every run on the same machine).
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_head_ct as ref  # noqa: E402  (sets single-threaded BLAS before numpy loads)

import numpy as np  # noqa: E402

SPLIT = 2
POSITIVES = 4
NEGATIVES = 4
SLICES = 10
MAX_STUDIES = 64  # give up rather than loop forever if the generator changes
OUT = ref.PACKAGE_DIR / "validation.safetensors"
MANIFEST = ref.PACKAGE_DIR / "manifest.toml"


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """safetensors with any of the dtypes used here; tensors sorted by name, header padded to 8."""
    dtypes = {np.dtype("uint8"): "U8", np.dtype("<u4"): "U32", np.dtype("<f8"): "F64"}
    header: dict = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        data = array.tobytes()
        header[name] = {"dtype": dtypes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def choose_block(study: dict, k: int) -> int:
    """First slice of the block of SLICES slices taken from the study."""
    labels = study["labels"]
    n = len(labels)
    lesion = (labels == 2).sum(axis=(1, 2))
    if lesion.any():
        centre = int(lesion.argmax())
    else:
        area = (labels >= 1).sum(axis=(1, 2))
        candidates = np.flatnonzero(area >= 0.5 * area.max())
        centre = int(np.random.default_rng([ref.SEED, SPLIT, k, 1]).choice(candidates))
    return int(np.clip(centre - SLICES // 2, 0, n - SLICES))


def write_manifest_section(sha: str, cases: int) -> None:
    text = MANIFEST.read_text()
    section = f'[validation]\nfile = "{OUT.name}"\nsha256 = "{sha}"\ncases = {cases}\n'
    # An earlier section: its header and the non-empty lines up to the next table or blank line.
    text, n = re.subn(r"\[validation\]\n(?:[^\[\n].*\n)*", section, text)
    if n == 0:
        # Before [metrics] when there is one, at the end otherwise.
        at = text.find("\n[metrics]\n")
        text = text + "\n" + section if at < 0 else text[:at + 1] + section + "\n" + text[at + 1:]
    MANIFEST.write_text(text)


def main() -> int:
    from scipy import ndimage as ndi

    ref.log("anatomy and intracranial label")
    hu, spacing = ref.load_anatomy()
    sx, sy, sz = spacing
    ic = ref.intracranial_mask(hu, spacing)
    ic_depth = ndi.distance_transform_edt(ic, sampling=(sz, sy, sx))
    pixel_ml = ref.SPACING_MM * ref.SPACING_MM * sz / 1000.0

    inputs, labels, slices, findings, cases = [], [], [], [], []
    want = {True: POSITIVES, False: NEGATIVES}
    for k in range(MAX_STUDIES):
        if not any(want.values()):
            break
        study = ref.make_study(SPLIT, k, hu, ic, ic_depth, spacing)
        positive = bool(study["lesions"])
        if want[positive] == 0:
            continue
        want[positive] -= 1
        first = choose_block(study, k)
        block = slice(first, first + SLICES)
        q = np.round(study["image"][block] * 255.0)
        if q.min() < 0 or q.max() > 255:
            raise SystemExit(f"study {k}: model input outside [0, 1]")
        inputs.append(q.astype(np.uint8))
        labels.append(study["labels"][block].astype(np.uint8))
        finding = bool((study["labels"][block] == 2).any())
        if finding != positive:
            raise SystemExit(f"study {k}: the block misses the lesion")
        slices.append(SLICES)
        findings.append(finding)
        lesion_px = int((study["labels"][block] == 2).sum())
        cases.append({"study": k, "first_slice": first, "lesions": study["lesions"], "lesion_pixels": lesion_px})
        ref.log(f"  study {k}: slices {first}-{first + SLICES - 1}, lesion pixels {lesion_px}, "
                f"lesions {study['lesions']}")
    else:
        raise SystemExit(f"split {SPLIT}: fewer than {POSITIVES} + {NEGATIVES} studies in {MAX_STUDIES}")

    tensors = {
        "input": np.concatenate(inputs),
        "labels": np.concatenate(labels),
        "slices": np.array(slices, dtype="<u4"),
        "finding": np.array(findings, dtype=np.uint8),
        "pixel_ml": np.full(len(cases), pixel_ml, dtype="<f8"),
    }
    metadata = {
        "about": f"Reference validation set of head-ct-ich, split {SPLIT} of models/reference/train_head_ct.py "
                 "(seeds [20250611, 2, k]); written by models/reference/make_validation_set.py.",
        "quantisation": "input = round(255 * model input); read back as input / 255",
        "cases": json.dumps(cases, separators=(",", ":")),
    }
    data = safetensors_bytes(tensors, metadata)
    OUT.write_bytes(data)
    sha = ref.sha256(data)
    write_manifest_section(sha, len(cases))
    ref.log(f"wrote {OUT} ({len(data)} bytes, {len(cases)} cases, {sum(slices)} slices, sha256 {sha}) "
            f"and the [validation] section of {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
