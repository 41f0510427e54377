#!/usr/bin/env python3
"""Python onnxruntime reference for the inference benchmark (hil-tests/src/bin/infer_bench.rs).

Runs the same ONNX backbone on the same input tensors as the Rust benchmark: the bench writes
the preprocessed batches it fed the backbone (`input_NNN.npy`, float32 [n, channels, rows,
columns], in the order it ran them) and the features its backends returned (`ort_NNN.npy`,
`tract_NNN.npy`) into one directory, then drives this script over stdin, one command a line,
so that its rounds interleave with the Rust rounds in the same run:

  run NAME   time every batch through session NAME; only `session.run` is inside the timer
  check      compare the outputs of every session with the Rust backends' features
  quit

Sessions (CPUExecutionProvider, loaded once before the first command):
  default    `onnxruntime.SessionOptions()` untouched, as a Python user would run it
             (intra_op_num_threads = 0: onnxruntime picks the thread count)
  aligned    intra_op_num_threads = --intra-op-threads (the Rust ort session's count)

Every answer is one JSON line on stdout. Owns nothing but what it prints.
"""

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def task_count():
    """Threads of this process (each intra-op pool adds threads - 1 workers)."""
    return len(os.listdir("/proc/self/task"))


def load_session(model, threads):
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    before = task_count()
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    return session, {
        "intra_op_num_threads": options.intra_op_num_threads,
        "threads_started": task_count() - before,
        "providers": session.get_providers(),
        "graph_optimization_level": str(options.graph_optimization_level),
    }


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the ONNX backbone")
    parser.add_argument("--batches", required=True, help="directory of input_NNN.npy")
    parser.add_argument("--intra-op-threads", type=int, required=True)
    args = parser.parse_args()

    paths = sorted(glob.glob(os.path.join(args.batches, "input_*.npy")))
    if not paths:
        sys.exit(f"ort_reference: no input_*.npy in {args.batches}")
    inputs = [np.load(p) for p in paths]
    for p, x in zip(paths, inputs):
        if x.dtype != np.float32 or x.ndim != 4 or not x.flags["C_CONTIGUOUS"]:
            sys.exit(f"ort_reference: {p}: expected contiguous float32 [n,c,h,w], got {x.dtype} {x.shape}")

    sessions = {}
    info = {}
    for name, threads in (("default", None), ("aligned", args.intra_op_threads)):
        sessions[name], info[name] = load_session(args.model, threads)
    first = sessions["default"]
    input_name = first.get_inputs()[0].name
    output_name = first.get_outputs()[0].name
    outputs = {name: [None] * len(inputs) for name in sessions}

    answer({
        "ready": True,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "input": input_name,
        "output": output_name,
        "batches": [list(x.shape) for x in inputs],
        "sessions": info,
    })

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "run" and len(words) == 2 and words[1] in sessions:
            session = sessions[words[1]]
            batch_ms = []
            for k, x in enumerate(inputs):
                t = time.perf_counter_ns()
                out = session.run([output_name], {input_name: x})[0]
                batch_ms.append((time.perf_counter_ns() - t) / 1e6)
                outputs[words[1]][k] = out
            answer({"session": words[1], "batch_ms": batch_ms, "total_ms": sum(batch_ms)})
        elif words[0] == "check":
            report = {}
            for rust in ("ort", "tract"):
                files = sorted(glob.glob(os.path.join(args.batches, f"{rust}_*.npy")))
                if len(files) != len(inputs):
                    report[rust] = {"error": f"{len(files)} {rust}_*.npy files for {len(inputs)} batches"}
                    continue
                for name in sessions:
                    if any(o is None for o in outputs[name]):
                        report[f"{rust}_vs_{name}"] = {"error": f"session {name} has not run"}
                        continue
                    worst = 0.0
                    for o, f in zip(outputs[name], files):
                        theirs = np.load(f)
                        if theirs.shape != o.shape:
                            worst = float("inf")
                            break
                        worst = max(worst, float(np.max(np.abs(theirs - o))))
                    report[f"{rust}_vs_{name}"] = {"max_abs_diff": worst}
            answer({"check": report})
        elif words[0] == "quit":
            return
        else:
            answer({"error": f"unknown command {line.strip()!r}"})


if __name__ == "__main__":
    main()
