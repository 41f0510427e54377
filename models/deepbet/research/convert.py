#!/usr/bin/env python3
"""Export deepbet 1.0.2's two TorchScript LinkNet3d models to ONNX and check parity.

Usage (inside the venv /tmp/dbvenv):
    python convert.py [--out DIR] [--threads 2] [--realistic T1.nii.gz ...]

Writes DIR/deepbet_bbox_128.onnx and DIR/deepbet_mask_256.onnx (opset 17, static shapes)
and DIR/convert_results.json with sizes, sha256, parameter counts, I/O names and shapes,
op-type sets, TorchScript-vs-ORT max abs differences and ORT CPU latency.

Input shapes come from deepbet/bet.py BrainExtraction.run_model:
    bbox model: normalize(x_small)[None, None]  -> [1, 1, 128, 128, 128] float32
    mask model: normalize(x_crop)[None, None]   -> [1, 1, 256, 256, 256] float32
Both models end in torch.softmax(dim=1) over 2 channels, so the output is
[1, 2, D, H, W] probabilities; deepbet uses channel 1 (brain).
"""
import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")

MODELS = {
    # name: (TorchScript file inside deepbet's DATA_PATH, input spatial shape, onnx filename)
    "bbox": ("models/bbox_model.pt", (128, 128, 128), "deepbet_bbox_128.onnx"),
    "mask": ("models/model.pt", (256, 256, 256), "deepbet_mask_256.onnx"),
}
OPSET = 17


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(ts_model, shape, out_path, log):
    dummy = torch.randn(1, 1, *shape)
    kwargs = dict(input_names=["input"], output_names=["probs"], opset_version=OPSET,
                  do_constant_folding=True)
    # First try the exporter that is the default in this torch version; fall back to the
    # TorchScript-based exporter (dynamo=False), which is the one that handles ScriptModules.
    try:
        torch.onnx.export(ts_model, (dummy,), out_path, **kwargs)
        log.append(f"torch.onnx.export default exporter OK for {os.path.basename(out_path)}")
    except Exception as e:  # noqa: BLE001
        log.append(f"default exporter failed for {os.path.basename(out_path)}: "
                   f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        torch.onnx.export(ts_model, (dummy,), out_path, dynamo=False, **kwargs)
        log.append(f"torch.onnx.export(dynamo=False) OK for {os.path.basename(out_path)}")
    m = onnx.load(out_path)
    onnx.checker.check_model(m)
    return m


def io_desc(vis):
    out = []
    for v in vis:
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
        out.append({"name": v.name, "elem_type": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type),
                    "shape": dims})
    return out


def onnx_param_count(m):
    return int(sum(int(np.prod(t.dims)) for t in m.graph.initializer))


def node_attrs(m):
    """Attribute summary per op type (kernel sizes, strides, modes...) for the tract risk review."""
    summary = {}
    for n in m.graph.node:
        attrs = {}
        for a in n.attribute:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, (list, tuple)):
                v = list(v)
            if isinstance(v, (int, float, str, list)):
                attrs[a.name] = v
        key = json.dumps(attrs, sort_keys=True)
        summary.setdefault(n.op_type, Counter())[key] += 1
    return {k: {kk: vv for kk, vv in v.items()} for k, v in summary.items()}


def deepbet_normalize(x, low, high):
    # identical to deepbet.utils.normalize (torch.std is the unbiased N-1 estimator)
    x = (x - low) / (high - low)
    x = x.clamp(min=0, max=1)
    x = (x - x.mean()) / x.std()
    return .226 * x + .449


def realistic_inputs(nifti_paths, data_path):
    """Capture the exact tensors deepbet.BrainExtraction.run_model feeds to each model."""
    from deepbet.bet import BrainExtraction

    class Recorder(torch.nn.Module):
        def __init__(self, inner, store):
            super().__init__()
            self.inner, self.store = inner, store

        def forward(self, x):
            self.store.append(x.detach().clone())
            return self.inner(x)

    import nibabel as nib
    bet = BrainExtraction(no_gpu=True)
    rec = {"bbox": [], "mask": []}
    bet.bbox_model = Recorder(bet.bbox_model, rec["bbox"])
    bet.model = Recorder(bet.model, rec["mask"])
    for p in nifti_paths:
        img = nib.load(p)
        x = nib.as_closest_canonical(img).get_fdata(dtype=np.float32)
        x = x[..., 0] if x.ndim == 4 else x
        bet.run_model(x.copy())
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)) + "/onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--realistic", nargs="*", default=[])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)

    import deepbet.utils
    data_path = deepbet.utils.DATA_PATH
    results = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
               "opset": OPSET, "threads": args.threads, "models": {}, "log": []}

    rec = realistic_inputs(args.realistic, data_path) if args.realistic else {"bbox": [], "mask": []}

    for name, (rel, shape, fname) in MODELS.items():
        ts_path = f"{data_path}/{rel}"
        ts = torch.jit.load(ts_path, map_location="cpu").eval()
        out_path = os.path.join(args.out, fname)
        t0 = time.time()
        m = export(ts, shape, out_path, results["log"])
        r = {
            "torchscript_path": ts_path, "torchscript_sha256": sha256(ts_path),
            "torchscript_bytes": os.path.getsize(ts_path),
            "torch_param_count": int(sum(p.numel() for p in ts.parameters())),
            "onnx_path": out_path, "onnx_bytes": os.path.getsize(out_path), "onnx_sha256": sha256(out_path),
            "onnx_initializer_elements": onnx_param_count(m),
            "export_seconds": round(time.time() - t0, 2),
            "inputs": io_desc(m.graph.input), "outputs": io_desc(m.graph.output),
            "op_types": dict(Counter(n.op_type for n in m.graph.node)),
            "op_attrs": node_attrs(m),
            "opset_import": [(o.domain or "ai.onnx", o.version) for o in m.opset_import],
            "ir_version": m.ir_version,
        }
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(out_path, so, providers=["CPUExecutionProvider"])

        cases = []
        g = torch.Generator().manual_seed(0)
        cases.append(("randn", torch.randn(1, 1, *shape, generator=g)))
        # a deepbet-normalised random volume (uniform noise through deepbet's normalize)
        u = torch.rand(*shape, generator=g) * 1000
        cases.append(("rand_normalized", deepbet_normalize(u, torch.tensor(5.), torch.tensor(995.))[None, None]))
        for i, t in enumerate(rec[name]):
            cases.append((f"realistic_{os.path.basename(args.realistic[i])}", t))

        r["parity"] = []
        for cname, inp in cases:
            with torch.no_grad():
                t0 = time.time()
                ref = ts(inp).numpy()
                t_ts = time.time() - t0
            t0 = time.time()
            got = sess.run(None, {"input": inp.numpy()})[0]
            t_ort = time.time() - t0
            diff = np.abs(ref - got)
            r["parity"].append({
                "case": cname, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                "ch1_gt05_voxels_torch": int((ref[0, 1] > .5).sum()),
                "ch1_gt05_voxels_ort": int((got[0, 1] > .5).sum()),
                "ch1_gt05_disagreements": int(((ref[0, 1] > .5) != (got[0, 1] > .5)).sum()),
                "torchscript_seconds": round(t_ts, 3), "ort_seconds": round(t_ort, 3),
            })
            print(name, r["parity"][-1], flush=True)

        inp = cases[0][1].numpy()
        sess.run(None, {"input": inp})  # warm-up
        lat = []
        for _ in range(args.reps):
            t0 = time.time()
            sess.run(None, {"input": inp})
            lat.append(time.time() - t0)
        r["ort_cpu_latency_s"] = {"threads": args.threads, "runs": [round(x, 3) for x in lat],
                                  "median": round(float(np.median(lat)), 3)}
        lat = []
        with torch.no_grad():
            ts(cases[0][1])
            for _ in range(args.reps):
                t0 = time.time()
                ts(cases[0][1])
                lat.append(time.time() - t0)
        r["torchscript_cpu_latency_s"] = {"threads": args.threads, "runs": [round(x, 3) for x in lat],
                                          "median": round(float(np.median(lat)), 3)}
        results["models"][name] = r
        print(name, json.dumps({k: r[k] for k in ("onnx_bytes", "onnx_sha256", "torch_param_count",
                                                    "inputs", "outputs", "op_types",
                                                    "ort_cpu_latency_s", "torchscript_cpu_latency_s")}),
              flush=True)

    with open(os.path.join(args.out, "convert_results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("\n".join(results["log"]))


if __name__ == "__main__":
    sys.exit(main())
