#!/usr/bin/env python3
"""Times an ONNX model in ONNX Runtime (CPU, one thread) for `coordinator prune --compare-ort`.

Usage: ort_time.py MODEL INPUTS_JSON SECONDS
INPUTS_JSON: [{"name": ..., "dtype": "f32"|"i64", "dims": [...]}, ...]; the values follow the
same formulas as Hone's tract timing (coordinator/compress/src/prune/latency.rs), so both runtimes see the
same tensors. Prints one JSON object: p50_ms, min_ms, runs, onnxruntime version.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def values(spec):
    n = int(np.prod(spec["dims"])) if spec["dims"] else 1
    i = np.arange(n, dtype=np.int64)
    if spec["dtype"] == "i64":
        if "mask" in spec["name"]:
            return np.ones(spec["dims"], dtype=np.int64)
        v = 1000 + (i * 37) % 20000
        v[0], v[-1] = 101, 102
        return v.reshape(spec["dims"])
    v = ((i * 7919) % 1000).astype(np.float32) / 1000.0 - 0.5
    return v.reshape(spec["dims"])


def main():
    model, specs, seconds = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = {s["name"]: values(s) for s in specs}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    start = time.perf_counter()
    while (time.perf_counter() - start < seconds or len(times) < 5) and len(times) < 2000:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    print(json.dumps({"p50_ms": times[len(times) // 2], "min_ms": times[0], "runs": len(times),
                      "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
