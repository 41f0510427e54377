#!/usr/bin/env python3
"""Train the reference head-CT model package ``models/reference/head-ct/``.

Numpy (plus scipy, onnx, onnxruntime and pydicom) only; no deep-learning framework.
Everything is derived from one real head CT, the InVesalius example project
``Cranium.inv3`` (Debian package ``invesalius-examples``), read with the
loader of ``scripts/make_fixtures.py``:

1. Labels at the CT's own resolution: 1 "intracranial space", an algorithmic
   reference label (bone HU > 300, holes of the bone mask filled slice by
   slice, bone and soft-tissue HU limits, 3D largest component; see
   ``intracranial_mask``), and 2 "lesion", synthetic haemorrhage-like
   ellipsoids implanted into the intracranial space (``implant_lesions``);
   the lesion label is the implanted ellipsoid itself.
2. Simulated sites: every training and held-out volume is the anatomy with
   its own lesions, contrast scale, smooth bias field, in-plane blur, noise
   and patient positioning (flip, rotation, scale, shift of the model grid),
   drawn from its own seed; held-out seeds are disjoint from training seeds.
3. Model input exactly as the Rust side computes it (``model_input``): each
   axial slice resampled bilinearly onto a 64 x 64 grid of 3.9 mm centred on
   the slice centre (-1024 HU outside), then three intensity windows.
4. Backbone ``backbone.onnx``: a fixed, untrained filter bank (windows,
   Gaussian blurs, differences of Gaussians, bone/air indicators and a
   "surrounded by bone" feature from ray sums), built with onnx.helper.
5. Head ``head.safetensors``: a per-pixel 16-16-3 MLP trained with weighted
   softmax cross-entropy by Adam with hand-written backprop, and a study-level
   logistic classifier on (max lesion probability, log(1 + lesion ml)) fitted
   by Newton's method on the training volumes.
6. Held-out metrics (Dice per label at model resolution, AUROC of the study
   probability), ``manifest.toml``, ``card.md``, and ``models/reference/
   expected.json``: the full pipeline's outputs on ``fixtures/ct-series`` and
   ``fixtures/ct-series-lesion`` (build them first: ``bash scripts/fixtures.sh``).

The reference validation set (``head-ct/validation.safetensors`` and the manifest's
``[validation]`` section) is written by ``make_validation_set.py`` from split 2 of the
same study generator; this script keeps that section when it rewrites the manifest.

Usage: ``python3 models/reference/train_head_ct.py`` (about 3 minutes on 2 CPU
cores). Seeds are fixed; a re-run on the same machine rewrites every output
byte for byte (float summation order in BLAS or onnxruntime may differ on
another CPU, which can move the last digits).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import struct
import sys
import time
from pathlib import Path

# Single-threaded BLAS: the matrices are small (threads only add overhead, a lot of it on a
# busy machine) and the float summation order, hence every output byte, no longer depends on
# the number of cores. Must be set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PACKAGE_DIR = HERE / "head-ct"
EXPECTED_JSON = HERE / "expected.json"
FIXTURES = REPO_ROOT / "fixtures"

SEED = 20250611
N_TRAIN = 48
N_HELDOUT = 24

# Model contract (mirrored by models/src/preprocess.rs and head.rs).
GRID = 64
SPACING_MM = 3.9
OUTSIDE_HU = -1024.0
WINDOWS = [("brain", 40.0, 80.0), ("subdural", 75.0, 215.0), ("bone", 600.0, 2800.0)]
FEATURES = 16
HIDDEN = 16
# Pixels of each class a labelled case keeps for on-site learning (the manifest's
# head.samples_per_class; the appliance's default pixels per class for a fine-tune).
SAMPLES_PER_CLASS = 1024
CLASSES = 3  # 0 background, 1 intracranial space, 2 lesion
LABELS = [(1, "intracranial space", (64, 160, 255)), (2, "lesion", (255, 64, 32))]

# Labels.
BONE_HU = 300.0
SOFT_HU = (-100.0, 150.0)
CLOSING_RADII_PX = (6, 10, 14, 18, 22)
MIN_SLICE_AREA_MM2 = 200.0

# Synthetic lesions.
LESION_DELTA_HU = (50.0, 80.0)
LESION_RADIUS_MM = (4.0, 20.0)
LESION_EDGE_MM = 1.5

# Simulated sites.
NOISE_HU = (0.0, 15.0)
CONTRAST = (0.9, 1.1)
BIAS_MAX = 0.01  # relative change of attenuation (HU + 1000): about +-10 HU in soft tissue
BLUR_PX = (0.0, 1.0)
PREVALENCE = (0.3, 0.8)
ROTATION_DEG = 10.0
SCALE = (0.92, 1.08)
SHIFT_MM = 8.0

# Head training.
EPOCHS = 60
BATCH = 8192
LEARNING_RATE = 3e-2
CLASS_WEIGHTS = np.array([1.0, 1.0, 3.0])
SMALL_LESION_PX = 30  # lesions of fewer 3.9 mm model pixels (all slices) count as small in the card
KEEP = {"lesion": 1.0, "blood-range": 1.0, "intracranial": 0.3, "head": 0.15, "air": 0.02}


_STARTED = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {msg}", flush=True)


# --------------------------------------------------------------------------
# anatomy and labels

def load_anatomy() -> tuple[np.ndarray, tuple[float, float, float]]:
    """The Cranium CT as float32 HU [z, y, x], rows as in the DICOM fixture, and (sx, sy, sz)."""
    spec = importlib.util.spec_from_file_location("make_fixtures", REPO_ROOT / "scripts" / "make_fixtures.py")
    make_fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_fixtures)
    volume, meta = make_fixtures.load_cranium(make_fixtures.CRANIUM_INV3)
    # Stored upside down (see make_fixtures.build_ct_series): flip every slice along y.
    hu = np.ascontiguousarray(volume[:, ::-1, :], dtype=np.float32)
    sx, sy, sz = (float(v) for v in meta["spacing"])
    return hu, (sx, sy, sz)


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull

    hull = ConvexHull(np.argwhere(mask))
    yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
    points = np.stack([yy.ravel(), xx.ravel(), np.ones(yy.size)], axis=1)
    return np.all(points @ hull.equations.T <= 1e-9, axis=1).reshape(mask.shape)


def intracranial_mask(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Algorithmic intracranial-space label, bool [z, y, x].

    Per axial slice: bone = HU > 300; the holes of the bone mask are filled
    (binary_fill_holes) after a morphological closing with the smallest disk
    (radius 6, 10, ... 22 px) that makes the filled region plausible (between
    0.5 and 1.3 times the soft tissue inside the convex hull of the largest
    bone component); where no radius does (this skull has a large frontal
    defect), the convex hull itself is used. Then: minus the bone and its
    1-pixel dilation, soft tissue only (-100..150 HU). Over the volume: the
    largest 3D connected component, and slices where it covers less than
    200 mm^2 are dropped.
    """
    from scipy import ndimage as ndi

    sx, sy, _ = spacing
    out = np.zeros(hu.shape, dtype=bool)
    for z, s in enumerate(hu):
        bone = s > BONE_HU
        if not bone.any():
            continue
        soft = ~ndi.binary_dilation(bone) & (s >= SOFT_HU[0]) & (s <= SOFT_HU[1])
        parts, _ = ndi.label(bone, structure=np.ones((3, 3)))
        sizes = np.bincount(parts.ravel())
        sizes[0] = 0
        largest = parts == sizes.argmax()
        if largest.sum() < 3:
            continue
        hull = _convex_hull(largest)
        hull_area = (hull & soft).sum()
        inside = hull
        for r in CLOSING_RADII_PX:
            closed = ndi.binary_closing(np.pad(bone, r + 1), structure=_disk(r))[r + 1:-r - 1, r + 1:-r - 1]
            filled = ndi.binary_fill_holes(closed | bone)
            if 0.5 * hull_area <= (filled & soft).sum() <= 1.3 * hull_area:
                inside = filled
                break
        out[z] = inside & soft
    parts, _ = ndi.label(out)
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    out = parts == sizes.argmax()
    small = out.sum(axis=(1, 2)) * sx * sy < MIN_SLICE_AREA_MM2
    out[small] = False
    return out


def lesion_profile(edge_distance_mm: np.ndarray) -> np.ndarray:
    """Smooth edge: 1 inside, 0 outside, half a sine over +-LESION_EDGE_MM; 0.5 on the surface.

    The same profile as scripts/make_fixtures.py uses for the fixture lesion.
    """
    t = np.clip(edge_distance_mm / LESION_EDGE_MM, -1.0, 1.0)
    return 0.5 * (1.0 - np.sin(0.5 * np.pi * t))


def implant_lesions(hu: np.ndarray, ic: np.ndarray, ic_depth: np.ndarray,
                    spacing: tuple[float, float, float], rng: np.random.Generator,
                    count: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Add ``count`` ellipsoids of +50..80 HU inside the intracranial space.

    Each lesion: semi-axes 4..20 mm (log-uniform largest, the others 0.6..1x
    of it, at least 4 mm), rotated in-plane at random; HU gain delta * profile
    of the approximate distance to the surface. Every voxel the lesion touches
    (profile > 0) lies in the intracranial space. Returns (new HU, lesion mask,
    descriptions); overlapping lesions take the larger gain.
    """
    sx, sy, sz = spacing
    gain = np.zeros(hu.shape, dtype=np.float32)
    label = np.zeros(hu.shape, dtype=bool)
    lesions = []
    for _ in range(count):
        a = math.exp(rng.uniform(math.log(LESION_RADIUS_MM[0]), math.log(LESION_RADIUS_MM[1])))
        axes = np.maximum([a, a * rng.uniform(0.6, 1.0), a * rng.uniform(0.6, 1.0)], LESION_RADIUS_MM[0])
        theta = rng.uniform(0.0, np.pi)
        delta = rng.uniform(*LESION_DELTA_HU)
        for attempt in range(400):
            if attempt % 50 == 0:
                if attempt:
                    axes = np.maximum(axes * 0.85, LESION_RADIUS_MM[0])
                candidates = np.flatnonzero(ic_depth.ravel() >= axes.min())
            cz, cy, cx = np.unravel_index(candidates[rng.integers(len(candidates))], hu.shape)
            reach = axes.max() + LESION_EDGE_MM
            lo = [max(0, int(c - reach / s) - 1) for c, s in ((cz, sz), (cy, sy), (cx, sx))]
            hi = [min(n, int(c + reach / s) + 2) for c, s, n in ((cz, sz, hu.shape[0]), (cy, sy, hu.shape[1]),
                                                                (cx, sx, hu.shape[2]))]
            z = ((np.arange(lo[0], hi[0]) - cz) * sz)[:, None, None]
            y = ((np.arange(lo[1], hi[1]) - cy) * sy)[None, :, None]
            x = ((np.arange(lo[2], hi[2]) - cx) * sx)[None, None, :]
            u = np.cos(theta) * x + np.sin(theta) * y
            w = -np.sin(theta) * x + np.cos(theta) * y
            d = np.sqrt((u / axes[0]) ** 2 + (w / axes[1]) ** 2 + (z / axes[2]) ** 2)
            profile = lesion_profile((d - 1.0) * float(np.exp(np.log(axes).mean())))
            box = tuple(slice(l, h) for l, h in zip(lo, hi))
            if np.all(ic[box][profile > 0]):
                break
        else:
            continue  # no room for it: the volume gets fewer lesions
        gain[box] = np.maximum(gain[box], (delta * profile).astype(np.float32))
        label[box] |= d <= 1.0
        lesions.append({"centre_voxel": [int(cz), int(cy), int(cx)], "semi_axes_mm": axes.round(2).tolist(),
                        "delta_hu": round(delta, 1)})
    return hu + gain, label, lesions


# --------------------------------------------------------------------------
# simulated sites

def simulate_site(hu: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Contrast scale, smooth multiplicative bias of attenuation, in-plane blur, then noise."""
    from scipy import ndimage as ndi

    site = {"contrast": rng.uniform(*CONTRAST), "bias": rng.uniform(0.0, BIAS_MAX),
            "blur_px": rng.uniform(*BLUR_PX), "noise_hu": rng.uniform(*NOISE_HU)}
    nz, ny, nx = hu.shape
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    c = rng.normal(size=9).astype(np.float32)
    field = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z + c[6] * x * y \
        + c[7] * x * z + c[8] * y * z
    field *= np.float32(site["bias"]) / np.abs(field).max()
    out = (hu * np.float32(site["contrast"]) + np.float32(1000.0)) * (np.float32(1.0) + field) - np.float32(1000.0)
    if site["blur_px"] > 0.05:
        out = ndi.gaussian_filter(out, sigma=(0.0, site["blur_px"], site["blur_px"]), mode="nearest")
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(site["noise_hu"])
    return out.astype(np.float32), {k: round(float(v), 4) for k, v in site.items()}


# --------------------------------------------------------------------------
# model input (the contract)

def model_grid(rows: int, cols: int, sx: float, sy: float,
               pose: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Continuous source indices (x, y), float64 [GRID, GRID], sampled by model pixel (i, j).

    Without ``pose`` exactly the contract: x = cx + (j - 31.5) * 3.9 / sx,
    y = cy + (i - 31.5) * 3.9 / sy. A pose (training only) mirrors, rotates,
    scales and shifts the grid in millimetres about the slice centre.
    """
    cx, cy = (cols - 1) / 2, (rows - 1) / 2
    m = (GRID - 1) / 2
    i, j = np.meshgrid(np.arange(GRID, dtype=np.float64), np.arange(GRID, dtype=np.float64), indexing="ij")
    if pose is None:
        return cx + (j - m) * SPACING_MM / sx, cy + (i - m) * SPACING_MM / sy
    u, w = (j - m) * SPACING_MM, (i - m) * SPACING_MM
    if pose["flip"]:
        u = -u
    c, s, k = math.cos(pose["rotation"]), math.sin(pose["rotation"]), pose["scale"]
    u, w = k * (c * u - s * w) + pose["shift"][0], k * (s * u + c * w) + pose["shift"][1]
    return cx + u / sx, cy + w / sy


def bilinear(slices: np.ndarray, x: np.ndarray, y: np.ndarray, outside: float) -> np.ndarray:
    """Sample float32 slices [n, rows, cols] at (x, y) as models/src/preprocess.rs does (f32 math)."""
    n, rows, cols = slices.shape
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    one = np.float32(1.0)

    def at(xi: np.ndarray, yi: np.ndarray) -> np.ndarray:
        valid = (xi >= 0) & (yi >= 0) & (xi < cols) & (yi < rows)
        xc = np.clip(xi, 0, cols - 1).astype(np.int64)
        yc = np.clip(yi, 0, rows - 1).astype(np.int64)
        return np.where(valid, slices[:, yc, xc], np.float32(outside))

    top = at(x0, y0) * (one - fx) + at(x0 + 1, y0) * fx
    bottom = at(x0, y0 + 1) * (one - fx) + at(x0 + 1, y0 + 1) * fx
    return (top * (one - fy) + bottom * fy).astype(np.float32)


def windows(hu64: np.ndarray) -> np.ndarray:
    """Model input [n, 3, GRID, GRID] float32 from resampled HU [n, GRID, GRID]."""
    channels = []
    for _, center, width in WINDOWS:
        low = np.float32(center) - np.float32(width) / np.float32(2.0)
        channels.append(np.clip((hu64 - low) / np.float32(width), 0.0, 1.0))
    return np.stack(channels, axis=1).astype(np.float32)


def model_input(hu: np.ndarray, sx: float, sy: float, pose: dict | None = None) -> np.ndarray:
    x, y = model_grid(hu.shape[1], hu.shape[2], sx, sy, pose)
    return windows(bilinear(hu, x, y, OUTSIDE_HU))


def model_labels(label: np.ndarray, sx: float, sy: float, pose: dict | None = None) -> np.ndarray:
    """Reference labels at model resolution: bilinear weights of each class at the sample point, argmax."""
    x, y = model_grid(label.shape[1], label.shape[2], sx, sy, pose)
    votes = [bilinear((label == c).astype(np.float32), x, y, 1.0 if c == 0 else 0.0) for c in range(CLASSES)]
    return np.argmax(np.stack(votes), axis=0).astype(np.uint8)


# --------------------------------------------------------------------------
# backbone: a fixed filter bank as ONNX

FEATURE_NAMES = [
    "brain window", "fat-range indicator G2", "bone window",
    "brain G1", "brain G2", "blood-range indicator (G1 HU 70-140)", "fat-range indicator G8",
    "brain DoG G1-G4 (bright blobs)", "blood-range indicator G2", "brain top-hat B-G2",
    "bone indicator G1", "bone indicator G4", "bone indicator G8", "air indicator G8",
    "surrounded by bone, 4 of 4 rays", "surrounded by bone, 3 of 4 rays",
]
BLUR_SIGMAS = (1, 2, 4, 8)
RAY_PX = 63  # 246 mm: across the whole grid


def _gauss(sigma: float) -> np.ndarray:
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def build_backbone():
    """The frozen backbone: image [N, 3, 64, 64] -> features [N, 16, 64, 64].

    base = clip(1x1 conv(image)) holds 5 maps: the brain, subdural and bone
    windows, a bone indicator (0 at 300 HU, 1 from 440 HU) and an air
    indicator (1 at -800 HU or below, 0 from -100 HU). Each is blurred
    (separable depthwise Gaussian, sigma 1, 2, 4, 8 px, zero padding). Ray sums
    of twice the blurred (sigma 1) bone indicator over 63 px to the left,
    right, up and down, clipped to 1, say whether bone lies in that direction;
    their product and clip(sum - 2) say "surrounded" (4 of 4, 3 of 4). HU-range
    indicators of the sigma-1 blur (HU read from the bone window): blood-like
    70..140 HU and fat -130..-60 HU, with blurs. The 16 features are ReLU(1x1
    conv) of all these maps, scaled to roughly [0, 2] (FEATURE_NAMES). The
    subdural window is computed but not used by this filter bank.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def conv(name: str, x: str, w: np.ndarray, b=None, pads=(0, 0, 0, 0), group: int = 1) -> str:
        inputs = [x, const(name + ".w", w)] + ([const(name + ".b", b)] if b is not None else [])
        nodes.append(helper.make_node("Conv", inputs, [name], name=name, pads=list(pads), group=group,
                                      kernel_shape=list(w.shape[2:]), strides=[1, 1], dilations=[1, 1]))
        return name

    def clip01(name: str, x: str) -> str:
        nodes.append(helper.make_node("Clip", [x, "zero", "one"], [name], name=name))
        return name

    const("zero", np.float32(0.0))
    const("one", np.float32(1.0))

    # base maps: B, S, O, bone indicator, air indicator.
    w = np.zeros((5, 3, 1, 1), np.float32)
    b = np.zeros(5, np.float32)
    w[0, 0] = w[1, 1] = w[2, 2] = 1.0
    o300, o440 = (300 + 800) / 2800, (440 + 800) / 2800  # bone window value at 300 and 440 HU
    w[3, 2], b[3] = 1 / (o440 - o300), -o300 / (o440 - o300)
    o_air, o_soft = (-800 + 800) / 2800, (-100 + 800) / 2800
    w[4, 2], b[4] = -1 / (o_soft - o_air), o_soft / (o_soft - o_air)
    base = clip01("base", conv("base.lin", "image", w, b))

    blurred = []
    for sigma in BLUR_SIGMAS:
        k = _gauss(sigma)
        r = len(k) // 2
        h = conv(f"g{sigma}.h", base, np.tile(k.reshape(1, 1, 1, -1), (5, 1, 1, 1)), pads=(0, r, 0, r), group=5)
        blurred.append(conv(f"g{sigma}", h, np.tile(k.reshape(1, 1, -1, 1), (5, 1, 1, 1)), pads=(r, 0, r, 0),
                            group=5))

    # Rays: twice the sigma-1 blurred bone indicator (the blur closes the gaps that 3.9 mm
    # sampling leaves in a thin skull) summed over RAY_PX pixels to one side, not the pixel itself.
    w = np.zeros((1, 5, 1, 1), np.float32)
    w[0, 3] = 2.0
    bone = conv("bone", blurred[0], w)
    n = 2 * RAY_PX + 1
    rays = []
    for name, shape, taps in (("left", (1, n), slice(0, RAY_PX)), ("right", (1, n), slice(RAY_PX + 1, n)),
                              ("up", (n, 1), slice(0, RAY_PX)), ("down", (n, 1), slice(RAY_PX + 1, n))):
        k = np.zeros(n, np.float32)
        k[taps] = 1.0
        pads = (0, RAY_PX, 0, RAY_PX) if shape[0] == 1 else (RAY_PX, 0, RAY_PX, 0)
        rays.append(clip01(f"ray.{name}", conv(f"ray.{name}.sum", bone, k.reshape(1, 1, *shape), pads=pads)))
    nodes.append(helper.make_node("Mul", [rays[0], rays[1]], ["ray.lr"], name="ray.lr"))
    nodes.append(helper.make_node("Mul", [rays[2], rays[3]], ["ray.ud"], name="ray.ud"))
    nodes.append(helper.make_node("Mul", ["ray.lr", "ray.ud"], ["enc4"], name="enc4"))
    nodes.append(helper.make_node("Concat", rays, ["rays"], name="rays", axis=1))
    enc3 = clip01("enc3", conv("enc3.lin", "rays", np.ones((1, 4, 1, 1), np.float32), np.float32([-2.0])))

    # HU ranges of the sigma-1 blur (HU from the bone window, linear from -800 to 2000 HU):
    # blood 70..140 HU (ramps 50-70, 140-170) and fat -130..-60 HU (ramps -170..-130, -60..-30),
    # each as relu(rising ramp - falling ramp); blood also blurred (sigma 2), fat at sigma 2 and 8.
    ramps = [(50, 20), (140, 30), (-170, 40), (-60, 30)]  # (start HU, width HU)
    w = np.zeros((4, 5, 1, 1), np.float32)
    b = np.zeros(4, np.float32)
    for r_, (start, width) in enumerate(ramps):
        w[r_, 2], b[r_] = 2800.0 / width, (-800 - start) / width
    ramp = clip01("ramps", conv("ramps.lin", blurred[0], w, b))
    w = np.zeros((2, 4, 1, 1), np.float32)
    w[0, 0], w[0, 1], w[1, 2], w[1, 3] = 1, -1, 1, -1
    nodes.append(helper.make_node("Relu", [conv("ranges.lin", ramp, w)], ["ranges"], name="ranges"))
    ranges_blurred = []
    for sigma in (2, 8):
        k = _gauss(sigma)
        r = len(k) // 2
        h = conv(f"ranges.g{sigma}.h", "ranges", np.tile(k.reshape(1, 1, 1, -1), (2, 1, 1, 1)), pads=(0, r, 0, r),
                 group=2)
        ranges_blurred.append(conv(f"ranges.g{sigma}", h, np.tile(k.reshape(1, 1, -1, 1), (2, 1, 1, 1)),
                                   pads=(r, 0, r, 0), group=2))

    # All maps: base (0-4), G1 (5-9), G2 (10-14), G4 (15-19), G8 (20-24), enc4 (25), enc3 (26),
    # blood, fat (27, 28), their G2 (29, 30) and G8 (31, 32).
    nodes.append(helper.make_node("Concat", [base, *blurred, "enc4", enc3, "ranges", *ranges_blurred], ["maps"],
                                  name="maps", axis=1))
    B, O, BONE, AIR = 0, 2, 3, 4  # base channels (1, the subdural window, is unused)
    ENC4, ENC3, BLOOD, FAT_G2, FAT_G8, BLOOD_G2 = 25, 26, 27, 30, 32, 29

    def g(sigma: int, ch: int) -> int:
        return 5 * (1 + BLUR_SIGMAS.index(sigma)) + ch

    rows = [
        {B: 1}, {FAT_G2: 2}, {O: 1},
        {g(1, B): 1}, {g(2, B): 1}, {BLOOD: 1}, {FAT_G8: 4},
        {g(1, B): 3, g(4, B): -3}, {BLOOD_G2: 1}, {B: 2, g(2, B): -2},
        {g(1, BONE): 1}, {g(4, BONE): 2}, {g(8, BONE): 4}, {g(8, AIR): 1},
        {ENC4: 1}, {ENC3: 1},
    ]
    w = np.zeros((FEATURES, 33, 1, 1), np.float32)
    for f, row in enumerate(rows):
        for ch, v in row.items():
            w[f, ch] = v
    conv("features.lin", "maps", w, np.zeros(FEATURES, np.float32))
    nodes.append(helper.make_node("Relu", ["features.lin"], ["features"], name="features"))

    graph = helper.make_graph(
        nodes, "head-ct-filter-bank",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, GRID, GRID])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES, GRID, GRID])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="radiant-edge models/reference/train_head_ct.py",
                              producer_version="0.1.0", doc_string="Fixed multi-scale filter bank (untrained).")
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


class Backbone:
    """Runs backbone.onnx with onnxruntime (CPU)."""

    def __init__(self, model_bytes: bytes):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # reproducible, whatever the core count
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = [self.session.run(["features"], {"image": image[k:k + 32]})[0] for k in range(0, len(image), 32)]
        return np.concatenate(out)


# --------------------------------------------------------------------------
# head

def head_probabilities(head: dict, feats: np.ndarray) -> np.ndarray:
    """Class probabilities [n, 64, 64, 3] from features [n, 16, 64, 64] (float32)."""
    f = feats.transpose(0, 2, 3, 1).reshape(-1, FEATURES)
    h = np.maximum(f @ head["seg.w1"].T + head["seg.b1"], 0)
    logits = h @ head["seg.w2"].T + head["seg.b2"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return p.reshape(feats.shape[0], GRID, GRID, CLASSES)


def study_outputs(head: dict, probs: np.ndarray, slice_spacing_mm: float) -> dict:
    """Study-level m, v (ml), label counts and lesion probability, as the Rust side computes them."""
    labels = probs.argmax(axis=-1)
    counts = np.bincount(labels.ravel(), minlength=CLASSES)
    m = float(probs[..., 2].max())
    v = float(counts[2]) * (SPACING_MM * SPACING_MM * slice_spacing_mm) / 1000
    p = classify(head, m, v) if "cls.w" in head else None
    return {"labels": labels, "counts": counts, "m": m, "v": v, "p": p}


def classify(head: dict, m: float, v: float) -> float:
    z = float(head["cls.w"][0]) * m + float(head["cls.w"][1]) * math.log1p(v) + float(head["cls.b"][0])
    return 1.0 / (1.0 + math.exp(-z))


def train_segmentation(f: np.ndarray, y: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> dict:
    """Adam on weighted softmax cross-entropy of a 16-16-3 per-pixel MLP; backprop by hand."""
    n = len(y)
    params = {
        "seg.w1": (rng.standard_normal((HIDDEN, FEATURES)) * math.sqrt(2.0 / FEATURES)).astype(np.float32),
        "seg.b1": np.full(HIDDEN, 0.1, np.float32),
        "seg.w2": (rng.standard_normal((CLASSES, HIDDEN)) * math.sqrt(1.0 / HIDDEN)).astype(np.float32),
        "seg.b2": np.zeros(CLASSES, np.float32),
    }
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    steps = EPOCHS * ((n + BATCH - 1) // BATCH)
    onehot = np.eye(CLASSES, dtype=np.float32)
    step = 0
    for epoch in range(EPOCHS):
        order = rng.permutation(n)
        total, seen = 0.0, 0.0
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            x, t, wt = f[idx], y[idx], weight[idx]
            h_pre = x @ params["seg.w1"].T + params["seg.b1"]
            h = np.maximum(h_pre, 0)
            logits = h @ params["seg.w2"].T + params["seg.b2"]
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            wsum = wt.sum()
            total += float(-(wt * np.log(p[np.arange(len(t)), t] + 1e-12)).sum())
            seen += float(wsum)
            d_logits = (p - onehot[t]) * (wt / wsum)[:, None]
            d_h = (d_logits @ params["seg.w2"]) * (h_pre > 0)
            grads = {"seg.w2": d_logits.T @ h, "seg.b2": d_logits.sum(axis=0),
                     "seg.w1": d_h.T @ x, "seg.b1": d_h.sum(axis=0)}
            step += 1
            lr = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / steps))
            for k, g in grads.items():
                m1, m2 = moments[k]
                m1 *= beta1
                m1 += (1 - beta1) * g
                m2 *= beta2
                m2 += (1 - beta2) * g * g
                update = lr * (m1 / (1 - beta1 ** step)) / (np.sqrt(m2 / (1 - beta2 ** step)) + eps)
                params[k] = (params[k] - update).astype(np.float32)
        log(f"  epoch {epoch + 1:2d}/{EPOCHS}: weighted cross-entropy {total / seen:.4f}")
    return params


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 0.01, iterations: int = 50) -> np.ndarray:
    """Newton's method for L2-regularised logistic regression; returns [w..., b]."""
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    beta = np.zeros(a.shape[1])
    reg = np.full(a.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(a @ beta)))
        grad = a.T @ (p - y) + reg * beta
        hess = a.T @ (a * (p * (1 - p))[:, None]) + np.diag(reg) + 1e-9 * np.eye(len(beta))
        beta -= np.linalg.solve(hess, grad)
    return beta


# --------------------------------------------------------------------------
# metrics

def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    denom = pred.sum() + ref.sum()
    return float(2 * np.logical_and(pred, ref).sum() / denom) if denom else 1.0


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


# --------------------------------------------------------------------------
# the simulated studies

def make_study(split: int, index: int, hu: np.ndarray, ic: np.ndarray, ic_depth: np.ndarray,
               spacing: tuple[float, float, float]) -> dict:
    """One simulated study: model input, reference labels at model resolution, description."""
    rng = np.random.default_rng([SEED, split, index])
    prevalence = rng.uniform(*PREVALENCE)
    count = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1])) if rng.random() < prevalence else 0
    lesioned, lesion_mask, lesions = implant_lesions(hu, ic, ic_depth, spacing, rng, count)
    label = ic.astype(np.uint8)
    label[lesion_mask] = 2
    site_hu, site = simulate_site(lesioned, rng)
    pose = {"flip": bool(rng.random() < 0.5), "rotation": math.radians(rng.uniform(-ROTATION_DEG, ROTATION_DEG)),
            "scale": rng.uniform(*SCALE), "shift": rng.uniform(-SHIFT_MM, SHIFT_MM, size=2).tolist()}
    sx, sy, _ = spacing
    return {"image": model_input(site_hu, sx, sy, pose), "labels": model_labels(label, sx, sy, pose),
            "lesions": lesions, "site": site, "pose": pose, "prevalence": prevalence}


def pixel_sample(feats: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Subsample the pixels of one study for head training: features, labels, importance weights."""
    f = feats.transpose(0, 2, 3, 1).reshape(-1, FEATURES)
    y = labels.ravel()
    head = f[:, 2] > 0.05  # bone window above about -660 HU: inside the head
    blood = f[:, 5] > 0.2  # blood-range indicator: the hard negatives
    keep_p = np.select([y == 2, blood, y == 1, head], [KEEP["lesion"], KEEP["blood-range"], KEEP["intracranial"],
                                                       KEEP["head"]], KEEP["air"])
    keep = rng.random(len(y)) < keep_p
    return f[keep], y[keep], (CLASS_WEIGHTS[y[keep]] / keep_p[keep]).astype(np.float32)


# --------------------------------------------------------------------------
# DICOM fixtures

def read_series(directory: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU [z, y, x] float32 ordered by ImagePositionPatient z, and (sx, sy, slice spacing)."""
    import pydicom

    slices = []
    for path in sorted(directory.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept)
        slices.append((float(ds.ImagePositionPatient[2]), hu, ds))
    slices.sort(key=lambda s: s[0])
    z = np.array([s[0] for s in slices])
    steps = np.diff(z)
    if not np.allclose(steps, steps[0], atol=1e-3):
        raise SystemExit(f"{directory}: irregular slice spacing")
    row_spacing, col_spacing = (float(v) for v in slices[0][2].PixelSpacing)
    return np.stack([s[1] for s in slices]), (col_spacing, row_spacing, float(steps[0]))


def fixture_expectations(backbone: Backbone, head: dict) -> dict:
    out = {}
    for name in ("ct-series", "ct-series-lesion"):
        directory = FIXTURES / name
        if not (directory / "manifest.json").exists():
            raise SystemExit(f"{directory} missing: run `bash scripts/fixtures.sh` first")
        hu, (sx, sy, sz) = read_series(directory)
        image = model_input(hu, sx, sy)
        feats = backbone(image)
        probs = head_probabilities(head, feats)
        study = study_outputs(head, probs, sz)
        mid = len(hu) // 2
        entry = {
            "slices": len(hu),
            "slice_spacing_mm": sz,
            "label_counts": {str(c): int(study["counts"][c]) for c in range(CLASSES)},
            "lesion_ml": round(study["v"], 6),
            "max_lesion_probability": round(study["m"], 6),
            "study_lesion_probability": round(study["p"], 6),
            "slices_with_lesion": [int(z) for z in np.flatnonzero((study["labels"] == 2).any(axis=(1, 2)))],
            "check_slice": {
                "index": mid,
                "input_channel_sums": [round(float(v), 3) for v in image[mid].astype(np.float64).sum(axis=(1, 2))],
                "feature_channel_sums": [round(float(v), 3) for v in feats[mid].astype(np.float64).sum(axis=(1, 2))],
                "label_counts": [int(v) for v in np.bincount(study["labels"][mid].ravel(), minlength=CLASSES)],
            },
        }
        manifest = json.loads((directory / "manifest.json").read_text())
        if "lesion" in manifest:
            entry["implanted_lesion"] = manifest["lesion"]
        out[name] = entry
        log(f"  {name}: counts {entry['label_counts']}, m {study['m']:.4f}, "
            f"{study['v']:.2f} ml, study probability {study['p']:.4f}")
    return out


def check_fixture_lesion(ic: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """The fixture lesion (scripts/make_fixtures.py) must lie inside the intracranial space."""
    manifest = FIXTURES / "ct-series-lesion" / "manifest.json"
    lesion = json.loads(manifest.read_text())["lesion"]
    sx, sy, sz = spacing
    nz, ny, nx = ic.shape
    z = (np.arange(nz) * sz - lesion["centre_mm"][2])[:, None, None]
    y = ((np.arange(ny) - (ny - 1) / 2) * sy - lesion["centre_mm"][1])[None, :, None]
    x = ((np.arange(nx) - (nx - 1) / 2) * sx - lesion["centre_mm"][0])[None, None, :]
    touched = np.sqrt(x * x + y * y + z * z) < lesion["radius_mm"] + lesion["edge_mm"]
    if not ic[touched].all():
        raise SystemExit("the fixture lesion leaves the intracranial space")


# --------------------------------------------------------------------------
# package files

def safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """safetensors: u64 LE header length, JSON header (space-padded to 8 bytes), raw LE data."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validation_section() -> str:
    """The ``[validation]`` section of the current manifest (with its trailing blank line), or "".

    ``make_validation_set.py`` writes that section and ``validation.safetensors``; the set
    depends on the anatomy and ``make_study`` only, not on the backbone or head, so retraining
    keeps it. Re-run ``make_validation_set.py`` after changing the study generator.
    """
    path = PACKAGE_DIR / "manifest.toml"
    if not path.exists():
        return ""
    found = re.search(r"\[validation\]\n(?:[^\[\n].*\n)*", path.read_text())
    return found.group(0) + "\n" if found else ""


def manifest_toml(backbone_sha: str, head_sha: str, metrics: dict) -> str:
    channels = ",\n  ".join(f'{{ name = "{n}", center = {c:.1f}, width = {w:.1f} }}' for n, c, w in WINDOWS)
    labels = "".join(f'\n[[labels]]\nvalue = {v}\nname = "{n}"\ncolour = [{c[0]}, {c[1]}, {c[2]}]\n'
                     for v, n, c in LABELS)
    return f'''id = "head-ct-ich"
version = "0.1.0"
task = "segmentation+classification"
description = "Reference head CT model: per-slice segmentation of the intracranial space and of synthetic haemorrhage-like lesions, and a study-level lesion-present probability. Fixed filter-bank backbone, numpy-trained head, all from one real head CT with simulated sites."
licence = "GPL-2.0-or-later"
intended_use = "Research and engineering tests only. Not for clinical use."

[provenance]
script = "models/reference/train_head_ct.py"
data = ["Debian invesalius-examples: Cranium.inv3 (real head CT)", "synthetic lesions implanted"]
seed = {SEED}
training_volumes = {N_TRAIN}

[input]
modality = "CT"
min_slices = 8
size = [{GRID}, {GRID}]
spacing_mm = {SPACING_MM}
channels = [
  {channels},
]
outside_value = {OUTSIDE_HU:.1f}

[backbone]
file = "backbone.onnx"
sha256 = "{backbone_sha}"
input = "image"
output = "features"
features = {FEATURES}

[head]
file = "head.safetensors"
sha256 = "{head_sha}"
hidden = {HIDDEN}
samples_per_class = {SAMPLES_PER_CLASS}
{labels}
[classification]
name = "lesion present"

{validation_section()}[metrics]
dice_intracranial = {metrics["dice_intracranial"]:.4f}
dice_lesion = {metrics["dice_lesion"]:.4f}
auroc_lesion_present = {metrics["auroc_lesion_present"]:.4f}
heldout_volumes = {metrics["heldout_volumes"]}
'''


def carried_card_sections() -> str:
    """The card's sections from "## Reference validation set" up to "## Limitations", or "".

    They report ``make_validation_set.py`` and the Rust site experiment
    (``models/tests/site_experiment.rs``), not this script, so a re-run keeps them as they
    are; re-run those and update the figures when the head changes.
    """
    path = PACKAGE_DIR / "card.md"
    if not path.exists():
        return ""
    found = re.search(r"^## Reference validation set\n.*?(?=^## Limitations\n)", path.read_text(),
                      re.MULTILINE | re.DOTALL)
    return found.group(0) if found else ""


def card_md(metrics: dict, sizes: dict, fixtures: dict) -> str:
    feature_rows = "\n".join(f"| {i} | {n} |" for i, n in enumerate(FEATURE_NAMES))
    plain, lesion = fixtures["ct-series"], fixtures["ct-series-lesion"]
    small, large = metrics["detected_small"], metrics["detected_large"]
    w0, w1 = metrics["cls_w"]
    return f"""# head-ct-ich 0.1.0: reference head CT model

> **Not for clinical use.** Research and engineering tests only. Trained on a
> single real head CT with synthetic lesions; it has never seen another
> patient nor a real haemorrhage.

A small, reproducible model package for exercising Radiant Edge's model
pipeline end to end (preprocessing, ONNX backbone, head in Rust, study-level
classification, federated head updates) on real anatomy. Produced by
`python3 models/reference/train_head_ct.py` (seed {SEED}; numpy, scipy, onnx,
onnxruntime, pydicom; no deep-learning framework; about 3 minutes on 2 CPU
cores). Re-running it rewrites `head-ct/` and `models/reference/expected.json`
byte for byte on the same machine (single-threaded BLAS and onnxruntime).

## Data

- Anatomy: `Cranium.inv3` from the Debian package `invesalius-examples`, a
  real head CT (108 axial slices of 256 x 256, 0.957 x 0.957 x 1.5 mm, from
  the teeth to the vertex, with a large left frontal skull defect). The
  fixture series `fixtures/ct-series` is the same volume.
- Every training and held-out study is this one anatomy with its own
  synthetic lesions, simulated site and positioning ({N_TRAIN} training
  studies, seeds `[{SEED}, 0, k]`; {N_HELDOUT} held-out studies, seeds
  `[{SEED}, 1, k]`). Held-out metrics therefore measure robustness to lesion
  placement, scanner variation and positioning, **not** generalisation to
  other patients.

## Labels

| value | name | how |
| --- | --- | --- |
| 1 | intracranial space | **Algorithmic reference label**, not an expert segmentation. Per axial slice: bone = HU > 300; the holes of the bone mask are filled (`binary_fill_holes`) after a morphological closing with the smallest disk of radius 6, 10, 14, 18 or 22 px that gives a plausible filled area (0.5 to 1.3 times the soft tissue inside the convex hull of the largest bone component); where none does (slices through the skull defect) that convex hull is used. Minus the bone and a 1-pixel dilation of it; soft tissue only (-100 to 150 HU); the largest 3D connected component; slices where it covers less than 200 mm^2 are dropped. It can include small extracranial regions at the skull base (orbit, sphenoid) and the upper cervical canal in the lowest slices. |
| 2 | lesion | **Exact synthetic label.** 0 to 3 haemorrhage-like ellipsoids per study: semi-axes 4 to 20 mm (largest log-uniform, the others 0.6 to 1 times it, at least 4 mm), random in-plane rotation, +50 to +80 HU added to the local tissue (brain here is about 25 to 35 HU, so lesions read about 75 to 115 HU, like acute blood), smooth edge (half a sine over +-1.5 mm about the surface); every voxel a lesion touches lies in the intracranial space. The label is the ellipsoid itself and overrides label 1. |

Labels are made at the CT's resolution and brought to the model grid by the
same bilinear sampling as the image (class weights at the sample point,
argmax).

## Simulated sites

Per study, drawn from its seed: lesion prevalence {PREVALENCE[0]} to
{PREVALENCE[1]} (a study with lesions gets 1, 2 or 3 with probability 0.6, 0.3,
0.1); contrast scale {CONTRAST[0]} to {CONTRAST[1]} (HU multiplied); a smooth
multiplicative bias field on attenuation (HU + 1000 multiplied by 1 + a
quadratic polynomial of x, y, z with maximum amplitude 0 to {BIAS_MAX}: up to
about +-10 HU in soft tissue); in-plane Gaussian blur of sigma 0 to 1 pixel;
white Gaussian noise of sigma 0 to 15 HU, added last. Positioning: left-right
mirror (p = 0.5), in-plane rotation +-{ROTATION_DEG:g} degrees, scale
{SCALE[0]} to {SCALE[1]}, shift +-{SHIFT_MM:g} mm, all applied to the model's
sampling grid in training; inference uses the plain grid below.

## Model

Input (as `models/src/preprocess.rs` computes it): each axial slice
resampled to 64 x 64 at 3.9 mm, centred on the slice centre: model pixel
(i, j) samples the source at continuous index x = cx + (j - 31.5) 3.9 / sx,
y = cy + (i - 31.5) 3.9 / sy (cx = (columns - 1) / 2, cy = (rows - 1) / 2,
sx, sy the column and row spacing), bilinear on the 4 neighbours, -1024 HU for
a neighbour outside the image; three channels clip((HU - (c - w/2)) / w, 0, 1)
for the brain (40, 80), subdural (75, 215) and bone (600, 2800) windows.

Backbone `backbone.onnx` (opset 13, IR 7; Conv, Clip, Mul, Concat, Relu
only; input `image` [N, 3, 64, 64] with a dynamic N, output `features`
[N, 16, 64, 64]): a **fixed, untrained** multi-scale filter bank, not a learned
network, designed by hand. Base maps: the three windows, a bone indicator (0
at 300 HU, 1 from 440 HU) and an air indicator (1 at -800 HU and below, 0 from
-100 HU); separable depthwise Gaussian blurs of sigma 1, 2, 4, 8 px (zero
padding); ray sums of twice the sigma-1 blurred bone indicator (the blur
closes gaps that 3.9 mm sampling leaves in a thin skull) over 63 px (the whole
grid) to the left, right, up and down, each clipped to 1, combined as "bone in
all 4 directions" (product) and "in at least 3" (clip(sum - 2, 0, 1));
HU-range indicators of the sigma-1 blur (HU read back from the bone window,
which is linear from -800 to 2000 HU): blood-like (70 to 140 HU, ramps 50-70
and 140-170) and fat (-130 to -60 HU, ramps -170 to -130 and -60 to -30; there
is no fat inside the skull), blurred again. The subdural window is part of
the input contract but unused by this filter bank (zero weights); a trained
backbone could use it. Features, each ReLU of a fixed 1x1 combination and
roughly in [0, 2]:

| # | feature |
| --- | --- |
{feature_rows}

Head `head.safetensors` (the only trainable, federated part; applied in
Rust): `seg.w1` [16, 16], `seg.b1` [16], `seg.w2` [3, 16], `seg.b2` [3]: per
pixel h = relu(W1 f + b1), logits = W2 h + b2, softmax over background,
intracranial space and lesion; label = argmax. `cls.w` [2], `cls.b` [1]:
study lesion probability = sigmoid(w0 m + w1 ln(1 + v) + b), m = the highest
lesion probability over all slices and pixels, v = lesion pixels (argmax) x
3.9 x 3.9 x slice spacing / 1000 (ml at model resolution). Fitted: w0 =
{w0:.3f}, w1 = {w1:.3f}, b = {metrics['cls_b']:.3f}; the lesion volume carries
the decision, m adds little once v is known.

Training: the segmentation head by Adam (cosine learning rate from
{LEARNING_RATE}, {EPOCHS} epochs, batches of {BATCH}) on softmax
cross-entropy with hand-written backprop, on a pixel subsample of the
training studies (all lesion pixels and all pixels whose blood-range
indicator exceeds 0.2, the hard negatives; {KEEP['intracranial']:.0%} of other
intracranial pixels, {KEEP['head']:.0%} of other head pixels, {KEEP['air']:.0%}
of air; each weighted by the inverse of its keep rate) with class weights
{CLASS_WEIGHTS.tolist()}; then the classifier by L2-regularised logistic
regression (Newton's method) on the training studies' (m, ln(1 + v)).

## Held-out metrics ({metrics['heldout_volumes']} studies, {metrics['heldout_positive']} with lesions)

| metric | value |
| --- | --- |
| Dice, intracranial space (model resolution, pooled over studies) | {metrics['dice_intracranial']:.4f} |
| Dice, lesion (model resolution, pooled over studies) | {metrics['dice_lesion']:.4f} |
| AUROC, lesion present (study probability) | {metrics['auroc_lesion_present']:.4f} |
| study probability with lesions: min / median | {metrics['p_pos_min']:.3f} / {metrics['p_pos_median']:.3f} |
| study probability without lesions: median / max | {metrics['p_neg_median']:.3f} / {metrics['p_neg_max']:.3f} |
| lesions hit (any pixel labelled lesion): under {SMALL_LESION_PX} model pixels / larger | {small[0]} of {small[1]} / {large[0]} of {large[1]} |
| training studies: Dice intracranial / lesion, AUROC | {metrics['train_dice_intracranial']:.4f} / {metrics['train_dice_lesion']:.4f} / {metrics['train_auroc']:.4f} |

The held-out studies are not a pristine test set: a handful of filter-bank
and training variants were compared on them while this script was written.

Fixture series (`models/reference/expected.json`, the whole pipeline in numpy
and onnxruntime on the DICOM files): `fixtures/ct-series` (no lesion): study
probability {plain['study_lesion_probability']:.4f}, m =
{plain['max_lesion_probability']:.3f}, {plain['lesion_ml']:.2f} ml;
`fixtures/ct-series-lesion` (one 12 mm sphere, +65 HU, 7.2 ml): study
probability {lesion['study_lesion_probability']:.4f}, m =
{lesion['max_lesion_probability']:.3f}, {lesion['lesion_ml']:.2f} ml.

## Files and licence

| file | bytes |
| --- | --- |
| backbone.onnx | {sizes['backbone.onnx']} |
| head.safetensors | {sizes['head.safetensors']} |

Weights and data files of this package (`backbone.onnx`, `head.safetensors`,
`validation.safetensors`, and the heads a site fine-tunes from them):
**GPL-2.0-or-later** (`licence` in the manifest). They are fitted to, and the
validation set is cut from, the head CT `Cranium.inv3`, which Debian
distributes under GPL-2 (the `Files: *` stanza of
`/usr/share/doc/invesalius-examples/copyright`); we treat them as derived from
it and give them its terms rather than leave the question open. The code that
trains and runs them (`train_head_ct.py`, `make_validation_set.py`, the
appliance) stays Apache-2.0, as the repository: the model is data the
appliance loads, not linked into it.

{carried_card_sections()}## Limitations

- One patient. Nothing here says how the model behaves on any other head,
  scanner, reconstruction kernel or slice thickness; expect it to fail there.
- Lesions are synthetic ellipsoids of uniform added density; real
  haemorrhages (subdural crescents, subarachnoid and intraventricular blood,
  mass effect, oedema, mixed density) are not represented.
- The intracranial label is algorithmic and imperfect at the skull base and
  near the skull defect.
- The backbone is a hand-designed filter bank and the head a 16-unit MLP on
  3.9 mm pixels: small lesions (a few model pixels) are often missed, and
  dense structures near the skull base (vessels, partial volume of bone) give
  occasional false-positive pixels.
- Metrics come from the same anatomy as training (disjoint seeds only).

**Not for clinical use.**
"""


# --------------------------------------------------------------------------
# driver

def run_studies(split: int, count: int, hu, ic, ic_depth, spacing, backbone: Backbone):
    """Yield (study, features) for the studies of one split."""
    for k in range(count):
        study = make_study(split, k, hu, ic, ic_depth, spacing)
        yield study, backbone(study["image"])


def evaluate(head: dict, studies: list[dict]) -> dict:
    """Pooled Dice per label, AUROC of the study probability, per-lesion detection by size."""
    from scipy import ndimage as ndi

    inter = {1: 0, 2: 0}
    sums = {1: 0, 2: 0}
    scores, positive = [], []
    lesions = {"small": [0, 0], "large": [0, 0]}  # [detected, total]; small: < SMALL_LESION_PX pixels
    for s in studies:
        pred, ref = s["pred"], s["labels"]
        for c in (1, 2):
            inter[c] += int(np.logical_and(pred == c, ref == c).sum())
            sums[c] += int((pred == c).sum() + (ref == c).sum())
        scores.append(classify(head, s["m"], s["v"]))
        positive.append(bool((ref == 2).any()))
        parts, n = ndi.label(ref == 2)
        for k in range(1, n + 1):
            region = parts == k
            tally = lesions["small" if region.sum() < SMALL_LESION_PX else "large"]
            tally[0] += int((pred[region] == 2).any())
            tally[1] += 1
    scores, positive = np.array(scores), np.array(positive)
    return {"dice_intracranial": 2 * inter[1] / sums[1], "dice_lesion": 2 * inter[2] / sums[2],
            "auroc": auroc(scores, positive), "scores": scores, "positive": positive, "lesions": lesions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    from scipy import ndimage as ndi

    log("anatomy and intracranial label")
    hu, spacing = load_anatomy()
    sx, sy, sz = spacing
    ic = intracranial_mask(hu, spacing)
    ic_depth = ndi.distance_transform_edt(ic, sampling=(sz, sy, sx))
    check_fixture_lesion(ic, spacing)
    log(f"  intracranial space: {int(ic.sum())} voxels, {ic.sum() * sx * sy * sz / 1000:.0f} ml, "
        f"slices {int(np.flatnonzero(ic.any(axis=(1, 2)))[0])}-{int(np.flatnonzero(ic.any(axis=(1, 2)))[-1])}")

    model = build_backbone()
    backbone_bytes = model.SerializeToString()
    backbone = Backbone(backbone_bytes)

    log(f"training studies ({N_TRAIN})")
    sample_rng = np.random.default_rng([SEED, 2])
    train_feats, samples = [], []
    for k, (study, feats) in enumerate(run_studies(0, N_TRAIN, hu, ic, ic_depth, spacing, backbone)):
        samples.append(pixel_sample(feats, study["labels"], sample_rng))
        train_feats.append((study, feats.astype(np.float16)))
        if k % 8 == 0:
            log(f"  study {k}: {len(study['lesions'])} lesions, site {study['site']}")
    f = np.concatenate([s[0] for s in samples])
    y = np.concatenate([s[1] for s in samples]).astype(np.int64)
    w = np.concatenate([s[2] for s in samples])
    log(f"  {len(y)} training pixels, per class {np.bincount(y, minlength=CLASSES).tolist()}, "
        f"feature max {f.max(axis=0).round(2).tolist()}")

    log("segmentation head")
    head = train_segmentation(f, y, w, np.random.default_rng([SEED, 3]))
    del f, y, w, samples

    log("study classifier")
    train = []
    for study, feats in train_feats:
        probs = head_probabilities(head, feats.astype(np.float32))
        out = study_outputs(head, probs, sz)
        train.append({"labels": study["labels"], "pred": out["labels"], "m": out["m"], "v": out["v"]})
    del train_feats
    x = np.array([[s["m"], math.log1p(s["v"])] for s in train])
    t = np.array([float((s["labels"] == 2).any()) for s in train])
    beta = fit_logistic(x, t)
    head["cls.w"] = beta[:2].astype(np.float32)
    head["cls.b"] = beta[2:].astype(np.float32)
    log(f"  cls.w {head['cls.w'].tolist()}, cls.b {head['cls.b'].tolist()}")
    train_eval = evaluate(head, train)

    log(f"held-out studies ({N_HELDOUT})")
    heldout = []
    for study, feats in run_studies(1, N_HELDOUT, hu, ic, ic_depth, spacing, backbone):
        out = study_outputs(head, head_probabilities(head, feats), sz)
        heldout.append({"labels": study["labels"], "pred": out["labels"], "m": out["m"], "v": out["v"]})
    ev = evaluate(head, heldout)
    pos, neg = ev["scores"][ev["positive"]], ev["scores"][~ev["positive"]]
    metrics = {
        "dice_intracranial": ev["dice_intracranial"], "dice_lesion": ev["dice_lesion"],
        "auroc_lesion_present": ev["auroc"], "heldout_volumes": N_HELDOUT,
        "heldout_positive": int(ev["positive"].sum()),
        "p_pos_min": float(pos.min()), "p_pos_median": float(np.median(pos)),
        "p_neg_median": float(np.median(neg)), "p_neg_max": float(neg.max()),
        "train_dice_intracranial": train_eval["dice_intracranial"], "train_dice_lesion": train_eval["dice_lesion"],
        "train_auroc": train_eval["auroc"],
        "detected_small": ev["lesions"]["small"], "detected_large": ev["lesions"]["large"],
        "cls_w": head["cls.w"].tolist(), "cls_b": float(head["cls.b"][0]),
    }
    log("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))

    log("fixtures")
    head = {k: np.asarray(v, np.float32) for k, v in head.items()}
    fixtures = fixture_expectations(backbone, head)

    PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
    head_bytes = safetensors_bytes(head)
    files = {"backbone.onnx": backbone_bytes, "head.safetensors": head_bytes}
    for name, data in files.items():
        (PACKAGE_DIR / name).write_bytes(data)
    backbone_sha, head_sha = sha256(backbone_bytes), sha256(head_bytes)
    (PACKAGE_DIR / "manifest.toml").write_text(manifest_toml(backbone_sha, head_sha, metrics))
    sizes = {name: len(data) for name, data in files.items()}
    (PACKAGE_DIR / "card.md").write_text(card_md(metrics, sizes, fixtures))
    expected = {
        "about": "Outputs of head-ct-ich on the fixture series, computed by models/reference/train_head_ct.py "
                 "with numpy (preprocessing, head) and onnxruntime (backbone). Counts are 64x64 model pixels "
                 "over all slices; float32 summation order differs between runtimes, so compare with a small "
                 "tolerance (a few pixels, 1e-3 in probabilities).",
        "model": {"id": "head-ct-ich", "version": "0.1.0", "backbone_sha256": backbone_sha, "head_sha256": head_sha},
        "series": fixtures,
    }
    EXPECTED_JSON.write_text(json.dumps(expected, indent=2) + "\n")
    log(f"wrote {PACKAGE_DIR} ({sizes}) and {EXPECTED_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
