#!/usr/bin/env python3
"""Compare ONNX variants (base / in2p / in2p_sig) against a float64 TorchScript reference on deepbet's
real model inputs for given NIfTIs; ORT CPU, 2 threads. Writes onnx/eval_variants.json."""
import sys, os, json, time, warnings
import numpy as np, torch, onnxruntime as ort
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert import realistic_inputs
import deepbet.utils
torch.set_num_threads(2)
D = os.path.dirname(os.path.abspath(__file__)) + "/onnx"
niis = sys.argv[1:]
rec = realistic_inputs(niis, deepbet.utils.DATA_PATH)
out = {}
for name, ts_rel, base in [("bbox", "models/bbox_model.pt", "deepbet_bbox_128"),
                           ("mask", "models/model.pt", "deepbet_mask_256")]:
    ts = torch.jit.load(f"{deepbet.utils.DATA_PATH}/{ts_rel}", map_location="cpu").eval()
    refs = []
    with torch.no_grad():
        for inp in rec[name]:
            r32 = ts(inp).numpy()[0, 1]
            r64 = ts.double()(inp.double()).float().numpy()[0, 1]
            ts.float()
            refs.append((r32, r64))
    for var in ["", "_in2p", "_in2p_sig"]:
        so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
        sess = ort.InferenceSession(f"{D}/{base}{var}.onnx", so, providers=["CPUExecutionProvider"])
        key = f"{base}{var}"; out[key] = {"cases": []}
        for nii, inp, (r32, r64) in zip(niis, rec[name], refs):
            o = sess.run(None, {"input": inp.numpy()})[0]
            o = o[0, 1] if o.shape[1] == 2 else o[0, 0]
            out[key]["cases"].append({
                "nifti": os.path.basename(nii),
                "max_abs_vs_torch_f64": float(np.abs(o - r64).max()),
                "max_abs_vs_torch_f32": float(np.abs(o - r32).max()),
                "torch_f32_vs_f64": float(np.abs(r32 - r64).max()),
                "gt05_disagree_vs_f64": int(((o > .5) != (r64 > .5)).sum()),
                "gt05_disagree_torch_f32_vs_f64": int(((r32 > .5) != (r64 > .5)).sum()),
                "gt05_voxels_f64": int((r64 > .5).sum()),
            })
        inp = rec[name][0].numpy()
        sess.run(None, {"input": inp})
        lat = []
        for _ in range(3):
            t0 = time.time(); sess.run(None, {"input": inp}); lat.append(time.time() - t0)
        out[key]["ort_latency_s_2threads"] = [round(x, 3) for x in lat]
        print(key, json.dumps(out[key]), flush=True)
json.dump(out, open(f"{D}/eval_variants.json", "w"), indent=1)
