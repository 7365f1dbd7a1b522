"""IR surgery: make every transformer block's output of a deployment folder's vision stages observable.

A deployment folder is split only at its exits, so a stage IR holds several blocks and exposes only the
last one's output. Each CLIP vision block is pre-LN:

    h = h + attn(ln1(h))        # residual Add 1
    h = h + mlp(ln2(h))         # residual Add 2  <- the block's output

so within a stage of k blocks, the residual stream is a chain of exactly 2k Add nodes whose output is
[?, T, D], each taking the stream (which also feeds a LayerNorm, i.e. an MVN node) plus a branch. Bias and
LayerNorm-affine Adds are told apart by their constant operand, the position-embedding Add by feeding no
LayerNorm beside its Add. The chain is checked link by link (each residual Add reads the previous one), so
a graph of another layout fails loudly instead of yielding the wrong tensor. The second Add of each pair
is added to the model's outputs (`ov.Model.add_outputs`); the stream entering the first block (the
pre-LayerNorm'd embeddings, "block 0") is added on the first stage as well.

This works the same on FP32 IR and on NNCF INT8 IR (FakeQuantize and Convert nodes in the way are looked
through), and on a stage stitched from per-block IRs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from ovclip.errors import OvclipError
from ovclip.folder import Manifest, read_manifest
from ovclip.runtime.device import compile_config, compile_model, core

TRANSPARENT = ("FakeQuantize", "Convert")


def _upstream(out: ov.Output) -> ov.Output:
    """The producer of `out`, looking through FakeQuantize/Convert nodes."""
    while out.get_node().get_type_name() in TRANSPARENT:
        out = out.get_node().input_value(0)
    return out


def _is_constant(out: ov.Output) -> bool:
    return _upstream(out).get_node().get_type_name() == "Constant"


def _feeds_layernorm(out: ov.Output) -> bool:
    """Does this tensor (directly, or through FakeQuantize/Convert) feed an MVN, i.e. a LayerNorm?"""
    for target in out.get_target_inputs():
        node = target.get_node()
        kind = node.get_type_name()
        if kind == "MVN":
            return True
        if kind in TRANSPARENT and _feeds_layernorm(node.output(0)):
            return True
    return False


def _key(out: ov.Output) -> tuple[str, int]:
    return out.get_node().get_name(), out.get_index()


def _shape_is(out: ov.Output, tokens: int, hidden: int) -> bool:
    ps = out.get_partial_shape()
    if ps.rank.is_dynamic or ps.rank.get_length() != 3:
        return False
    return all(ps[i].is_static and ps[i].get_length() == v for i, v in ((1, tokens), (2, hidden)))


@dataclass
class BlockOutputs:
    """Where a stage's block outputs live in its graph."""

    stream_in: ov.Output  # the residual stream entering the stage's first block
    block_out: list[ov.Output]  # one per block, in order


def find_block_outputs(model: ov.Model, blocks: int, tokens: int, hidden: int, where: str = "stage") -> BlockOutputs:
    """Locate the output of each of the `blocks` transformer blocks of a stage IR (see the module doc)."""
    adds: list[ov.Node] = []
    streams: list[ov.Output] = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Add" or not _shape_is(op.output(0), tokens, hidden):
            continue
        ins = [op.input_value(i) for i in range(op.get_input_size())]
        if len(ins) != 2 or any(_is_constant(i) for i in ins):
            continue
        stream = [i for i in ins if _feeds_layernorm(i)]
        if not stream:
            continue
        adds.append(op)
        streams.append(stream[0])
    if len(adds) != 2 * blocks:
        raise OvclipError(
            f"{where}: found {len(adds)} residual Add nodes for {blocks} transformer blocks (expected {2 * blocks}); "
            "this IR does not have the layout `ovclip export`/`quantize` writes (pre-LN CLIP blocks)"
        )
    for i in range(1, len(adds)):
        if _key(_upstream(streams[i])) != _key(adds[i - 1].output(0)):
            raise OvclipError(
                f"{where}: residual Add {i + 1} of {len(adds)} does not read the previous one's output; "
                "the residual stream could not be traced, so block outputs cannot be located"
            )
    return BlockOutputs(stream_in=_upstream(streams[0]), block_out=[adds[2 * b + 1].output(0) for b in range(blocks)])


class TappedStage:
    """A stage IR compiled (f32 on CPU by default) with each block's output as an extra output."""

    def __init__(self, xml: Path, blocks: int, tokens: int, hidden: int, first: bool, device: str, config: dict):
        model = core().read_model(str(xml))
        found = find_block_outputs(model, blocks, tokens, hidden, where=str(xml))
        taps = ([found.stream_in] if first else []) + found.block_out
        existing = {_key(r.input_value(0)): i for i, r in enumerate(model.get_results())}
        new = [t for t in taps if _key(t) not in existing]
        if new:
            model.add_outputs(new)
        index = {_key(r.input_value(0)): i for i, r in enumerate(model.get_results())}
        self.tap_index = [index[_key(t)] for t in taps]
        self.compiled = compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        self.outputs = list(self.compiled.outputs)
        batch = self.compiled.inputs[0].get_partial_shape()[0]
        self.static_batch = None if batch.is_dynamic else batch.get_length()

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        res = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return [np.array(res[self.outputs[i]]) for i in [0, *self.tap_index]]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(the stage's own output, [block outputs...]) on a batch; a static-batch IR runs in padded chunks."""
        s = self.static_batch
        if s is None or s == len(x):
            outs = self._run(x)
        else:
            parts = []
            for i in range(0, len(x), s):
                chunk, n = x[i : i + s], len(x[i : i + s])
                if n < s:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], s - n, axis=0)])
                parts.append([o[:n] for o in self._run(chunk)])
            outs = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        return outs[0], outs[1:]


class BlockTaps:
    """Run a deployment folder's vision stages in order and return the activations after every block.

    taps = BlockTaps("out/fp32")
    z = taps(pixels)        # [z_0 (embeddings), z_1, ..., z_L], each (N, T, D) float32
    """

    def __init__(self, folder: str | Path | Manifest, device: str = "CPU", precision: str | None = "f32"):
        self.manifest = folder if isinstance(folder, Manifest) else read_manifest(folder)
        vision = self.manifest.vision
        self.num_layers = int(vision["num_layers"])
        self.tokens, self.hidden = int(vision["tokens"]), int(vision["hidden_size"])
        config = compile_config(device, "latency", precision if device.upper().startswith("CPU") else None)
        self.stages = []
        for k, stage in enumerate(vision["stages"]):
            a, b = stage["blocks"]
            self.stages.append(
                TappedStage(
                    self.manifest.path(stage["file"]), b - a + 1, self.tokens, self.hidden, k == 0, device, config
                )
            )

    def __call__(self, pixels: np.ndarray) -> list[np.ndarray]:
        x, acts = pixels, []
        for stage in self.stages:
            x, taps = stage(x)
            acts.extend(taps)
        if len(acts) != self.num_layers + 1:  # pragma: no cover - guarded by find_block_outputs
            raise OvclipError(f"{self.manifest.folder}: got {len(acts) - 1} block outputs for {self.num_layers} blocks")
        return acts
