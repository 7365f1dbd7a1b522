"""optimum-intel as a peer: its INT8 of a CLIP checkpoint vs its FP32, torch FP32 and ovclip's INT8, in one run.

Runs inside the peers' virtual environment (optimum-intel pulls its own torch/transformers):

    python -m venv /opt/peers-venv
    /opt/peers-venv/bin/pip install optimum-intel==2.2.0 optimum nncf openvino pillow numpy click rich \\
        tokenizers ftfy matplotlib safetensors
    /opt/peers-venv/bin/pip install -e . --no-deps
    /opt/peers-venv/bin/python benchmarks/peer_optimum.py                  # builtin model, builtin eval (2,000)
    /opt/peers-venv/bin/python benchmarks/peer_optimum.py --model /tmp/ckpt_mid --data fashion-mnist:test
    # ViT-B/32 shape, seeded random weights (speed only; the folder is ovclip's random:vit-b-32 saved as HF):
    python -c "from pathlib import Path; from ovclip.checkpoint import load_checkpoint as L; \\
        c = L('random:vit-b-32'); c.model.save_pretrained('/tmp/vitb32-hf'); \\
        c.preprocess.save(Path('/tmp/vitb32-hf/preprocessor_config.json'))"
    /opt/peers-venv/bin/python benchmarks/peer_optimum.py --model /tmp/vitb32-hf --limit 64 \
        --ovclip /tmp/ovclip-vitb32-speed/int8-sq-off --label "random weights, speed only" --json ...

What it does, as a user of optimum-intel would:
1. `OVModelForZeroShotImageClassification.from_pretrained(SRC, export=True)` -> FP32 IR (one IR, both towers).
2. INT8 with `OVQuantizer(model).quantize(calibration_dataset=[...], ov_config=OVConfig(quantization_config=
   OVQuantizationConfig(...)))`. optimum's CLI (`--quant-mode int8`) and `from_pretrained(quantization_config=)`
   accept only a dataset *name* (conceptual_captions, streamed from the Hub with image URLs), which cannot be
   had offline; the Python OVQuantizer takes a local list of preprocessed samples, the route used here. The
   config is optimum's default CLIP INT8 entry (`_DEFAULT_INT8_FQ_CONFIGS['openai/clip-vit-base-patch32']`:
   300 samples, SmoothQuant alpha 0.6, model_type transformer) unless --smooth-quant-alpha/--num-samples.
   Calibration samples: the same 300 images of ovclip's built-in calibration set that `ovclip quantize` uses by
   default (seed 0), each with a caption (a 'train' template filled with its class name), tokenised with
   ovclip's CLIP tokenizer, pixels preprocessed by ovclip (so only the model differs).
   The CLI is also tried (offline) and its answer recorded.
3. Zero-shot top-1 on the eval images with ovclip's prompts (eval templates, ensembled), for torch FP32
   (transformers CLIPModel), optimum FP32, optimum INT8 (own text tower, and with the FP32 text embeddings),
   and ovclip INT8 (built here with `--no-exits --exits none`, or the folders given with --ovclip).
4. Image-tower throughput (batch 8, THROUGHPUT hint, optimal nireq, --seconds x --repeats interleaved
   rounds, medians): the image_embeds subgraph of optimum's IR (pixel_values -> image_embeds), reshaped to
   [?,3,S,S] like ovclip's IR, plus INT8 as exported (dynamic H, W); ovclip's Deployment; torch FP32.
Writes benchmarks/results/peer_optimum.json (or --json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import _common as C
import numpy as np

OPTIMUM_CLIP_DEFAULT_ID = "openai/clip-vit-base-patch32"


# --- optimum ------------------------------------------------------------------------------------------


def optimum_defaults(src: str) -> tuple[dict, dict | None]:
    """(the CLIP default INT8 config used, what optimum itself would pick for SRC)."""
    from optimum.intel.openvino.configuration import _DEFAULT_INT8_FQ_CONFIGS, get_default_quantization_config

    return dict(_DEFAULT_INT8_FQ_CONFIGS[OPTIMUM_CLIP_DEFAULT_ID]), get_default_quantization_config(
        src, quant_mode="int8"
    )


def calibration_samples(n: int, cfg, tokenizer, seed: int = 0) -> tuple[list[dict], dict]:
    """The images `ovclip quantize` calibrates on by default, each with a caption, as optimum-ready samples."""
    from ovclip.data.builtin import builtin_calibration
    from ovclip.data.prompts import builtin_templates

    data = builtin_calibration()
    order = np.random.default_rng(seed).permutation(len(data))  # ovclip.quantize.pipeline's selection
    idx = np.sort(order[: min(n, len(order))])
    px = data.pixels(idx, cfg)
    templates = builtin_templates("train")
    samples = []
    for k, (i, p) in enumerate(zip(idx, px, strict=False)):
        caption = templates[k % len(templates)].replace("{}", data.prompt_names[data.labels[i]])
        ids = tokenizer([caption])[0]
        end = int(np.argmax(ids == 49407)) + 1  # processor(padding=True) on one text pads nothing
        samples.append(
            {"input_ids": ids[:end].astype(np.int64), "attention_mask": np.ones(end, np.int64), "pixel_values": p}
        )
    return samples, {"source": data.source, "images": len(idx), "indices_seed": seed, "captions": "train templates"}


def export_optimum(src: str, work: Path, qcfg: dict, samples: list[dict], log=print) -> dict:
    from optimum.intel import OVConfig, OVModelForZeroShotImageClassification, OVQuantizationConfig, OVQuantizer

    t0 = time.time()
    fp32 = OVModelForZeroShotImageClassification.from_pretrained(src, export=True, compile=False)
    fp32.save_pretrained(work / "optimum-fp32")
    t_export = time.time() - t0
    log(f"optimum: FP32 export {t_export:.1f} s -> {work / 'optimum-fp32'}")
    model = OVModelForZeroShotImageClassification.from_pretrained(work / "optimum-fp32", compile=False)
    config = OVQuantizationConfig(
        num_samples=qcfg["num_samples"], smooth_quant_alpha=qcfg.get("smooth_quant_alpha"), processor=src
    )
    t0 = time.time()
    OVQuantizer(model).quantize(
        calibration_dataset=samples,
        ov_config=OVConfig(quantization_config=config),
        save_directory=work / "optimum-int8",
    )
    t_quant = time.time() - t0
    log(f"optimum: INT8 quantization {t_quant:.1f} s -> {work / 'optimum-int8'}")
    return {
        "export_seconds": round(t_export, 1),
        "quantize_seconds": round(t_quant, 1),
        "quantization_config": config.to_dict() if hasattr(config, "to_dict") else str(config),
    }


NOISE = ("OrderedVocab", "Warning", "warn(", "it/s]", "deprecated")


def error_text(lines: list[str], at: int) -> str:
    """The error line, and when its message continues on the next lines, up to two of them (noise skipped)."""
    if not lines:
        return ""
    msg = [lines[at].strip()]
    for ln in lines[at + 1 :]:
        if len(msg) == 3:
            break
        if not any(n in ln for n in NOISE):
            msg.append(ln.strip())
    return " ".join(msg)[:600]


def try_cli(src: str, work: Path, timeout: float) -> list[dict]:
    """optimum-cli's INT8 export offline, as a user would type it; returns what it said."""
    exe = Path(sys.executable).with_name("optimum-cli")
    base = [str(exe), "export", "openvino", "--model", src, "--task", "zero-shot-image-classification"]
    tries = [
        base + ["--quant-mode", "int8", str(work / "cli-int8")],
        base
        + ["--quant-mode", "int8", "--dataset", "conceptual_captions", "--num-samples", "300"]
        + ["--smooth-quant-alpha", "0.6", str(work / "cli-int8-cc")],
    ]
    out = []
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for cmd in tries:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            lines = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
            last = max((i for i, ln in enumerate(lines) if "Error:" in ln), default=max(0, len(lines) - 3))
            out.append(
                {
                    "command": " ".join(cmd),
                    "returncode": p.returncode,
                    "wrote_int8_ir": (Path(cmd[-1]) / "openvino_model.xml").is_file(),
                    "error": error_text(lines, last),
                }
            )
        except subprocess.TimeoutExpired:
            out.append({"command": " ".join(cmd), "returncode": None, "error": f"timed out after {timeout} s"})
    return out


def build_ovclip(python: str, src: str, out: Path) -> dict:
    """`ovclip quantize --no-exits --exits none` (default SmoothQuant 'auto') in ovclip's own environment:
    ovclip's text-tower export does not trace under the transformers that optimum-intel 2.2.0 pins."""
    exe = shutil.which(python) or python
    if Path(exe).resolve().is_relative_to(Path(sys.prefix).resolve()):
        sys.exit(f"--ovclip-python {exe} is this virtual environment; name ovclip's own interpreter")
    cmd = [
        exe,
        "-c",
        "from ovclip.cli import main; main()",
        "quantize",
        "--model",
        src,
        "--out",
        str(out),
        "--no-exits",
        "--exits",
        "none",
        "--overwrite",
    ]
    vers = subprocess.run(
        [
            exe,
            "-c",
            "import importlib.metadata as m; print(*[f'{p} {m.version(p)}' for p in "
            "('openvino','nncf','torch','transformers')], sep=', ')",
        ],
        capture_output=True,
        text=True,
    )
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"ovclip quantize failed ({' '.join(cmd)}):\n{p.stderr[-2000:]}")
    print(f"ovclip  : built {out} in {time.time() - t0:.1f} s with {exe} ({vers.stdout.strip()})")
    return {
        "folder": str(out),
        "command": " ".join(cmd),
        "seconds": round(time.time() - t0, 1),
        "environment": vers.stdout.strip(),
        "log": [ln.strip() for ln in (p.stdout + p.stderr).splitlines() if any(k in ln for k in ("alpha", "wrote"))],
    }


def read_ir(path: Path):
    import openvino as ov

    return ov.Core().read_model(str(path))


def subgraph(ir: Path, output: str, inputs: list[str], image_size: int | None = None):
    """The part of optimum's single IR that computes `output` from `inputs` (read fresh, so nothing is shared)."""
    import openvino as ov

    m = read_ir(ir)
    params = [p for p in m.get_parameters() if p.get_output_tensor(0).get_any_name() in inputs]
    sub = ov.Model([m.output(output)], params, f"{output}_subgraph")
    if image_size is not None:
        sub.reshape({"pixel_values": ov.PartialShape([-1, 3, image_size, image_size])})
    return sub


def count_fq(model) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")


# --- main ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin", help="HF CLIP folder (default: ovclip's built-in model folder)")
    ap.add_argument("--data", default="builtin", help="eval set (ovclip open_dataset spec); fashion-mnist:test = 10k")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (smoke tests)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ovclip-peer-optimum"), help="where the IRs are written")
    ap.add_argument("--num-samples", type=int, default=None, help="override optimum's default (300)")
    ap.add_argument("--smooth-quant-alpha", type=float, default=None, help="override optimum's default (0.6)")
    ap.add_argument(
        "--ovclip",
        action="append",
        default=None,
        type=Path,
        help="ovclip deployment folder(s) to measure beside (default: build INT8 --no-exits --exits none)",
    )
    ap.add_argument("--no-ovclip", action="store_true", help="measure no ovclip folder")
    ap.add_argument(
        "--ovclip-python",
        default="python3",
        help="interpreter of ovclip's own environment, used to build the default ovclip INT8 folder",
    )
    ap.add_argument("--no-cli", action="store_true", help="skip trying optimum-cli")
    ap.add_argument("--cli-timeout", type=float, default=600.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pool", type=int, default=256, help="real images cycled through in the timed runs")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--label", default=None, help="a note for the record, e.g. 'random weights, speed only' for a random folder"
    )
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run = C.Run("peer_optimum", extra_packages=("optimum-intel", "optimum", "tokenizers"), note=args.label)
    import torch
    from transformers import CLIPModel

    from ovclip.data.datasets import open_dataset
    from ovclip.data.prompts import builtin_templates
    from ovclip.preprocess import PreprocessConfig
    from ovclip.runtime import Deployment
    from ovclip.runtime.device import compile_config, compile_model
    from ovclip.tokenizer import ClipTokenizer

    src = str(Path(C.builtin_model_or_exit(args.model)).resolve())
    if not (Path(src) / "config.json").is_file():
        sys.exit(f"{src}: not a Hugging Face CLIP folder (no config.json)")
    torch.set_num_threads(C.cores())
    pcfg = PreprocessConfig.load(Path(src) / "preprocessor_config.json")
    tokenizer = ClipTokenizer.builtin()
    work = args.work
    for d in args.ovclip or []:
        if d.resolve().is_relative_to(work.resolve()):
            sys.exit(f"--ovclip {d} lies inside --work {work}, which is emptied first; give another --work")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    clip_default, picked = optimum_defaults(src)
    qcfg = dict(clip_default)
    if args.num_samples is not None:
        qcfg["num_samples"] = args.num_samples
    if args.smooth_quant_alpha is not None:
        qcfg["smooth_quant_alpha"] = args.smooth_quant_alpha
    print(
        f"optimum : default INT8 config optimum picks for {src}: {picked}; "
        f"using its CLIP entry ({OPTIMUM_CLIP_DEFAULT_ID}): {clip_default}"
        + (f" -> {qcfg}" if qcfg != clip_default else "")
    )
    run.data.update(
        model=src, optimum_picks_for_model=picked, optimum_clip_default=clip_default, optimum_config_used=qcfg
    )

    if not args.no_cli:
        cli = try_cli(src, work, args.cli_timeout)
        for c in cli:
            print(f"cli     : {c['command']}\n          -> rc {c['returncode']}: {c['error']}")
        run.data["optimum_cli"] = cli

    samples, calib_info = calibration_samples(qcfg["num_samples"], pcfg, tokenizer)
    run.data["calibration"] = calib_info
    run.data["optimum"] = export_optimum(src, work, qcfg, samples)
    fp32_ir, int8_ir = work / "optimum-fp32" / "openvino_model.xml", work / "optimum-int8" / "openvino_model.xml"
    run.data["optimum"]["int8_fake_quantize_nodes"] = count_fq(read_ir(int8_ir))

    ovclip_dirs = [] if args.no_ovclip else args.ovclip
    if ovclip_dirs is None:
        ovclip_dirs = [work / "ovclip-int8"]
        run.data["ovclip_build"] = build_ovclip(args.ovclip_python, src, ovclip_dirs[0])

    # ---------------- accuracy ----------------
    data = open_dataset(args.data)
    n_eval = min(len(data), args.limit or len(data))
    labels = data.labels[:n_eval]
    templates = builtin_templates("eval")
    image_size = pcfg.size
    print(f"eval    : {n_eval:,} images of {data.source}; {len(templates)} eval templates ensembled")

    clip = CLIPModel.from_pretrained(src).float().eval()

    def feats(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def torch_text(prompts):
        with torch.inference_mode():
            return feats(clip.get_text_features(input_ids=torch.from_numpy(tokenizer(prompts)))).numpy()

    def torch_image(px):
        with torch.inference_mode():
            return feats(clip.get_image_features(pixel_values=torch.from_numpy(np.ascontiguousarray(px)))).numpy()

    f32 = compile_config("CPU", "throughput", "f32")
    auto = compile_config("CPU", "throughput", None)

    def ov_text(ir: Path):
        c = compile_model(subgraph(ir, "text_embeds", ["input_ids", "attention_mask"]), "CPU", f32)
        req = c.create_infer_request()

        def enc(prompts):
            ids = tokenizer(prompts)
            eos = np.argmax(ids == 49407, axis=1)
            mask = (np.arange(ids.shape[1])[None] <= eos[:, None]).astype(np.int64)
            return np.array(req.infer({"input_ids": ids, "attention_mask": mask})["text_embeds"])

        return enc

    def ov_image(ir: Path, cfg: dict, reshape: bool = True):
        return compile_model(
            subgraph(ir, "image_embeds", ["pixel_values"], image_size if reshape else None), "CPU", cfg
        )

    variants: dict[str, dict] = {}
    cls_fp32 = C.class_embeddings(torch_text, data.prompt_names, templates)
    emb_ref = C.embed_all(torch_image, data, pcfg, n_eval)
    variants["torch-fp32"] = {"top1": C.top1(emb_ref, cls_fp32, labels), "what": "transformers CLIPModel, torch FP32"}

    compiled = {
        "optimum-fp32": ov_image(fp32_ir, f32),
        "optimum-int8": ov_image(int8_ir, auto),
        "optimum-int8-exported-shape": ov_image(int8_ir, auto, reshape=False),
    }
    for name, _ir, text_ir in (("optimum-fp32", fp32_ir, fp32_ir), ("optimum-int8", int8_ir, int8_ir)):
        req = compiled[name].create_infer_request()
        emb = C.embed_all(lambda px, req=req: np.array(req.infer({0: px})[0]), data, pcfg, n_eval)
        cls = C.class_embeddings(ov_text(text_ir), data.prompt_names, templates)
        v = {
            "top1": C.top1(emb, cls, labels),
            "top1_with_fp32_text": C.top1(emb, cls_fp32, labels),
            "image_cosine_to_torch_fp32": float(np.mean(np.sum(C.l2n(emb) * C.l2n(emb_ref), axis=1))),
            "text_cosine_to_torch_fp32": float(np.mean(np.sum(cls * cls_fp32, axis=1))),
            "executed_precision": C.executed_precision(compiled[name]),
            "matmuls": C.runtime_matmuls(compiled[name]),
        }
        if name == "optimum-fp32":
            v["image_max_abs_diff_to_torch_fp32"] = float(np.max(np.abs(C.l2n(emb) - C.l2n(emb_ref))))
        variants[name] = v
    # optimum's own forward (both towers in one call) on a few images: the subgraph must give the same embeddings
    from optimum.intel import OVModelForZeroShotImageClassification

    om = OVModelForZeroShotImageClassification.from_pretrained(
        work / "optimum-int8", ov_config={"PERFORMANCE_HINT": "LATENCY"}
    )
    px = data.pixels(np.arange(8), pcfg)
    ids = tokenizer(["a photo of a shirt."])
    full = om(input_ids=ids, pixel_values=px, attention_mask=(ids > 0).astype(np.int64) | (np.arange(77) == 0))
    sub = np.array(compiled["optimum-int8"].create_infer_request().infer({0: px})[0])
    variants["optimum-int8"]["subgraph_vs_optimum_forward_cosine"] = float(
        np.mean(np.sum(C.l2n(full.image_embeds) * C.l2n(sub), axis=1))
    )

    deps = {}
    for d in ovclip_dirs:
        from ovclip.folder import read_manifest

        man = read_manifest(d)
        prec = "f32" if man.variant in ("fp32", "fp16") else None
        dep = Deployment(d, "CPU", hint="throughput", inference_precision=prec)
        name = f"ovclip-{man.variant}" + (f"[{Path(d).name}]" if len(ovclip_dirs) > 1 else "")
        cls = dep.class_embeddings(data.prompt_names, templates)
        emb = C.embed_all(
            lambda px, dep=dep, cls=cls: dep.run_vision(px, cls, early_exit=False).embeddings, data, pcfg, n_eval
        )
        variants[name] = {
            "top1": C.top1(emb, cls, labels),
            "top1_with_fp32_text": C.top1(emb, cls_fp32, labels),
            "image_cosine_to_torch_fp32": float(np.mean(np.sum(C.l2n(emb) * C.l2n(emb_ref), axis=1))),
            "folder": str(d),
            "smooth_quant_alpha": (man.get("quantization") or {}).get("smooth_quant_alpha"),
            "executed_precision": dep.executed_precision(),
            "matmuls": C.runtime_matmuls(dep.full_depth_compiled()),
        }
        deps[name] = (dep, False, None)
        if man.get("exit_policy"):
            out = [
                dep.run_vision(data.pixels(np.arange(i, min(i + 64, n_eval)), pcfg), cls, early_exit=True)
                for i in range(0, n_eval, 64)
            ]
            s = np.concatenate([o.scores for o in out])
            variants[name + "-ee"] = {"top1": float(np.mean(s.argmax(1) == labels)), "folder": str(d)}
            deps[name + "-ee"] = (dep, True, cls)

    # ---------------- throughput ----------------
    pool = C.image_batches(data.pixels(np.arange(min(len(data), max(args.pool, args.batch))), pcfg), args.batch)
    runners = {}
    runners["torch-fp32"] = C.function_timer(torch_image, pool, args.seconds)
    for name, c in compiled.items():
        runners[name] = C.compiled_timer(c, pool, args.seconds)
    for name, (dep, ee, cls) in deps.items():
        runners[name] = C.deployment_timer(dep, pool, args.seconds, class_emb=cls, early_exit=ee)
    C.print_timing(
        f"batch {args.batch}, {args.seconds} s x {args.repeats} rounds, THROUGHPUT hint, optimal nireq; "
        f"torch: 1 stream x {C.cores()} threads"
    )
    speed = C.interleaved(runners, args.repeats)

    ref = variants["torch-fp32"]["top1"]
    base = speed["optimum-fp32"]["median"]
    rows = []
    for name in runners:
        v = variants.get(name, variants.get(name.replace("-exported-shape", ""), {}))
        rows.append(
            {
                "variant": name,
                "top1": 100 * v["top1"] if v else None,
                "drop": 100 * (v["top1"] - ref) if v else None,
                "top1_fp32text": 100 * v["top1_with_fp32_text"] if v.get("top1_with_fp32_text") is not None else None,
                "cos": v.get("image_cosine_to_torch_fp32"),
                "fps": speed[name]["median"],
                "x": speed[name]["median"] / base,
                "spread": 100 * speed[name]["spread"],
            }
        )
    run.data.update(
        eval_set=data.source,
        n_eval=n_eval,
        batch=args.batch,
        seconds=args.seconds,
        repeats=args.repeats,
        accuracy=variants,
        throughput=speed,
        rows=rows,
    )
    print()
    print(
        C.table(
            rows,
            [
                ("variant", "variant", ""),
                ("top1", "top-1 %", ".2f"),
                ("drop", "vs torch FP32", "+.2f"),
                ("top1_fp32text", "top-1, FP32 text", ".2f"),
                ("cos", "img cos to FP32", ".4f"),
                ("fps", "img/s (median)", ".1f"),
                ("x", "x optimum FP32", ".2f"),
                ("spread", "spread %", ".1f"),
            ],
            title=f"{src}: {n_eval:,} eval images; image tower batch {args.batch}",
        )
    )
    run.finish(args.json)


if __name__ == "__main__":
    main()
