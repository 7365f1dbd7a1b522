"""ASGI middleware that counts every HTTP request of a replica: requests by endpoint and status, latency,
errors by kind; then it tells the replica its counts changed (so they reach the metrics store). The endpoint is
the matched route's template (`/v2/models/{name}/infer`), so the label set stays small; a request that matches
no route is counted under `unmatched`."""

from __future__ import annotations

import time


class Observe:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def capture(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            state = scope["app"].state if "app" in scope else None
            metrics = getattr(state, "metrics", None)
            if metrics is not None:
                route = scope.get("route")
                endpoint = getattr(route, "path", None) or "unmatched"
                code = status["code"]
                metrics.requests.labels(endpoint, str(code)).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
                if code >= 400:
                    kind = (scope.get("state") or {}).get("error_kind") or ("internal" if code >= 500 else "other")
                    metrics.errors.labels(endpoint, kind).inc()
                state.metrics_changed()
