#!/usr/bin/env python3
"""Per-node local error of ONNX Runtime CPU: every node's ORT output vs a float64 torch/numpy
recomputation from ORT's own inputs to that node (bbox model, deepbet's real input for a NIfTI)."""
import sys, os, warnings, json
import numpy as np, torch, onnx, onnx.numpy_helper as nh, onnxruntime as ort
import torch.nn.functional as F
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert import realistic_inputs
import deepbet.utils
torch.set_num_threads(2)
name = sys.argv[2] if len(sys.argv) > 2 else "bbox"
fname = {"bbox": "deepbet_bbox_128.onnx", "mask": "deepbet_mask_256.onnx"}[name]
rec = realistic_inputs([sys.argv[1]], deepbet.utils.DATA_PATH)
inp = rec[name][0].numpy()
path = os.path.dirname(os.path.abspath(__file__)) + "/onnx/" + fname
m = onnx.load(path)
init = {t.name: nh.to_array(t) for t in m.graph.initializer}
consts = {n.output[0]: nh.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"}
del m.graph.output[:]
for n in m.graph.node:
    if n.op_type != "Constant":
        m.graph.output.append(onnx.helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None))
so = ort.SessionOptions(); so.intra_op_num_threads = 2
so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, sys.argv[3] if len(sys.argv) > 3 else "ORT_ENABLE_ALL")
sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
outs = dict(zip([o.name for o in m.graph.output], sess.run(None, {"input": inp})))
vals = {"input": inp, **init, **consts, **outs}
def attr(n, k, d=None):
    for a in n.attribute:
        if a.name == k: return onnx.helper.get_attribute_value(a)
    return d
rows = []
for n in m.graph.node:
    if n.op_type == "Constant": continue
    x = [torch.from_numpy(np.asarray(vals[i], dtype=np.float64)) if i else None for i in n.input]
    t = n.op_type
    if t == "Conv":
        p = attr(n, "pads")[:3]
        ref = F.conv3d(x[0], x[1], x[2] if len(x) > 2 else None, stride=attr(n, "strides"), padding=p)
    elif t == "ConvTranspose":
        ref = F.conv_transpose3d(x[0], x[1], x[2] if len(x) > 2 else None, stride=attr(n, "strides"),
                                 padding=attr(n, "pads")[:3], output_padding=attr(n, "output_padding", [0, 0, 0]))
    elif t == "InstanceNormalization":
        ref = F.instance_norm(x[0], weight=x[1], bias=x[2], eps=attr(n, "epsilon"))
    elif t == "Relu": ref = torch.relu(x[0])
    elif t == "Add": ref = x[0] + x[1]
    elif t == "MaxPool":
        ref = F.max_pool3d(x[0], attr(n, "kernel_shape"), attr(n, "strides"), attr(n, "pads")[:3])
    elif t == "Softmax": ref = torch.softmax(x[0], attr(n, "axis"))
    else: continue
    got = outs[n.output[0]].astype(np.float64); ref = ref.numpy()
    scale = float(np.abs(ref).max()) or 1.0
    rows.append((n.name, t, float(np.abs(got - ref).max()), float(np.abs(got - ref).max() / scale)))
rows.sort(key=lambda r: -r[3])
for r in rows[:12]: print("%-45s %-22s max_abs=%.3g rel_to_max=%.3g" % r)
