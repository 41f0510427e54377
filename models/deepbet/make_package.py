#!/usr/bin/env python3
"""Write the deepbet appliance package (contract 2) from the deepbet 1.0.2 wheel's TorchScript
models: export each to ONNX (opset 17, TorchScript exporter), rewrite the graph so ONNX Runtime
computes what PyTorch does (below), and write the brain stage's trainable head
(head.safetensors), manifest.toml (hashes filled in), card.md and LICENSE next to the two graphs.

Run it where PyTorch is installed (PyPI; conversion time only, CI never converts):

    python3 -m venv /tmp/dbvenv && /tmp/dbvenv/bin/pip install torch onnx numpy safetensors
    /tmp/dbvenv/bin/pip install --no-deps deepbet==1.0.2
    /tmp/dbvenv/bin/python models/deepbet/make_package.py --out models/deepbet/package

Two rewrites, both exact in real arithmetic:
* InstanceNormalization (scale 1, bias 0 in these models, checked) becomes
  d = x - mean(x); y = d / sqrt(mean(d^2) + eps), each mean taken as three staged ReduceMeans
  (last axis first). ONNX Runtime's float32 InstanceNormalization kernel accumulates over up to
  2 M values and moved the mask model's probabilities by up to 0.13 from float64 on the MNI152
  template (712 of 5.4 M voxels flipped at 0.5); the staged form stays within 2.3e-5.
* The final softmax over the two classes becomes sigmoid(l1 - l0): one output, `brain_prob`,
  the probability deepbet thresholds (its channel 1).

The brain stage learns on site through a small head (`[stages.trainable]` in the manifest):
brain_256.onnx gets two more outputs after `brain_prob` (which stays first and unchanged),
`class_logits` (the last ConvTranspose's two class logits, [1, 2, 256, 256, 256]) and `features`
(that ConvTranspose's input, the last decoder features, [1, 8, 128, 128, 128]), and
head.safetensors is a per-voxel MLP over (l0, l1, the 8 features of the voxel's 128^3 cell),
10 -> 16 -> 2, initialised so that its softmax class 1 is sigmoid(l1 - l0) = brain_prob: hidden
units 0-3 are relu(+-l0), relu(+-l1) and give back the logits exactly; units 4-15 read the
features with He-normal weights (seed HEAD_SEED) and output weights 0, so they contribute
nothing until the head is fine-tuned. check_head.py verifies both with ONNX Runtime.
"""
import argparse
import hashlib
import os
import shutil

import numpy as np
import onnx
import onnx.numpy_helper as nh
import safetensors.numpy
import torch
from onnx import TensorProto, helper

OPSET = 17
# (TorchScript file in the wheel's data/models, ONNX file, cube side)
MODELS = {"bbox": ("bbox_model.pt", "bbox_128.onnx", 128), "brain": ("model.pt", "brain_256.onnx", 256)}
HERE = os.path.dirname(os.path.abspath(__file__))
# The brain stage's trainable head: graph outputs it reads, its size, its initialisation.
LOGITS, FEATURES = "class_logits", "features"
HEAD_FILE, HEAD_HIDDEN, HEAD_SEED = "head.safetensors", 16, 20261202
SAMPLES_PER_CLASS = 4096


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(torchscript, side, path):
    model = torch.jit.load(torchscript, map_location="cpu").eval()
    dummy = torch.zeros(1, 1, side, side, side)
    torch.onnx.export(model, (dummy,), path, dynamo=False, opset_version=OPSET,
                      do_constant_folding=True, input_names=["input"], output_names=["probs"])
    return int(sum(p.numel() for p in model.parameters()))


def rewrite(path):
    m = onnx.load(path)
    g = m.graph
    consts = {n.output[0]: nh.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"}
    nodes, eps, k = [], None, 0
    for n in g.node:
        if n.op_type == "InstanceNormalization":
            x, scale, bias = n.input
            assert np.all(consts[scale] == 1) and np.all(consts[bias] == 0), "affine InstanceNorm"
            eps = [a.f for a in n.attribute if a.name == "epsilon"][0]
            p = f"/staged_in_{k}"
            k += 1
            mean = lambda src, dst: [  # noqa: E731
                helper.make_node("ReduceMean", [src], [dst + "_4"], axes=[4], keepdims=1),
                helper.make_node("ReduceMean", [dst + "_4"], [dst + "_3"], axes=[3], keepdims=1),
                helper.make_node("ReduceMean", [dst + "_3"], [dst], axes=[2], keepdims=1)]
            nodes += mean(x, p + "_mean")
            nodes += [helper.make_node("Sub", [x, p + "_mean"], [p + "_d"]),
                      helper.make_node("Mul", [p + "_d", p + "_d"], [p + "_d2"])]
            nodes += mean(p + "_d2", p + "_var")
            nodes += [helper.make_node("Add", [p + "_var", "staged_in_eps"], [p + "_ve"]),
                      helper.make_node("Sqrt", [p + "_ve"], [p + "_std"]),
                      helper.make_node("Div", [p + "_d", p + "_std"], [n.output[0]])]
        elif n.op_type == "Softmax":
            nodes += [helper.make_node("Split", [n.input[0], "two_ones"], ["/l0", "/l1"], axis=1),
                      helper.make_node("Sub", ["/l1", "/l0"], ["/logit"]),
                      helper.make_node("Sigmoid", ["/logit"], ["brain_prob"])]
        else:
            nodes.append(n)
    used = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.append(nh.from_array(np.array(eps, dtype=np.float32), "staged_in_eps"))
    g.initializer.append(nh.from_array(np.array([1, 1], dtype=np.int64), "two_ones"))
    dims = [d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("brain_prob", TensorProto.FLOAT, [dims[0], 1] + dims[2:]))
    onnx.checker.check_model(m)
    onnx.save(m, path)


def attribute(node, name, default=None):
    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default


def add_trainable_outputs(path):
    """Give the rewritten brain graph two more outputs for the trainable head, found by walking
    back from `brain_prob`: Sigmoid <- Sub(l1, l0) <- Split <- ConvTranspose (LOGITS, its output:
    the two class logits) <- its data input (FEATURES). Fails on any other structure. Returns
    (classes, channels, stride)."""
    m = onnx.load(path)
    g = m.graph
    assert [o.name for o in g.output] == ["brain_prob"], "brain graph outputs"
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}

    def made_by(tensor, op):
        n = producer.get(tensor)
        assert n is not None and n.op_type == op, f"{tensor} is not the output of a {op}"
        return n

    sub = made_by(made_by("brain_prob", "Sigmoid").input[0], "Sub")
    split = made_by(sub.input[0], "Split")
    assert made_by(sub.input[1], "Split") is split and list(sub.input) == list(split.output[::-1]), \
        "brain_prob is not sigmoid(l1 - l0) of one Split"
    assert len(split.output) == 2 and attribute(split, "axis") == 1, "Split into two classes"
    tp = made_by(split.input[0], "ConvTranspose")
    logits, features = tp.output[0], tp.input[0]
    weight = inits[tp.input[1]]  # [in channels, out channels / group, kD, kH, kW]
    channels, classes = weight.dims[0], weight.dims[1]
    stride = attribute(tp, "strides")
    assert classes == 2 and attribute(tp, "group", 1) == 1, "ConvTranspose to two classes"
    assert len(set(stride)) == 1 and list(attribute(tp, "kernel_shape")) == list(stride) \
        and not any(attribute(tp, "pads", [0])) and not any(attribute(tp, "output_padding", [0])) \
        and set(attribute(tp, "dilations", [1])) == {1}, \
        "ConvTranspose is not kernel = stride without padding (a voxel reads one feature cell)"
    stride = stride[0]
    dims = [d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    assert dims[1] == 1 and all(s % stride == 0 for s in dims[2:]), "brain_prob shape"
    shapes = {LOGITS: [dims[0], classes] + dims[2:],
              FEATURES: [dims[0], channels] + [s // stride for s in dims[2:]]}
    g.node.extend([helper.make_node("Identity", [logits], [LOGITS], name="/trainable/" + LOGITS),
                   helper.make_node("Identity", [features], [FEATURES], name="/trainable/" + FEATURES)])
    for name in (LOGITS, FEATURES):
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]))
    onnx.checker.check_model(m)
    # ONNX shape inference (not kept in the file) must give the shapes declared above.
    inferred = {v.name: v.type.tensor_type for v in
                onnx.shape_inference.infer_shapes(m, strict_mode=True).graph.value_info}
    for name, tensor in ((LOGITS, logits), (FEATURES, features)):
        got = [d.dim_value for d in inferred[tensor].shape.dim]
        assert inferred[tensor].elem_type == TensorProto.FLOAT and got == shapes[name], \
            f"{name}: shape inference gives {got}, not {shapes[name]}"
    onnx.save(m, path)
    return classes, channels, stride


def head_weights(classes, channels, hidden=HEAD_HIDDEN, seed=HEAD_SEED):
    """The head as head.safetensors holds it (models::head::Head): inputs are the class logits
    (l0, l1) then the features, softmax(w2 . relu(w1 . x + b1) + b2). Units 0-3 carry +l0, -l0,
    +l1, -l1 and w2 adds them back to (l0, l1), so the head starts as the network's own
    softmax; units 4-15 read the features only (He-normal, std sqrt(2 / channels)) and have
    output weight 0 until fine-tuning. The study classifier is unused here (zeros)."""
    assert classes == 2 and hidden > 2 * classes
    inputs = classes + channels
    w1 = np.zeros((hidden, inputs), np.float64)
    w2 = np.zeros((classes, hidden), np.float64)
    for c in range(classes):
        w1[2 * c, c], w1[2 * c + 1, c] = 1, -1
        w2[c, 2 * c], w2[c, 2 * c + 1] = 1, -1
    rng = np.random.default_rng(seed)
    w1[2 * classes:, classes:] = rng.normal(0, np.sqrt(2 / channels), (hidden - 2 * classes, channels))
    zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    return {"seg.w1": w1.astype(np.float32), "seg.b1": zeros(hidden), "seg.w2": w2.astype(np.float32),
            "seg.b2": zeros(classes), "cls.w": zeros(2), "cls.b": zeros(1)}


INTENSITY = """channels = [[
  {{ op = "percentile-window", low = 0.5, high = 99.5{reuse} }},
  {{ op = "zscore" }},
  {{ op = "affine", factor = 0.226, offset = 0.449 }},
]]"""

MANIFEST = """# deepbet 1.0.2 as a contract-2 package: written by models/deepbet/make_package.py.
# models/PACKAGE.md documents every field; card.md says where each step comes from.
contract = 2
id = "deepbet"
version = "1.0.2"
task = "segmentation"
description = "Brain extraction of T1-weighted MRI: a 128^3 LinkNet3d finds the brain's bounding box, a 256^3 LinkNet3d segments the brain inside it (Fisch et al. 2024, deepbet 1.0.2)."
licence = "MIT"
intended_use = "Research only: brain masks of T1-weighted MRI of adults. Not for clinical use."

[provenance]
source = "PyPI deepbet 1.0.2, https://github.com/wwu-mmll/deepbet"
paper = "Fisch L et al. deepbet: Fast brain extraction of T1-weighted MRI using Convolutional Neural Networks. Computers in Biology and Medicine 179 (2024) 108845"
training = "about 7,800 T1-weighted MRIs (the paper's LIFE, BiDirect, MACS and other cohorts); not redistributed"
bbox_torchscript_sha256 = "{bbox_ts}"
brain_torchscript_sha256 = "{brain_ts}"
parameters_per_graph = {params}
conversion = "models/deepbet/make_package.py: torch {torch} torch.onnx.export opset {opset} (TorchScript exporter); InstanceNormalization as staged means; the two-class softmax as sigmoid(l1 - l0); brain_256 also outputs class_logits and features for the trainable head"
head_seed = {head_seed}

[input]
modality = "MR"
min_slices = 16
orientation = "RAS"

[[stages]]
name = "bbox"
file = "bbox_128.onnx"
sha256 = "{bbox}"
input = "input"
output = "brain_prob"
layout = "NCDHW"
spatial = "volume"
shape = [128, 128, 128]
resize = "nearest-exact"
{intensity_bbox}
postprocess = [{{ op = "largest-component", connectivity = 26 }}]
[stages.scores]
per = "voxel"
activation = "none"
channels = 1
decision = "threshold"
threshold = 0.5
grid = "model"

[[stages]]
name = "brain"
file = "brain_256.onnx"
sha256 = "{brain}"
input = "input"
output = "brain_prob"
layout = "NCDHW"
spatial = "volume"
shape = [256, 256, 256]
resize = "nearest-exact"
region = {{ stage = "bbox", min_slice_fraction = 0.02, margin = 0.1 }}
{intensity_brain}
postprocess = [{{ op = "largest-component", connectivity = 26 }}, {{ op = "fill-holes" }}]
# What learns on site: a per-voxel MLP ({head_inputs} -> {hidden} -> {classes}) over the graph's class logits
# ({logits}) and its last decoder features ({features}: {channels} channels at stride {stride}, a voxel
# reads the cell it lies in), initialised to reproduce the network: softmax class 1 =
# sigmoid(l1 - l0) = brain_prob; its feature units start with output weight 0.
[stages.trainable]
head = "{head_file}"
head_sha256 = "{head}"
logits = "{logits}"
features = "{features}"
channels = {channels}
stride = {stride}
hidden = {hidden}
samples_per_class = {samples_per_class}
[stages.scores]
per = "voxel"
activation = "none"
channels = 1
decision = "threshold"
threshold = 0.5
grid = "region"

[[labels]]
value = 1
name = "brain"
colour = [64, 160, 255]
category = {{ scheme = "SCT", value = "91723000", meaning = "Anatomical Structure" }}
type = {{ scheme = "SCT", value = "12738006", meaning = "Brain" }}

[report]
procedure = {{ scheme = "LN", value = "24590-2", meaning = "MR Brain" }}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "package"))
    args = ap.parse_args()
    import deepbet.utils  # the wheel's models live in site-packages/data/models
    data = os.path.join(str(deepbet.utils.DATA_PATH), "models")
    os.makedirs(args.out, exist_ok=True)
    values = {"torch": torch.__version__.split("+")[0], "opset": OPSET}
    for stage, (torchscript, onnx_file, side) in MODELS.items():
        path = os.path.join(args.out, onnx_file)
        values["params"] = export(os.path.join(data, torchscript), side, path)
        rewrite(path)
        if stage == "brain":
            classes, channels, stride = add_trainable_outputs(path)
        values[stage] = sha256(path)
        values[stage + "_ts"] = sha256(os.path.join(data, torchscript))
        print(f"{onnx_file}: {os.path.getsize(path)} bytes, sha256 {values[stage]}")
    head = os.path.join(args.out, HEAD_FILE)
    safetensors.numpy.save_file(head_weights(classes, channels), head)
    values.update(head_file=HEAD_FILE, head=sha256(head), logits=LOGITS, features=FEATURES,
                  channels=channels, stride=stride, hidden=HEAD_HIDDEN, classes=classes,
                  head_inputs=classes + channels, samples_per_class=SAMPLES_PER_CLASS,
                  head_seed=HEAD_SEED)
    print(f"{HEAD_FILE}: {os.path.getsize(head)} bytes, sha256 {values['head']}")
    values["intensity_bbox"] = INTENSITY.format(reuse="")
    values["intensity_brain"] = INTENSITY.format(reuse=', from = "bbox"')
    with open(os.path.join(args.out, "manifest.toml"), "w") as f:
        f.write(MANIFEST.format(**values))
    shutil.copy(os.path.join(HERE, "card.md"), os.path.join(args.out, "card.md"))
    licence = os.path.join(os.path.dirname(deepbet.__file__), "..", "deepbet-1.0.2.dist-info", "LICENSE")
    shutil.copy(licence, os.path.join(args.out, "LICENSE"))
    print("wrote", args.out)


if __name__ == "__main__":
    import deepbet
    main()
