#!/usr/bin/env python3
"""Run deepbet's own pipeline (Python API, CPU, torch 2 threads) and the ONNX re-implementation
(onnx_pipeline.py) on Colin27 ch2 (mricron-data) and the nilearn MNI ICBM152 2009 T1; Dice vs
reference masks; wall times. Writes results/eval_real.json and masks under /tmp/dbout."""
import json, os, sys, time, warnings
import numpy as np, nibabel as nib, torch
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnx_pipeline as op
from deepbet import run_bet
from deepbet.bet import BrainExtraction
torch.set_num_threads(2)
T = "/tmp/mricron/x/usr/share/mricron/templates/"
N = "/tmp/nl/x/nilearn/datasets/data/"
OUT = "/tmp/dbout"; os.makedirs(OUT, exist_ok=True)
R = os.path.dirname(os.path.abspath(__file__)) + "/results"; os.makedirs(R, exist_ok=True)

def dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))

def load(p): return np.asarray(nib.load(p).dataobj)

gm, wm = load(N + "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"), load(N + "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
gmf = nib.load(N + "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").get_fdata()
wmf = nib.load(N + "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").get_fdata()
cases = {
    "colin27_ch2": (T + "ch2.nii.gz", {"ch2bet>0": load(T + "ch2bet.nii.gz") > 0}),
    "mni152_2009_t1": (N + "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                       {"(gm+wm)/255>0.5 (prob. interpretation)": (gmf + wmf) / 255.0 > 0.5,
                        "gm+wm>0.5 on raw uint8 (i.e. any nonzero)": (gmf + wmf) > 0.5,
                        "(gm+wm)/max(gm+wm)>0.5": (gmf + wmf) / (gmf + wmf).max() > 0.5}),
}
res = {"torch_threads": torch.get_num_threads(), "cases": {}}
bet = BrainExtraction(no_gpu=True)
nets = {v: (op.Net(f"{op.D}/deepbet_bbox_128{'' if v == 'base' else '_' + v}.onnx", 2),
            op.Net(f"{op.D}/deepbet_mask_256{'' if v == 'base' else '_' + v}.onnx", 2)) for v in ("base", "in2p_sig")}
for name, (path, refs) in cases.items():
    r = {"input": path}
    mp = f"{OUT}/{name}_deepbet_mask.nii.gz"
    t0 = time.time()
    run_bet([path], mask_paths=[mp], tiv_paths=[f"{OUT}/{name}_tiv.csv"], threshold=.5, n_dilate=0, no_gpu=True)
    r["deepbet_run_bet_wall_s_incl_model_load"] = round(time.time() - t0, 2)
    times = []
    for _ in range(2):
        t0 = time.time(); _, m_obj, tiv = bet.run(path); times.append(round(time.time() - t0, 2))
    r["deepbet_BrainExtraction.run_wall_s"] = times
    r["deepbet_bbox"] = [[s.start, s.stop] for s in bet.bbox]
    r["deepbet_tiv_cm3"] = float(tiv)
    dm = load(mp).astype(bool)
    r["deepbet_mask_voxels"] = int(dm.sum())
    r["dice_deepbet"] = {k: round(dice(dm, v), 4) for k, v in refs.items()}
    r["ref_voxels"] = {k: int(v.sum()) for k, v in refs.items()}
    for v in ("base", "in2p_sig"):
        t0 = time.time()
        om, bbox, lh = op.run(path, v, nets=nets[v])
        wall = round(time.time() - t0, 2)
        om.to_filename(f"{OUT}/{name}_onnx_{v}_mask.nii.gz")
        o = np.asarray(om.dataobj).astype(bool)
        r[f"onnx_{v}"] = {"wall_s_excl_session_create": wall, "bbox": [[s.start, s.stop] for s in bbox],
                          "low_high": lh, "voxels": int(o.sum()),
                          "voxels_differing_from_deepbet": int((o != dm).sum()),
                          "dice_vs_deepbet": round(dice(o, dm), 6),
                          "dice": {k: round(dice(o, vv), 4) for k, vv in refs.items()}}
    res["cases"][name] = r
    print(name, json.dumps(r), flush=True)
json.dump(res, open(f"{R}/eval_real.json", "w"), indent=1)
