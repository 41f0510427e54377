#!/usr/bin/env python3
"""Diagnostics for the ONNX export: float64 TorchScript reference vs float32 TorchScript and ORT
on deepbet's real mask-model input for a NIfTI, plus ORT per-op-type profile (2 threads)."""
import json, sys, time, os, warnings
from collections import defaultdict
import numpy as np, torch, onnxruntime as ort
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert import realistic_inputs
import deepbet.utils

torch.set_num_threads(2)
nii = sys.argv[1]
onnx_dir = os.path.dirname(os.path.abspath(__file__)) + "/onnx"
rec = realistic_inputs([nii], deepbet.utils.DATA_PATH)
res = {}
for name, ts_rel, fname in [("bbox", "models/bbox_model.pt", "deepbet_bbox_128.onnx"),
                            ("mask", "models/model.pt", "deepbet_mask_256.onnx")]:
    inp = rec[name][0]
    ts = torch.jit.load(f"{deepbet.utils.DATA_PATH}/{ts_rel}", map_location="cpu").eval()
    with torch.no_grad():
        f32 = ts(inp).numpy()[0, 1]
        f64 = ts.double()(inp.double()).numpy()[0, 1]
    so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.enable_profiling = True
    so.profile_file_prefix = f"/tmp/ort_prof_{name}"
    sess = ort.InferenceSession(f"{onnx_dir}/{fname}", so, providers=["CPUExecutionProvider"])
    o = sess.run(None, {"input": inp.numpy()})[0][0, 1]
    prof = sess.end_profiling()
    per_op = defaultdict(float)
    for ev in json.load(open(prof)):
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] += ev["dur"] / 1e6
    os.remove(prof)
    b64 = f64 > .5
    res[name] = {
        "max_abs_f32torch_vs_f64": float(np.abs(f32 - f64).max()),
        "max_abs_ort_vs_f64": float(np.abs(o - f64).max()),
        "max_abs_ort_vs_f32torch": float(np.abs(o - f32).max()),
        "thresh_disagree_f32torch_vs_f64": int(((f32 > .5) != b64).sum()),
        "thresh_disagree_ort_vs_f64": int(((o > .5) != b64).sum()),
        "ort_kernel_seconds_by_op": {k: round(v, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
    }
    print(name, json.dumps(res[name]), flush=True)
json.dump(res, open(f"{onnx_dir}/diag_parity_{os.path.basename(nii).split('.')[0]}.json", "w"), indent=1)
