#!/usr/bin/env python3
"""Write a synthetic contract-2 package of about 100 M parameters with RANDOM WEIGHTS, for
measuring what a network of that size costs on the appliance (latency, peak memory, what a
learning cache would hold); its masks mean nothing and it is never shipped.

The graph is a per-slice vision transformer: 16x16 patches of a 128x128 slice (64 tokens),
8 pre-norm blocks of width 1024 (16 heads, MLP 4096), and a linear layer back to two logits per
pixel. Exported from PyTorch (opset 17, the TorchScript exporter) with a fixed seed. The last
block's tokens are a second graph output (`features`, 1024 channels on the 8x8 token grid, 1/16
of the slice), and the package declares a trainable head over them and the class logits, so
that the learning data of a case of such a backbone can be measured
(`hil-tests/src/bin/sampled_cache_bench.rs`). The head (`head.safetensors`) starts as the
identity on the logits.

    python models/synthetic/make_package.py --out target/synthetic-100m
"""
import argparse
import hashlib
import os

import torch
from torch import nn

SIZE, PATCH, WIDTH, DEPTH, HEADS, CLASSES = 128, 16, 1024, 8, 16, 2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))

    def forward(self, x):
        n, t, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5, dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(n, t, WIDTH))
        return x + self.mlp(self.norm2(x))


class Synthetic(nn.Module):
    def __init__(self):
        super().__init__()
        grid = SIZE // PATCH
        self.embed = nn.Conv2d(1, WIDTH, PATCH, stride=PATCH)
        self.position = nn.Parameter(torch.randn(1, grid * grid, WIDTH) * 0.02)
        self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
        self.out = nn.Linear(WIDTH, CLASSES * PATCH * PATCH)

    def forward(self, x):
        n, grid = x.shape[0], SIZE // PATCH
        tokens = self.blocks(self.embed(x).flatten(2).transpose(1, 2) + self.position)
        y = self.out(tokens)
        y = y.reshape(n, grid, grid, CLASSES, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
        features = tokens.transpose(1, 2).reshape(n, WIDTH, grid, grid)
        return y.reshape(n, CLASSES, SIZE, SIZE), features


MANIFEST = """# RANDOM WEIGHTS: a synthetic network for measurements only (models/synthetic/make_package.py).
contract = 2
id = "synthetic-100m"
version = "0.0.1"
task = "segmentation"
description = "Random-weight per-slice vision transformer of {params} parameters, for measuring latency and memory at that size. Its masks mean nothing."
licence = "CC0-1.0"
intended_use = "Benchmarks only. Random weights: never for any reading of images."

[provenance]
script = "models/synthetic/make_package.py"
seed = 0
parameters = {params}
weights = "random (torch.manual_seed(0))"

[input]
modality = "MR"
min_slices = 1
orientation = "RAS"

[[stages]]
name = "slices"
file = "synthetic.onnx"
sha256 = "{sha256}"
input = "image"
output = "logits"
layout = "NCHW"
spatial = "slice"
shape = [{size}, {size}]
resize = "linear"
slice_axis = 2
channels = [[{{ op = "zscore" }}]]
[stages.trainable]
head = "head.safetensors"
head_sha256 = "{head_sha256}"
logits = "logits"
features = "features"
channels = {width}
stride = {patch}
hidden = {hidden}
samples_per_class = 4096
[stages.scores]
per = "voxel"
activation = "softmax"
channels = {classes}
decision = "argmax"

[[labels]]
value = 1
name = "random"
colour = [200, 200, 0]
category = {{ scheme = "SCT", value = "91723000", meaning = "Anatomical Structure" }}
type = {{ scheme = "SCT", value = "12738006", meaning = "Brain" }}

[report]
procedure = {{ scheme = "LN", value = "24590-2", meaning = "MR Brain" }}
"""


HIDDEN = 16


def write_identity_head(path):
    """A head whose output logits are the graph's (hidden units +l0, -l0, +l1, -l1; the rest
    read the features with zero output weights): it reproduces the graph until fine-tuned."""
    from safetensors.torch import save_file
    inputs = CLASSES + WIDTH
    w1 = torch.zeros(HIDDEN, inputs)
    w2 = torch.zeros(CLASSES, HIDDEN)
    for c in range(CLASSES):
        w1[2 * c, c], w1[2 * c + 1, c] = 1.0, -1.0
        w2[c, 2 * c], w2[c, 2 * c + 1] = 1.0, -1.0
    generator = torch.Generator().manual_seed(1)
    w1[2 * CLASSES:, CLASSES:] = torch.randn(HIDDEN - 2 * CLASSES, WIDTH, generator=generator) * (2.0 / WIDTH) ** 0.5
    save_file({"seg.w1": w1, "seg.b1": torch.zeros(HIDDEN), "seg.w2": w2, "seg.b2": torch.zeros(CLASSES),
               "cls.w": torch.zeros(2), "cls.b": torch.zeros(1)}, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = Synthetic().eval()
    params = sum(p.numel() for p in model.parameters())
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "synthetic.onnx")
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 1, SIZE, SIZE),), path, dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["logits", "features"],
                          dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}, "features": {0: "n"}})
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    head = os.path.join(args.out, "head.safetensors")
    write_identity_head(head)
    head_digest = hashlib.sha256(open(head, "rb").read()).hexdigest()
    with open(os.path.join(args.out, "manifest.toml"), "w") as f:
        f.write(MANIFEST.format(params=params, sha256=digest, size=SIZE, classes=CLASSES,
                                head_sha256=head_digest, width=WIDTH, patch=PATCH, hidden=HIDDEN))
    with open(os.path.join(args.out, "card.md"), "w") as f:
        f.write(f"# synthetic-100m\n\nRandom weights ({params:,} parameters), for benchmarks only; "
                "written by models/synthetic/make_package.py.\n")
    print(f"{path}: {params} parameters, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
