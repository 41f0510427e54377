#!/usr/bin/env python3
"""ORT CPU latency of each ONNX file in onnx/ (fresh process, random normal input, 1 warm-up + N runs)."""
import glob, os, sys, time, json
import numpy as np, onnxruntime as ort
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
D = os.path.dirname(os.path.abspath(__file__)) + "/onnx"
res = {}
for f in sorted(glob.glob(f"{D}/deepbet_*.onnx")):
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    t0 = time.time()
    s = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
    t_load = time.time() - t0
    shp = s.get_inputs()[0].shape
    x = np.random.default_rng(0).standard_normal(shp).astype(np.float32)
    s.run(None, {"input": x})
    lat = []
    for _ in range(n):
        t0 = time.time(); s.run(None, {"input": x}); lat.append(time.time() - t0)
    res[os.path.basename(f)] = {"session_create_s": round(t_load, 3), "runs_s": [round(v, 3) for v in lat],
                                "median_s": round(float(np.median(lat)), 3), "threads": threads}
    print(os.path.basename(f), res[os.path.basename(f)], flush=True)
json.dump(res, open(f"{D}/bench_ort_{threads}threads.json", "w"), indent=1)
