"""Times one ONNX model on an NVIDIA GPU with ONNX Runtime (CUDA provider) and PyTorch eager,
FP32 and FP16, batch 1 and 64, with GPU power sampled, and writes Hone's GPU measurement file
(`coordinator results import`). Called by scripts/gpu-baseline.sh."""

import datetime
import hashlib
import json
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx2torch import convert
from onnxconverter_common import float16

BATCHES = (1, 64)
WARMUP = 20
SECONDS = 10.0


def power_sampler(stop, samples):
    while not stop.is_set():
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True)
        try:
            samples.append(float(out.stdout.strip().splitlines()[0]))
        except (ValueError, IndexError):
            pass
        time.sleep(0.2)


def inputs_for(model, batch, dtype):
    feeds = {}
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = []
        for i, d in enumerate(t.shape.dim):
            dims.append(batch if i == 0 else (d.dim_value if d.dim_value > 0 else 128))
        elem = t.elem_type
        if elem == onnx.TensorProto.INT64:
            feeds[inp.name] = np.ones(dims, dtype=np.int64)
        else:
            x = (np.arange(np.prod(dims)) % 1000 / 1000.0).reshape(dims)
            feeds[inp.name] = x.astype(np.float16 if dtype == "fp16" else np.float32)
    return feeds


def timed(run):
    for _ in range(WARMUP):
        run()
    stop, samples = threading.Event(), []
    sampler = threading.Thread(target=power_sampler, args=(stop, samples))
    sampler.start()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < SECONDS or len(times) < 20:
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    stop.set()
    sampler.join()
    times.sort()
    return times, (sum(samples) / len(samples) if samples else None)


def row(runtime, dtype, batch, times, watts):
    p50 = times[len(times) // 2]
    per_s = batch * 1000.0 / p50
    return {
        "batch": batch, "dtype": dtype, "runtime": runtime,
        "p50_ms": p50, "p90_ms": times[int(len(times) * 0.9)], "min_ms": times[0],
        "iters": len(times), "throughput_per_s": per_s,
        "avg_power_w": watts, "joules_per_inference": (watts / per_s) if watts else None,
    }


def main(path, out):
    model = onnx.load(path)
    rows = []
    for dtype in ("fp32", "fp16"):
        m = float16.convert_float_to_float16(model, keep_io_types=False) if dtype == "fp16" else model
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CUDAExecutionProvider"])
        if "CUDAExecutionProvider" not in sess.get_providers():
            sys.exit("ONNX Runtime has no CUDA provider here (onnxruntime-gpu, CUDA and cuDNN)")
        for batch in BATCHES:
            feeds = inputs_for(model, batch, dtype)
            times, watts = timed(lambda: sess.run(None, feeds))
            rows.append(row("onnxruntime-cuda", dtype, batch, times, watts))
        net = convert(model).cuda().eval()
        if dtype == "fp16":
            net = net.half()
        for batch in BATCHES:
            feeds = inputs_for(model, batch, dtype)
            args = [torch.from_numpy(v).cuda() for v in feeds.values()]

            def run():
                with torch.inference_mode():
                    net(*args)
                torch.cuda.synchronize()
            times, watts = timed(run)
            rows.append(row("pytorch-eager", dtype, batch, times, watts))
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                         capture_output=True, text=True).stdout.strip()
    doc = {
        "model": f"{path} (sha256 {digest})",
        "device": gpu,
        "framework": f"onnxruntime-gpu {ort.__version__} (CUDA provider) and PyTorch {torch.__version__} eager via onnx2torch",
        "measured": datetime.date.today().isoformat(),
        "power": "nvidia-smi power.draw sampled every 0.2 s during each timed loop",
        "rows": rows,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
