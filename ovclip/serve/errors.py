"""`RequestError`: a bad request, with the HTTP status and the kind of fault the server counts it under."""

from __future__ import annotations

from ovclip.errors import OvclipError


class RequestError(OvclipError):
    """What is wrong with a request, in one line, and the 4xx status it is answered with.

    `kind` names the fault for the `ovclip_errors_total{kind=...}` metric: not_an_image, too_large, bad_json,
    bad_request, empty_labels, unknown_model, unknown_label_set, not_found.
    """

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def bad_request(message: str, kind: str = "bad_request") -> RequestError:
    return RequestError(400, kind, message)


def too_large(message: str) -> RequestError:
    return RequestError(413, "too_large", message)
