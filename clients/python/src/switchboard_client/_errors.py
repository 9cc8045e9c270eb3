"""Errors: one class per error code of the API, each carrying the HTTP status, the code and
the server's message. Program against the class (or ``code``); ``message`` is for humans."""

from __future__ import annotations

import json
from typing import Any

import httpx


class SwitchboardError(Exception):
    """Anything the client could not get done.

    ``status`` is the HTTP status (``None`` when no answer came, or for a command of a
    batch), ``code`` the API's error code (``"not_found"``, ``"conflict"``, ...; ``None``
    when no answer came), ``message`` the server's explanation.
    """

    code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        where = " ".join(str(part) for part in (self.status, self.code) if part is not None)
        return f"{where}: {self.message}" if where else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )


class BadRequestError(SwitchboardError):
    """The request was malformed: bad JSON, a bad channel name or ``message_id``, a missing
    or unknown field (400, 422), a wrong method (405, ``code`` ``"method_not_allowed"``), a
    body that stopped arriving (408, ``"request_timeout"``), a ``Content-Type`` that is not
    JSON (415, ``"unsupported_media_type"``). Fix the request; retrying it as is fails
    again."""

    code = "bad_request"


class UnauthorizedError(SwitchboardError):
    """The API key is missing or wrong (401)."""

    code = "unauthorized"


class ForbiddenError(SwitchboardError):
    """No API key is configured on the node and this caller is not on loopback (403)."""

    code = "forbidden"


class NotFoundError(SwitchboardError):
    """No such route, connection, or message id in the channel's history (404)."""

    code = "not_found"


class ConflictError(SwitchboardError):
    """The message is not in a state that allows the change (appending to or finishing a
    stream that is not open, updating a deleted message), or a streaming ingest named a
    ``message_id`` the channel already has (409). Do not retry as is."""

    code = "conflict"


class LimitExceededError(SwitchboardError):
    """A configured limit: payload or body size, a message's text past
    ``streams.max_text_bytes`` (413), too many open streams (422)."""

    code = "limit_exceeded"


class RateLimitedError(SwitchboardError):
    """A rate limit refused the request and nothing was done (429). ``retry_after`` is the
    server's ``Retry-After`` in seconds, when it gave one."""

    code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class UnavailableError(SwitchboardError):
    """The broker cannot take the request now (503); retry later. ``retry_after`` as for
    :class:`RateLimitedError`. A failed broadcast lists the channels it did reach in
    ``offsets``."""

    code = "unavailable"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        offsets: dict[str, str] | None = None,
    ):
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after
        self.offsets = offsets or {}


class InternalError(SwitchboardError):
    """A bug or an unexpected failure on the server."""

    code = "internal"


class TransportError(SwitchboardError):
    """No answer came: the node could not be reached, the connection broke, or it timed out
    (after the retries that were safe). The ``httpx`` error is the ``__cause__``."""


_BY_CODE: dict[str, type[SwitchboardError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        LimitExceededError,
        RateLimitedError,
        UnavailableError,
        InternalError,
    )
}
# Codes only HTTP has: the same mistakes as a bad request, told apart by ``code``.
_BY_CODE.update(
    method_not_allowed=BadRequestError,
    request_timeout=BadRequestError,
    unsupported_media_type=BadRequestError,
)

_BY_STATUS: dict[int, type[SwitchboardError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    405: BadRequestError,
    408: BadRequestError,
    409: ConflictError,
    413: LimitExceededError,
    415: BadRequestError,
    422: BadRequestError,
    429: RateLimitedError,
    503: UnavailableError,
}


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (the API sends whole seconds)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_reply(
    code: str | None,
    message: str,
    *,
    status: int | None = None,
    extra: dict[str, Any] | None = None,
    retry_after_seconds: float | None = None,
) -> SwitchboardError:
    """The exception for an error the API answered: by its code, else by its status."""
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status or 0) or SwitchboardError
    if cls is RateLimitedError:
        return RateLimitedError(message, status=status, code=code, retry_after=retry_after_seconds)
    if cls is UnavailableError:
        offsets = (extra or {}).get("offsets")
        return UnavailableError(
            message,
            status=status,
            code=code,
            retry_after=retry_after_seconds,
            offsets=offsets if isinstance(offsets, dict) else None,
        )
    return cls(message, status=status, code=code)


def error_from_response(response: httpx.Response) -> SwitchboardError:
    """The exception for an answer that is not a success."""
    code: str | None = None
    message = response.reason_phrase or f"HTTP {response.status_code}"
    extra: dict[str, Any] = {}
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        extra = body
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code") if isinstance(error.get("code"), str) else None
            if isinstance(error.get("message"), str):
                message = error["message"]
    return error_from_reply(
        code,
        message,
        status=response.status_code,
        extra=extra,
        retry_after_seconds=retry_after(response),
    )
