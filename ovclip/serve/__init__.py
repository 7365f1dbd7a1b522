"""`ovclip serve`: a deployment folder behind HTTP on Ray Serve (the `serve` extra).

    from ovclip.serve import ServeOptions, start_server
    server = start_server(ServeOptions("out/int8", replicas=2), host="127.0.0.1", port=8000)
    ...                                   # POST /v1/embed/image, /v1/classify, /v1/embed/text, KServe v2 /v2/...
    server.stop()

The request/response contract is in `ovclip.serve.protocol` (/v1) and `ovclip.serve.kserve` (/v2); the README
shows both. Importing this package needs no Ray; starting a server does.
"""

from ovclip.serve.decode import Limits
from ovclip.serve.options import ServeOptions
from ovclip.serve.runner import RunningServer, require_serve, start_server

__all__ = ["Limits", "RunningServer", "ServeOptions", "require_serve", "start_server"]
