"""Where an IR's time goes, per operation type, from OpenVINO's own per-layer counters (PERF_COUNT).

    python benchmarks/op_profile.py /tmp/ovclip-vitb32-speed/int8-sq-off/vision_stage0.xml --batch 8
    python benchmarks/op_profile.py IR.xml --matmul-limit benchmarks/results/vitb32_speed.json

One infer request of the compiled IR (THROUGHPUT hint, so the stream layout is the one benchmarked; the other
streams idle) runs `--iterations` batches after warm-up; the plugin's per-layer real times are summed per
(layer type, kernel). With `--matmul-limit`, the MatMul/FullyConnected/Convolution layers' share of the model's
FLOPs is timed separately: their attained rate (per stream, x streams) against the MatMul limit recorded by
vitb32_speed.py says whether the gap to the limit lies in the matrix kernels or in everything around them.
Writes benchmarks/results/op_profile.json (or --json).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import _common as C
import numpy as np

MATRIX_TYPES = ("FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul", "Convolution")
WEIGHT_PATH = {"Convert", "FakeQuantize", "Multiply", "Subtract", "Reshape", "Transpose"}


def _from_constant(out) -> bool:
    """Whether a value is a (possibly quantized/converted) constant: a weight, not an activation."""
    node = out.get_node()
    while node.get_type_name() in WEIGHT_PATH:
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def weight_layer_flops(model, batch: int, size: int) -> float:
    """FLOPs per image of the layers with constant weights (MatMul with a weight input, Convolution):
    what the plugin's FullyConnected/Convolution kernels execute. Attention's activation x activation MatMuls
    are left out (the CPU plugin runs them inside fused attention subgraphs)."""
    m = model.clone()
    m.reshape({m.inputs[0]: [batch, 3, size, size]})
    total = 0
    for op in m.get_ordered_ops():
        t = op.get_type_name()
        if t == "MatMul" and _from_constant(op.input_value(1)):
            a = list(op.get_input_shape(0))
            k = a[-2] if op.get_attributes().get("transpose_a") else a[-1]
            total += 2 * int(np.prod(list(op.get_output_shape(0)))) * k
        elif t == "Convolution":
            w = list(op.get_input_shape(1))
            total += 2 * int(np.prod(list(op.get_output_shape(0)))) * int(np.prod(w[1:]))
    return total / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ir", type=Path)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--matmul-limit", type=Path, default=None, help="a vitb32_speed.py JSON with the MatMul limit")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    run = C.Run("op_profile")
    import openvino as ov

    from ovclip.runtime.device import compile_config, compile_model, core

    model = core().read_model(str(args.ir))
    size = model.inputs[0].get_partial_shape()[2].get_length()
    cfg = compile_config("CPU", "throughput", None) | {"PERF_COUNT": True}
    compiled = compile_model(model, "CPU", cfg)
    streams = int(compiled.get_property("NUM_STREAMS"))
    req = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size), dtype=np.float32)
    for _ in range(3):
        req.infer({0: x}, share_inputs=True)
    per_type: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    walls = []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        req.infer({0: x}, share_inputs=True)
        walls.append(time.perf_counter() - t0)
        for p in req.profiling_info:
            if p.status != ov.ProfilingInfo.Status.EXECUTED:
                continue
            key = f"{p.node_type} [{p.exec_type}]"
            per_type[key] += p.real_time.total_seconds() * 1e3 / args.iterations
            count[key] += 1
    wall_ms = float(np.median(walls)) * 1e3
    total = sum(per_type.values())
    rows = [
        {"op": k, "ms": v, "share": v / total, "layers": count[k] // args.iterations}
        for k, v in per_type.most_common()
        if v >= 0.005
    ]
    matrix_ms = sum(r["ms"] for r in rows if r["op"].split(" ")[0] in MATRIX_TYPES)
    out = {
        "ir": str(args.ir),
        "batch": args.batch,
        "streams": streams,
        "iterations": args.iterations,
        "wall_ms_per_batch_median": wall_ms,
        "layers_ms_per_batch": total,
        "matrix_ms_per_batch": matrix_ms,
        "matrix_share_of_time": matrix_ms / total,
        "by_op": rows,
    }
    print(
        C.table(
            rows,
            [
                ("op", "layer type [kernel]", ""),
                ("ms", "ms/batch", ".2f"),
                ("share", "share", ".1%"),
                ("layers", "layers", "d"),
            ],
            title=f"{args.ir.name}: batch {args.batch}, one request",
        )
    )
    print(
        f"matrix layers (FC/MatMul/Conv): {matrix_ms:.1f} of {total:.1f} ms = {100 * matrix_ms / total:.1f} % of time"
    )
    flops = weight_layer_flops(model, args.batch, size)
    out["weight_layer_flops_per_image"] = flops
    if args.matmul_limit is not None:
        lim = json.loads(args.matmul_limit.read_text())
        prec = "int8" if any("i8" in r["op"].lower() for r in rows if r["op"].startswith("FullyConnected")) else "f32"
        lim_g = float(lim["matmul_limit"][prec])  # G(FL)OP/s, all streams busy
        matrix_rate = flops * args.batch / (matrix_ms / 1e3) * streams / 1e9
        whole_rate = flops * args.batch / (wall_ms / 1e3) * streams / 1e9
        out.update(
            matmul_limit=lim_g,
            matmul_limit_precision=prec,
            matmul_limit_from=str(args.matmul_limit),
            matrix_layers_gops_x_streams=matrix_rate,
            whole_model_gops_x_streams=whole_rate,
        )
        print(
            f"weight layers ({flops / 1e9:.2f} G(FL)OP/image): {matrix_rate:.0f} G(FL)OP/s over {streams} streams = "
            f"{100 * matrix_rate / lim_g:.1f} % of the {prec} MatMul limit {lim_g:.0f}; the whole request, same "
            f"FLOPs: {100 * whole_rate / lim_g:.1f} %"
        )
    run.data.update(out)
    run.finish(args.json or Path("benchmarks/results/op_profile.json"))


if __name__ == "__main__":
    main()
