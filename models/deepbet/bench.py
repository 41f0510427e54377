#!/usr/bin/env python3
"""deepbet per study: the appliance (ONNX Runtime on the CPU, and tract) against deepbet's own
PyTorch pipeline, on the same T1 MRIs (fixtures/mr), with the same thread count, in one run.

The appliance runs as `appliance infer SERIES --export DIR` (DICOM decode, reorientation,
both stages, post-processing, the SEG and SR written and checked); its JSON gives each stage's
time. deepbet runs in a fresh process, step by step as its `BrainExtraction.run` does (deepbet
1.0.2, bet.py), with a clock around each step and the mask written as NIfTI. Peak memory is
each process's maximum resident set. Prints Markdown tables (median over --rounds).

    python models/deepbet/bench.py --appliance target/release/appliance --ort-library LIB \\
        [--threads 2] [--rounds 3] [--json OUT] fixtures/mr/colin27-axial ...
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

DEEPBET_STEPS = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
import fill_voids, nibabel as nib, numpy as np
import torch.nn.functional as F
from deepbet.bet import BrainExtraction
from deepbet.utils import normalize, keep_largest_connected_component, reoriented_nifti
t = {}
clock = time.perf_counter()
def lap(name):
    global clock
    now = time.perf_counter(); t[name] = t.get(name, 0) + (now - clock) * 1e3; clock = now
start = time.perf_counter()
bet = BrainExtraction(no_gpu=True)
lap("model_load")
img = nib.load(sys.argv[1]); raw = np.asanyarray(img.dataobj)
lap("decode")
x = nib.as_closest_canonical(img).get_fdata(dtype=np.float32)
lap("reorient")
x = torch.nan_to_num(torch.from_numpy(x)); mask = torch.zeros_like(x)
x_small = F.interpolate(x[None, None], (128, 128, 128), mode="nearest-exact")[0, 0]
low, high = x_small.quantile(.005), x_small.quantile(.995)
inp = normalize(x_small, low, high)[None, None]
lap("stage1_prepare")
with torch.no_grad():
    p_small = bet.bbox_model(inp)[0, 1]
lap("stage1_graph")
m_small = keep_largest_connected_component((p_small > .5).float().numpy())
bbox = bet.get_bbox_with_margin(torch.from_numpy(m_small), mask.shape, .1)
lap("stage1_decide")
crop = F.interpolate(x[bbox][None, None], (256, 256, 256), mode="nearest-exact")[0, 0]
inp = normalize(crop, low, high)[None, None]
lap("stage2_prepare")
with torch.no_grad():
    p = bet.model(inp)[0, 1]
lap("stage2_graph")
mask[bbox] = F.interpolate(p[None, None], mask[bbox].shape, mode="nearest-exact")[0, 0]
m = mask.numpy() > .5
m[bbox] = keep_largest_connected_component(m[bbox])
m[bbox] = fill_voids.fill(m[bbox])
lap("stage2_decide")
out = reoriented_nifti(m, img.affine, img.header); out.header.set_data_dtype(np.uint8)
out.to_filename(sys.argv[2])
lap("write")
t["total"] = (time.perf_counter() - start) * 1e3
t["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(t))
"""

ROWS = [("decode", "DICOM decode (ours) / NIfTI read (deepbet)"),
        ("reorient", "reorient to RAS"),
        ("stage1_prepare", "stage 1: resize 128³, percentiles, normalise"),
        ("stage1_graph", "stage 1: bbox network"),
        ("stage1_decide", "stage 1: threshold, largest component, box"),
        ("stage2_prepare", "crop, resize 256³, normalise"),
        ("stage2_graph", "stage 2: brain network"),
        ("stage2_decide", "back to the crop, threshold, post-processing"),
        ("write", "SEG + SR written and checked (ours) / mask NIfTI (deepbet)"),
        ("total", "end to end in the process"),
        ("wall", "wall, process start to exit"),
        ("peak_mib", "peak resident memory, MiB")]


def ours(args, series: Path, backend: str):
    out = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", args.appliance, "infer", str(series),
                           "--model", str(HERE / "package"), "--backend", backend,
                           "--ort-library", args.ort_library, "--export", str(out)],
                          capture_output=True, text=True)
    wall = (time.perf_counter() - start) * 1e3
    if done.returncode != 0:
        raise SystemExit(f"appliance infer {series} ({backend}): {done.stderr[-2000:]}")
    r = json.loads(done.stdout)["timings"]
    stages = {s["stage"]: s for s in r["stages"]}
    prepared = sum(s["prepare_ms"] for s in stages.values())
    decided = sum(s["decide_ms"] for s in stages.values())
    return {
        "decode": r["decode_ms"],
        "reorient": r["preprocess_ms"] - prepared,
        "stage1_prepare": stages["bbox"]["prepare_ms"],
        "stage1_graph": stages["bbox"]["graph_ms"],
        "stage1_decide": stages["bbox"]["decide_ms"],
        "stage2_prepare": stages["brain"]["prepare_ms"],
        "stage2_graph": stages["brain"]["graph_ms"],
        "stage2_decide": stages["brain"]["decide_ms"] + (r["postprocess_ms"] - decided),
        "write": r["export_ms"],
        "model_load": r["model_load_ms"],
        "total": r["model_load_ms"] + r["decode_ms"] + r["preprocess_ms"] + r["inference_ms"]
        + r["postprocess_ms"] + r["export_ms"],
        "wall": wall,
        "peak_mib": int(done.stderr.strip().splitlines()[-1]) / 1024,
    }


def deepbet(args, series: Path):
    out = Path(tempfile.mkdtemp(prefix="bench-deepbet-")) / "mask.nii.gz"
    start = time.perf_counter()
    done = subprocess.run([args.deepbet_python, "-c", DEEPBET_STEPS, str(series / "source.nii.gz"),
                           str(out), str(args.threads)], capture_output=True, text=True)
    wall = (time.perf_counter() - start) * 1e3
    if done.returncode != 0:
        raise SystemExit(f"deepbet {series}: {done.stderr[-2000:]}")
    t = json.loads(done.stdout.strip().splitlines()[-1])
    t["wall"] = wall
    return t


def synthetic(args, package: Path, series: Path):
    """The random-weight 100 M-parameter package (models/synthetic/make_package.py) on one
    series through the appliance: latency, peak memory, and what a learning cache of its last
    hidden layer (1024 channels on a 8x8 token grid per slice) would hold per case."""
    manifest = (package / "manifest.toml").read_text()
    params = int(manifest.split("parameters = ")[1].split()[0])
    rows = []
    for backend in ["ort-cpu"] + ([] if args.no_tract else ["tract"]):
        start = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", args.appliance, "infer", str(series),
                               "--model", str(package), "--backend", backend,
                               "--ort-library", args.ort_library], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            rows.append(f"| {backend} | failed: {done.stderr.strip().splitlines()[-2][-200:]} | | | |")
            continue
        r = json.loads(done.stdout)
        slices = r["slices"]
        graph = r["timings"]["inference_ms"]
        peak = int(done.stderr.strip().splitlines()[-1]) / 1024
        rows.append(f"| {backend} | {wall:.1f} | {graph / slices:.0f} | {r['timings']['model_load_ms']:.0f} | {peak:.0f} |")
    print(f"\n### synthetic backbone: {params:,} parameters, RANDOM WEIGHTS ({series.name}, {slices} slices of 128x128)\n")
    print("| backend | wall s | graph ms per slice | model load ms | peak MiB |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


def learning_cache(args, packages, series: Path):
    """One labelled case of each package as the learner stores it (sampled_cache_bench: the
    series to the trainable stage, the class-balanced sample, a 10-epoch fine-tune of the
    head), with the fixture's independent mask as the label."""
    print(f"\n### learning data of one case ({series.name}, ONNX Runtime CPU)\n")
    print("| model | head inputs | case bytes (bound) | head inputs on every voxel | to the trainable stage ms | sample ms | fine-tune 10 epochs ms | peak MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for package in packages:
        done = subprocess.run([args.cache_bench, "--model", str(package), "--series", str(series),
                               "--labels", str(series / "truth.u8"), "--ort-library", args.ort_library],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {package.name} | failed: {done.stderr.strip()[-200:]} |")
            continue
        r = json.loads(done.stdout)
        print(f"| {r['model']} | {r['head_inputs']} | {r['case_bytes']:,} ({r['case_bytes_bound']:,}) "
              f"| {r['dense_head_inputs_bytes'] / 2**20:,.0f} MiB | {r['extract_ms']:.0f} | {r['sample_ms']:.0f} "
              f"| {r['fine_tune_ms']:.0f} | {r['peak_rss_mib']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("series", nargs="+", type=Path)
    ap.add_argument("--appliance", required=True)
    ap.add_argument("--ort-library", required=True)
    ap.add_argument("--deepbet-python", default=sys.executable)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-tract", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--synthetic", type=Path, help="also run this synthetic package on the first series")
    ap.add_argument("--cache-bench", help="sampled_cache_bench: measure one case's learning data "
                    "of deepbet (and of the synthetic package) on the first series")
    ap.add_argument("--deepbet-package", type=Path,
                    default=Path(__file__).resolve().parent / "package")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    runners = {"ort-cpu": lambda s: ours(args, s, "ort-cpu"), "deepbet": lambda s: deepbet(args, s)}
    if not args.no_tract:
        runners["tract"] = lambda s: ours(args, s, "tract")
    results = {}
    for series in args.series:
        runs = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():  # interleaved, so drift hits all alike
                runs[name].append(run(series))
        results[series.name] = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                                for name, rs in runs.items()}
        cols = list(runners)
        print(f"\n### {series.name} (median of {args.rounds}, {args.threads} threads; ms unless said)\n")
        print("| step | " + " | ".join(cols) + " |")
        print("| --- |" + " --- |" * len(cols))
        for key, label in ROWS:
            cells = [f"{results[series.name][c].get(key, float('nan')):.0f}" for c in cols]
            print(f"| {label} | " + " | ".join(cells) + " |")
        ratio = results[series.name]["deepbet"]["wall"] / results[series.name]["ort-cpu"]["wall"]
        print(f"\nappliance (ONNX Runtime) end to end is {ratio:.2f}x as fast as deepbet's own pipeline (wall).")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.synthetic:
        synthetic(args, args.synthetic, args.series[0])
    if args.cache_bench:
        learning_cache(args, [args.deepbet_package] + ([args.synthetic] if args.synthetic else []),
                       args.series[0])


if __name__ == "__main__":
    main()
