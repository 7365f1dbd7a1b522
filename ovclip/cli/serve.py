"""`ovclip serve DIR` (Ray Serve: HTTP /v1 + KServe v2) and `ovclip export-ovms DIR --out REPO`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ovclip.cli.common import friendly, log, print_note


def _label_sets(specs: tuple[str, ...]):
    from ovclip.data.label_sets import resolve_label_set

    return [resolve_label_set(s) for s in specs]


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True, help="HTTP port.")
@click.option("--replicas", type=int, default=1, show_default=True, help="Server replicas, each with its own model.")
@click.option("--ray-address", default=None, help="Join this Ray cluster (e.g. ray://head:10001), not a local one.")
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device of every replica.")
@click.option(
    "--hint", type=click.Choice(["throughput", "latency"]), default="throughput", show_default=True, help="OV hint."
)
@click.option("--max-batch", "max_batch_images", type=int, default=32, show_default=True, help="Images per batch.")
@click.option(
    "--batch-wait-ms", type=float, default=5.0, show_default=True, help="Longest wait for a batch to fill (ms)."
)
@click.option("--cpus-per-replica", type=float, default=1.0, show_default=True, help="Ray CPUs each replica reserves.")
@click.option(
    "--label-set",
    "label_sets",
    multiple=True,
    help="A saved label set clients name in /v1/classify: NAME=FILE (JSON or one label per line); repeatable. "
    "'fashion-mnist' is always there.",
)
@click.option("--name", "model_name", default="ovclip", show_default=True, help="KServe v2 model name prefix.")
@click.option(
    "--ingress",
    type=click.Choice(["haproxy", "proxy"]),
    default="haproxy",
    show_default=True,
    help="Local Ray: Ray Serve's HAProxy ingress (requests go straight to a replica) or its Python proxy.",
)
@friendly
def serve(
    folder,
    host,
    port,
    replicas,
    ray_address,
    device,
    hint,
    max_batch_images,
    batch_wait_ms,
    cpus_per_replica,
    label_sets,
    model_name,
    ingress,
):
    """Serve a deployment folder over HTTP: /v1 embed and classify, KServe v2 /v2, /health and /metrics."""
    from ovclip.serve import ServeOptions, start_server

    options = ServeOptions(
        str(folder),
        device=device,
        hint=hint,
        replicas=replicas,
        cpus_per_replica=cpus_per_replica,
        max_batch_images=max_batch_images,
        batch_wait_s=batch_wait_ms / 1000.0,
        label_sets=tuple(_label_sets(label_sets)),
        model_name=model_name,
    )
    server = start_server(options, host=host, port=port, ray_address=ray_address, ingress=ingress, progress=print_note)
    log(f"serving {folder} at {server.url} ({replicas} replica(s)); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("stopping")
    finally:
        server.stop()


@click.command("export-ovms")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model repository folder to write.")
@click.option(
    "--labels",
    "label_sets",
    multiple=True,
    help="Label set(s) to save as safetensors: 'fashion-mnist' (default), NAME=FILE, FILE, or 'cat,dog,...'.",
)
@click.option("--name", "prefix", default="ovclip", show_default=True, help="Model name prefix.")
@click.option("--device", default=None, help="OVMS target_device (default CPU; NPU for static-shape folders).")
@click.option(
    "--hint", type=click.Choice(["throughput", "latency"]), default="throughput", show_default=True, help="OVMS hint."
)
@click.option("--overwrite", is_flag=True, help="Replace --out if it is an ovclip OVMS repository.")
@friendly
def export_ovms(folder, out, label_sets, prefix, device, hint, overwrite):
    """Write an OpenVINO Model Server repository: early-exit vision graph(s), text tower, label sets, config.json."""
    from ovclip.ovms import export_ovms as run

    sets = _label_sets(label_sets) if label_sets else None
    run(folder, out, label_sets=sets, prefix=prefix, device=device, hint=hint, overwrite=overwrite, progress=print_note)
    log(
        f"docker run --rm -p 9000:9000 -p 8001:8001 -v {out.absolute()}:/models openvino/model_server:latest "
        "--config_path /models/config.json --port 9000 --rest_port 8001"
    )
