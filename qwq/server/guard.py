"""What stands in front of every route, before any body is read or parsed: the API key check and
the body size limit. Plain ASGI middleware, so a refused request costs almost nothing."""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.exceptions import HTTPException

from qwq.server.errors import error_bytes

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

OPEN_PATHS = ("/health",)  # the only route without the key: load balancers probe it
PAGE_PATHS = ("/", "/static/")  # a browser asks for the key itself when these answer 401
TENANT_KEY = "qwq.tenant"  # scope entry: which key the request came with (its cache salt)


def tenant_of(key: str) -> str:
    """A stable, non-reversible name for an API key, used as its prefix-cache salt."""
    return hashlib.sha256(b"qwq-tenant\x00" + key.encode()).hexdigest()[:32]


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None


def _presented_key(scope: Scope) -> bytes | None:
    """The key from `Authorization: Bearer KEY`, Anthropic's `x-api-key: KEY` or, for
    browsers, `Basic base64(user:KEY)`."""
    auth = _header(scope, b"authorization")
    if not auth:
        return _header(scope, b"x-api-key")
    scheme, _, value = auth.strip().partition(b" ")
    if scheme.lower() == b"bearer":
        return value.strip()
    if scheme.lower() == b"basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(b":")[2]
    return None


def match_key(presented: bytes | None, keys: list[bytes]) -> int | None:
    """Index of the matching key; every key is compared, each in constant time."""
    found = None
    for i, key in enumerate(keys):
        if hmac.compare_digest(presented or b"", key) and presented is not None:
            found = i
    return found


async def _send_error(send: Callable, status: int, message: str, code: str,
                      headers: list[tuple[bytes, bytes]] = (), path: str = "") -> None:
    body = error_bytes(status, message, code, path)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class APIKeyGuard:
    """Every route but /health needs one of the keys (when any is set)."""

    def __init__(self, app: ASGIApp, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.tenants = [tenant_of(k) for k in keys]

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        index = match_key(_presented_key(scope), self.keys)
        if index is None:
            page = scope["path"] == "/" or scope["path"].startswith(PAGE_PATHS[1])
            challenge = b'Basic realm="qwq", charset="UTF-8"' if page else b"Bearer"
            return await _send_error(send, 401, "a valid API key is required (Authorization: "
                                     "Bearer KEY)", "invalid_api_key",
                                     [(b"www-authenticate", challenge)], scope["path"])
        scope[TENANT_KEY] = self.tenants[index]
        await self.app(scope, receive, send)


TRIM_AFTER_BYTES = 1 << 20  # bodies this big leave megabytes behind in malloc's free lists


def _malloc_trim() -> Callable[[], Any] | None:
    path = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(path), "malloc_trim", None) if path else None
    return (lambda: trim(0)) if trim is not None else None  # glibc only


_TRIM = _malloc_trim()


class BodyLimit:
    """Refuse bodies over max_bytes with 413: by Content-Length before reading anything, or,
    for chunked bodies, as soon as the bytes read pass the limit. A body that has not all
    arrived `timeout` seconds after its headers gets 408 and the connection closes (a client
    sending a byte every few seconds would otherwise hold it for ever). After a request with a
    body of a megabyte or more, malloc's free memory goes back to the system: otherwise the
    megabytes of its text (bytes, JSON string, tokenizer buffers) stay resident."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _send_error(send, 413, f"the request body is larger than "
                                     f"{self.max_bytes} bytes", "request_too_large",
                                     [(b"connection", b"close")], scope["path"])
        seen, done = 0, False
        deadline = anyio.current_time() + self.timeout

        async def limited() -> dict:
            nonlocal seen, done
            if done:  # the body is in: what is left to receive is the client hanging up
                return await receive()
            with anyio.move_on_after(deadline - anyio.current_time()) as wait:
                message = await receive()
            if wait.cancelled_caught:
                raise HTTPException(408, f"the request body did not arrive within "
                                         f"{self.timeout:g} s", headers={"Connection": "close"})
            done = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"the request body is larger than "
                                             f"{self.max_bytes} bytes")
            return message

        try:
            await self.app(scope, limited, send)
        finally:
            if _TRIM is not None and seen >= TRIM_AFTER_BYTES:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_TRIM)
