#!/usr/bin/env python3
"""The appliance's deepbet masks against deepbet's own PyTorch pipeline and against the
independent masks, on the MR fixtures (scripts/make_mr_fixtures.py).

For each fixture series: `appliance infer` on its DICOM files (the package in
models/deepbet/package, ONNX Runtime on the CPU), and deepbet 1.0.2's `run_bet` on the NIfTI of
exactly the same voxels (`source.nii.gz`), both with the same thread count. Prints a Markdown
table: Dice of each against the truth, Dice and differing voxels between the two, wall times
and peak memory. Needs the venv of make_package.py (torch, deepbet, nibabel).

    /tmp/dbvenv/bin/python models/deepbet/parity.py fixtures/mr/* \\
        --appliance target/release/appliance --ort-library LIB [--threads 2] [--json OUT]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def run_appliance(args, series: Path, out: Path):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", args.appliance, "infer", str(series),
                           "--model", str(HERE / "package"), "--backend", "ort-cpu",
                           "--ort-library", args.ort_library, "--label-map", str(out)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"appliance infer {series}: {done.stderr}")
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout), wall, peak_kib


DEEPBET = """
import sys, time, resource, torch
torch.set_num_threads(int(sys.argv[3]))
from deepbet import run_bet
start = time.perf_counter()
run_bet([sys.argv[1]], mask_paths=[sys.argv[2]], no_gpu=True)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_deepbet(args, source: Path, out: Path):
    """deepbet's own pipeline in a fresh process (its peak memory is its own)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DEEPBET, str(source), str(out), str(args.threads)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"deepbet {source}: {done.stderr[-2000:]}")
    inner, peak_kib = done.stdout.strip().splitlines()[-1].split()
    return float(inner), wall, int(peak_kib)


PROBABILITIES = r"""
import json, sys
import numpy as np, nibabel as nib, onnxruntime as ort, torch
import torch.nn.functional as F
torch.set_num_threads(int(sys.argv[3]))
from deepbet.bet import BrainExtraction
from deepbet.utils import normalize, keep_largest_connected_component
bet = BrainExtraction(no_gpu=True)
options = ort.SessionOptions(); options.intra_op_num_threads = int(sys.argv[3])
graphs = {name: ort.InferenceSession(f"{sys.argv[2]}/{name}.onnx", options, providers=["CPUExecutionProvider"])
          for name in ("bbox_128", "brain_256")}
x = torch.nan_to_num(torch.from_numpy(nib.as_closest_canonical(nib.load(sys.argv[1])).get_fdata(dtype=np.float32)))
small = F.interpolate(x[None, None], (128, 128, 128), mode="nearest-exact")[0, 0]
low, high = small.quantile(.005), small.quantile(.995)
out = {}
def compare(name, model, tensor):
    with torch.no_grad():
        theirs = model(tensor)[0, 1].numpy()
    ours = graphs[name].run(None, {"input": tensor.numpy()})[0][0, 0]
    diff = np.abs(theirs - ours)
    at = np.unravel_index(int(diff.argmax()), diff.shape)
    out[name] = {"max_abs_difference": float(diff.max()), "at": [int(i) for i in at],
                 "torch_there": float(theirs[at]), "onnx_there": float(ours[at]),
                 "flipped_at_0.5": int(((theirs > .5) != (ours > .5)).sum())}
    return theirs
p_small = compare("bbox_128", bet.bbox_model, normalize(small, low, high)[None, None])
mask = keep_largest_connected_component((p_small > .5).astype(np.float32))
box = bet.get_bbox_with_margin(torch.from_numpy(mask), x.shape, .1)
crop = F.interpolate(x[box][None, None], (256, 256, 256), mode="nearest-exact")[0, 0]
compare("brain_256", bet.model, normalize(crop, low, high)[None, None])
print(json.dumps(out))
"""


def probabilities(args, source: Path):
    """The package's graphs (ONNX Runtime) against deepbet's TorchScript models on the exact
    tensors deepbet's pipeline feeds them: the largest probability difference and where."""
    done = subprocess.run([sys.executable, "-c", PROBABILITIES, str(source), str(HERE / "package"),
                           str(args.threads)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"probabilities {source}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    import nibabel as nib
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("series", nargs="+", type=Path)
    ap.add_argument("--appliance", required=True)
    ap.add_argument("--ort-library", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="deepbet-parity-"))
    for series in args.series:
        manifest = json.loads((series / "manifest.json").read_text())
        shape = tuple(manifest["shape"])
        truth = np.frombuffer((series / "truth.u8").read_bytes(), np.uint8).reshape(shape)
        result, wall, peak = run_appliance(args, series, tmp / "ours.u8")
        ours = np.frombuffer((tmp / "ours.u8").read_bytes(), np.uint8).reshape(shape)
        inner, db_wall, db_peak = run_deepbet(args, series / "source.nii.gz", tmp / "deepbet.nii.gz")
        # The NIfTI is [column, row, slice]; the label map [slice, row, column].
        theirs = np.transpose(np.asarray(nib.load(str(tmp / "deepbet.nii.gz")).dataobj), (2, 1, 0))
        differ = np.argwhere(ours.astype(bool) != theirs.astype(bool))
        probs = probabilities(args, series / "source.nii.gz")
        row = {
            "series": series.name,
            "dice_ours_truth": round(dice(ours, truth), 4),
            "dice_deepbet_truth": round(dice(theirs, truth), 4),
            "dice_ours_deepbet": round(dice(ours, theirs), 6),
            "voxels_differing": int(len(differ)),
            "first_differences": differ[:5].tolist(),
            "probabilities": probs,
            "ours_s": round(wall, 2),
            "ours_peak_mib": round(peak / 1024),
            "deepbet_s": round(db_wall, 2),
            "deepbet_run_bet_s": round(inner, 2),
            "deepbet_peak_mib": round(db_peak / 1024),
            "stages": result["timings"].get("stages", []),
            "timings": {k: v for k, v in result["timings"].items() if k != "stages"},
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("stages", "timings")}), file=sys.stderr)
    print("| series | stage | largest probability difference | at (voxel of the graph's grid) | PyTorch / ONNX there | voxels on the other side of 0.5 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        for name, p in r["probabilities"].items():
            print(f"| {r['series']} | {name} | {p['max_abs_difference']:.2e} | {p['at']} | "
                  f"{p['torch_there']:.6f} / {p['onnx_there']:.6f} | {p['flipped_at_0.5']} |")
    print()
    print("| series | Dice ours vs truth | Dice deepbet vs truth | Dice ours vs deepbet | voxels differing | ours s (peak MiB) | deepbet s (peak MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['series']} | {r['dice_ours_truth']} | {r['dice_deepbet_truth']} | {r['dice_ours_deepbet']} | "
              f"{r['voxels_differing']} | {r['ours_s']} ({r['ours_peak_mib']}) | {r['deepbet_s']} ({r['deepbet_peak_mib']}) |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
