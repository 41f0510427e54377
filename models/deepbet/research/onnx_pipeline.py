#!/usr/bin/env python3
"""Torch-free re-implementation of deepbet 1.0.2's BrainExtraction.run (numpy + cc3d + fill_voids +
nibabel + onnxruntime), as a reference for the Rust port. Every step mirrors deepbet/bet.py and
deepbet/utils.py; comments cite the line numbers of deepbet 1.0.2.

    python onnx_pipeline.py IN.nii[.gz] OUT_mask.nii.gz [--variant base|in2p|in2p_sig] [--threads 2]
    python onnx_pipeline.py --selftest     # nearest-exact index check against torch (needs torch)
"""
import argparse, os, sys, time
import numpy as np
import nibabel as nib
import cc3d, fill_voids
import onnxruntime as ort

D = os.path.dirname(os.path.abspath(__file__)) + "/onnx"
SMALL, BIG, MARGIN, BBOX_FRAC = (128, 128, 128), (256, 256, 256), 0.1, 0.02


def nearest_exact_index(in_size, out_size):
    """Source index per output index for torch F.interpolate(mode='nearest-exact') on CPU:
    scale = float32(in/out); src = min(int(floorf(float32((dst + 0.5) * scale))), in - 1)."""
    scale = np.float32(in_size / out_size)
    prod = (np.arange(out_size, dtype=np.float64) + 0.5) * np.float64(scale)
    return np.minimum(np.floor(prod.astype(np.float32)).astype(np.int64), in_size - 1)


def resize_nearest_exact(x, out_shape):
    idx = [nearest_exact_index(i, o) for i, o in zip(x.shape, out_shape)]
    return x[np.ix_(*idx)]


def normalize(x, low, high):  # utils.py:35-39 (torch .std() is unbiased, ddof=1)
    x = np.clip((x - low) / (high - low), 0, 1).astype(np.float32)
    m, s = x.mean(dtype=np.float64), x.std(dtype=np.float64, ddof=1)
    return (np.float32(.226) * ((x - np.float32(m)) / np.float32(s)) + np.float32(.449)).astype(np.float32)


def keep_lcc(mask):  # utils.py:50-54, cc3d default connectivity = 26
    labels = cc3d.connected_components(mask)
    largest = np.bincount(labels[labels != 0]).argmax()
    out = mask.copy()
    out[labels != largest] = 0
    return out


def get_bbox(x):  # bet.py:89-95 (per-axis fraction of foreground in each slice > 0.02)
    rs = [np.where(x.mean(axis=dims) > BBOX_FRAC)[0] for dims in [(1, 2), (0, 2), (0, 1)]]
    assert all(r.size > 0 for r in rs), "Not enough foreground to calculate bounding box"
    center = np.array([(r.max() + 1 + r.min()) / 2 for r in rs], dtype=np.float32)
    size = np.array([(r.max() + 1) - r.min() for r in rs], dtype=np.float32)
    return center, size


def bbox_with_margin(mask_small, shape):  # bet.py:79-87, float32 like torch; round = half-to-even
    sf = np.array(shape, dtype=np.float32) / np.array(mask_small.shape, dtype=np.float32)
    center, size = get_bbox(mask_small)
    center, size = sf * center, sf * size
    size = (np.float32(1) + np.float32(2) * np.float32(MARGIN)) * size
    center, size = np.round(center), np.round(size)
    bb = [[int(c - s / 2), int(c + s / 2)] for c, s in zip(center, size)]
    return tuple(slice(max(0, b[0]), min(s, b[1]), 1) for b, s in zip(bb, shape))


class Net:
    def __init__(self, path, threads):
        so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
        self.s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def brain_prob(self, x):
        o = self.s.run(None, {"input": x[None, None]})[0]
        return o[0, 1] if o.shape[1] == 2 else o[0, 0]


def run(path, variant="in2p_sig", threads=2, threshold=.5, n_dilate=0, nets=None):
    suf = "" if variant == "base" else "_" + variant
    bbox_net, mask_net = nets or (Net(f"{D}/deepbet_bbox_128{suf}.onnx", threads),
                                  Net(f"{D}/deepbet_mask_256{suf}.onnx", threads))
    img = nib.load(path)
    x = nib.as_closest_canonical(img).get_fdata(dtype=np.float32)          # bet.py:42 (RAS+)
    x = x[..., 0] if len(img.shape) == 4 else x                            # bet.py:43
    x = np.nan_to_num(x)                                                   # bet.py:59
    x_small = resize_nearest_exact(x, SMALL)                               # bet.py:61
    low, high = np.quantile(x_small, [.005, .995]).astype(np.float32)      # bet.py:62 (linear)
    p_small = bbox_net.brain_prob(normalize(x_small, low, high))           # bet.py:64
    mask_small = keep_lcc((p_small > .5).astype(np.float32))               # bet.py:65
    bbox = bbox_with_margin(mask_small, x.shape)                           # bet.py:67
    crop = resize_nearest_exact(x[bbox], BIG)                              # bet.py:68
    p = mask_net.brain_prob(normalize(crop, low, high))                    # bet.py:70
    prob = np.zeros_like(x)
    prob[bbox] = resize_nearest_exact(p, x[bbox].shape)                    # bet.py:71
    mask = prob > threshold                                                # bet.py:45
    mask[bbox] = keep_lcc(mask[bbox])                                      # bet.py:75
    mask[bbox] = fill_voids.fill(mask[bbox])                               # bet.py:76
    assert n_dilate == 0, "dilate (utils.py:43-47) not re-implemented here"
    ornt_inv = nib.orientations.ornt_transform([[0, 1], [1, 1], [2, 1]], nib.io_orientation(img.affine))
    mask = nib.apply_orientation(mask, ornt_inv)                           # utils.py:63-68
    mask = mask[..., None] if len(img.shape) == 4 else mask
    out = nib.Nifti1Image(mask.astype(np.uint8), img.affine, img.header)
    out.set_data_dtype(np.uint8)
    return out, bbox, (float(low), float(high))


def selftest():
    import torch, torch.nn.functional as F
    bad = 0
    for i in range(1, 600):
        for o in (128, 256, 1, 7, 181, 217, 300):
            x = torch.arange(i, dtype=torch.float32)[None, None]
            ref = F.interpolate(x, size=o, mode="nearest-exact")[0, 0].long().numpy()
            if not np.array_equal(ref, nearest_exact_index(i, o)):
                bad += 1; print("mismatch", i, o)
    for crop in (150, 163, 181, 197, 199, 217, 233, 255, 256, 257, 300):
        x = torch.arange(256, dtype=torch.float32)[None, None]
        ref = F.interpolate(x, size=crop, mode="nearest-exact")[0, 0].long().numpy()
        if not np.array_equal(ref, nearest_exact_index(256, crop)):
            bad += 1; print("mismatch back", crop)
    print("nearest-exact selftest mismatches:", bad)
    return bad


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("inp", nargs="?"); ap.add_argument("out", nargs="?")
    ap.add_argument("--variant", default="in2p_sig"); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    if a.selftest:
        sys.exit(1 if selftest() else 0)
    t0 = time.time()
    m, bbox, lh = run(a.inp, a.variant, a.threads)
    m.to_filename(a.out)
    print("bbox", bbox, "low/high", lh, "voxels", int(np.asarray(m.dataobj).sum()), "s", round(time.time() - t0, 2))
