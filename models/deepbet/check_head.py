#!/usr/bin/env python3
"""Check that the deepbet package's trainable head starts as the network itself, with ONNX
Runtime on the CPU (needs the venv of make_package.py: onnx, onnxruntime, numpy, safetensors,
and torch, nibabel and deepbet to prepare a real input):

    /tmp/dbvenv/bin/python models/deepbet/check_head.py [--package DIR] [--nifti PATH | --random]
        [--old OLD_brain_256.onnx] [--threads 2]

The brain stage's input is prepared as deepbet 1.0.2 prepares it (as parity.py does): the NIfTI
(default: Colin27, Debian mricron-data's ch2.nii.gz) in RAS order, 128^3 nearest-exact, the
package's bbox_128.onnx, largest component, deepbet's box with 10 % margin, the crop at 256^3
normalised with the 128^3 image's quantile window. `--random` (or a missing NIfTI) uses a
seeded standard normal [1, 1, 256, 256, 256] instead. Then:

* the manifest's hashes of brain_256.onnx and head.safetensors, and the graph's outputs:
  `brain_prob` first, then the manifest's `logits` and `features` with the declared shapes;
* (a) `brain_prob` of the package's graph, bit for bit, against `brain_prob` of the same graph
  without the two head outputs (their Identity nodes and outputs removed; the result should be
  byte-identical to the graph before they were added) and, with `--old`, of that file;
* (b) the head of head.safetensors applied in numpy as `models::head::Head` applies it (float32:
  softmax(w2 . relu(w1 . x + b1) + b2), x = the voxel's class logits then the `channels`
  features of the cell `index // stride` it lies in): its logits against `class_logits`, its
  class-1 probability against `brain_prob` (largest difference, where) and the voxels whose
  decision at 0.5 differs.

Exits non-zero when a check fails (the probability tolerance is 1e-5).
"""
import argparse
import hashlib
import os
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

HERE = Path(__file__).resolve().parent
COLIN27 = "/usr/share/mricron/templates/ch2.nii.gz"
TOLERANCE = 1e-5


def session(model, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def prepare(nifti, package, threads):
    """The brain stage's input for one NIfTI, as deepbet's run_model computes it."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F
    from deepbet.bet import BrainExtraction
    from deepbet.utils import keep_largest_connected_component, normalize
    img = nib.as_closest_canonical(nib.load(nifti))
    x = torch.nan_to_num(torch.from_numpy(img.get_fdata(dtype=np.float32)))
    small = F.interpolate(x[None, None], (128, 128, 128), mode="nearest-exact")[0, 0]
    low, high = small.quantile(.005), small.quantile(.995)
    bbox = session(str(package / "bbox_128.onnx"), threads)
    p_small = bbox.run(["brain_prob"], {"input": normalize(small, low, high)[None, None].numpy()})[0][0, 0]
    mask = keep_largest_connected_component((p_small > .5).astype(np.float32))
    # get_bbox_with_margin uses no model; skip loading deepbet's TorchScript files.
    box = BrainExtraction.get_bbox_with_margin(BrainExtraction.__new__(BrainExtraction),
                                               torch.from_numpy(mask), x.shape, .1)
    crop = F.interpolate(x[box][None, None], (256, 256, 256), mode="nearest-exact")[0, 0]
    print(f"input: {nifti}, shape {tuple(x.shape)}, box {[(s.start, s.stop) for s in box]}")
    return normalize(crop, low, high)[None, None].numpy()


def without_head_outputs(model, names):
    """The graph with the head's outputs and the Identity nodes that make them removed."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    g = stripped.graph
    nodes = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in names)]
    assert len(nodes) == len(g.node) - len(names), "one Identity node per head output"
    outputs = [o for o in g.output if o.name not in names]
    del g.node[:], g.output[:]
    g.node.extend(nodes)
    g.output.extend(outputs)
    return stripped


def apply_head(head, logits, features, stride, chunk=16):
    """Class probabilities [classes, D, H, W] of the head on every voxel, float32, in chunks of
    `chunk` planes along D."""
    w1, b1, w2, b2 = (head[k] for k in ("seg.w1", "seg.b1", "seg.w2", "seg.b2"))
    classes, side = logits.shape[0], logits.shape[1:]
    probs = np.empty((classes,) + side, np.float32)
    head_logits = np.empty_like(probs)
    live = 0
    for d in range(0, side[0], chunk):
        f = features[:, d // stride:(d + chunk) // stride]
        for axis in (1, 2, 3):
            f = np.repeat(f, stride, axis=axis)
        x = np.concatenate([logits[:, d:d + chunk], f]).reshape(classes + features.shape[0], -1)
        h = np.maximum(w1 @ x + b1[:, None], np.float32(0))
        live += int((h[2 * classes:] > 0).any(axis=0).sum())
        z = w2 @ h + b2[:, None]
        head_logits[:, d:d + chunk] = z.reshape((classes, -1) + side[1:])
        e = np.exp(z - z.max(axis=0))
        probs[:, d:d + chunk] = (e / e.sum(axis=0)).reshape((classes, -1) + side[1:])
    return probs, head_logits, live


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", type=Path, default=HERE / "package")
    ap.add_argument("--nifti", default=COLIN27)
    ap.add_argument("--random", action="store_true", help="a seeded N(0, 1) input instead of a NIfTI")
    ap.add_argument("--old", type=Path, help="another brain graph whose brain_prob must be equal")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    failures = []

    def check(ok, what):
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    manifest = tomllib.loads((args.package / "manifest.toml").read_text())
    stage = [s for s in manifest["stages"] if s["name"] == "brain"][0]
    t = stage["trainable"]
    graph_path, head_path = args.package / stage["file"], args.package / t["head"]
    check(sha256(graph_path) == stage["sha256"], f"{stage['file']} sha256 {stage['sha256']}")
    check(sha256(head_path) == t["head_sha256"], f"{t['head']} sha256 {t['head_sha256']}")
    head = load_file(str(head_path))
    inputs = 2 + t["channels"]
    shapes = {"seg.w1": (t["hidden"], inputs), "seg.b1": (t["hidden"],), "seg.w2": (2, t["hidden"]),
              "seg.b2": (2,), "cls.w": (2,), "cls.b": (1,)}
    check({k: (v.dtype, v.shape) for k, v in head.items()} == {k: (np.dtype("float32"), s) for k, s in shapes.items()},
          f"head tensors F32 {shapes}")
    print(f"head: {sum(v.size for v in head.values())} parameters "
          f"({sum(head[k].size for k in ('seg.w1', 'seg.b1', 'seg.w2', 'seg.b2'))} in the per-voxel MLP)")

    model = onnx.load(str(graph_path))
    names = [o.name for o in model.graph.output]
    check(names == [stage["output"], t["logits"], t["features"]], f"graph outputs {names}")

    if args.random or not os.path.exists(args.nifti):
        if not args.random:
            print(f"{args.nifti} not found: a seeded random input instead")
        x = np.random.default_rng(0).standard_normal((1, 1, 256, 256, 256), dtype=np.float32)
        print("input: N(0, 1), default_rng(0), [1, 1, 256, 256, 256]")
    else:
        x = prepare(args.nifti, args.package, args.threads)

    new = session(str(graph_path), args.threads)
    prob, logits, features = new.run(names, {stage["input"]: x})
    side = list(x.shape[2:])
    check(list(logits.shape) == [1, 2] + side, f"{t['logits']} shape {list(logits.shape)}")
    check(list(features.shape) == [1, t["channels"]] + [s // t["stride"] for s in side],
          f"{t['features']} shape {list(features.shape)}")

    stripped = without_head_outputs(model, {t["logits"], t["features"]}).SerializeToString()
    print(f"graph without the head outputs: sha256 {hashlib.sha256(stripped).hexdigest()}")
    references = {"the graph without the head outputs": stripped}
    if args.old:
        check(args.old.read_bytes() == stripped, f"the graph without the head outputs is byte-identical to {args.old}")
        references[str(args.old)] = str(args.old)
    for what, reference in references.items():
        old = session(reference, args.threads).run([stage["output"]], {stage["input"]: x})[0]
        differing = int((old.view(np.uint32) != prob.view(np.uint32)).sum())
        check(differing == 0, f"(a) brain_prob bitwise equal to {what}: {differing} voxels differ")

    probs, head_logits, live = apply_head(head, logits[0], features[0], t["stride"])
    differing = int((head_logits.view(np.uint32) != logits[0].view(np.uint32)).sum())
    check(differing == 0, f"head logits bitwise equal to {t['logits']}: {differing} values differ")
    diff = np.abs(probs[1] - prob[0, 0])
    at = np.unravel_index(int(diff.argmax()), diff.shape)
    check(diff.max() <= TOLERANCE, f"(b) head class-1 probability vs brain_prob: largest difference "
          f"{diff.max():.3g} at {[int(i) for i in at]} ({probs[1][at]:.8f} / {prob[0, 0][at]:.8f})")
    flipped = int(((probs[1] > .5) != (prob[0, 0] > .5)).sum())
    check(flipped == 0, f"(b) voxels whose decision at 0.5 differs: {flipped} of {diff.size}; "
          f"brain voxels {int((prob[0, 0] > .5).sum())}")
    print(f"feature units 4-{t['hidden'] - 1} active (some unit > 0) in {live} of {diff.size} voxels "
          f"({100 * live / diff.size:.1f} %): their output weights are 0, so they change nothing yet")
    if failures:
        sys.exit(f"{len(failures)} check(s) failed")


if __name__ == "__main__":
    main()
