"""Who may use the server: a token gate and a per-client rate limit, as two plain ASGI middlewares.

`protect(app, token, rate_limit)` wraps the whole app, so every route is behind them, including routes
added after this module was written (`/predict?explain=1`, a corrections route): the gate
lets through only the paths in `OPEN_PATHS` (the page itself, which holds no data and
explains how to get in, and `/health`) and answers everything else 401 without the token.
A new route needs no change here; opening one on purpose means adding it to `OPEN_PATHS`.

The token is accepted from an `Authorization: Bearer` header or from the cookie that the
printed link (`/?token=...`) sets before redirecting to the clean address, so the token
does not stay in the browser's history. Comparison is constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, RedirectResponse, Response

from ..errors import UsageError
from .serve_config import check_token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths anyone may request without the token: exact matches only, so anything new is closed.
OPEN_PATHS = frozenset({"/", "/health"})
MAX_TRACKED_CLIENTS = 4096  # the limiter's memory: the least recently seen clients are forgotten first
COOKIE_DAYS = 30


def cookie_name(scope: Scope) -> str:
    """One cookie per port: browsers share cookies between the ports of a host."""
    server = scope.get("server")
    return f"flowerid-token-{server[1]}" if server and server[1] else "flowerid-token"


def _json(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


class TokenGate:
    """ASGI middleware: every path outside `OPEN_PATHS` needs the token, in a Bearer header or the cookie.

    The printed link `GET /?token=T` with the right token sets the cookie (HttpOnly, SameSite=Strict,
    Secure over HTTPS) and redirects to the page's clean address; a wrong one only redirects (the page
    then says how to get in). Only the page's own path takes a token in its address: a redirect built
    from any request path could be turned into an open redirect (`//elsewhere`).
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = check_token(token).encode("ascii")

    def _matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode("latin-1", "replace"), self._token)

    def authorised(self, scope: Scope) -> bool:
        """Whether the request carries the token in its Authorization header or its cookie."""
        name = cookie_name(scope)
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and self._matches(credentials.strip()):
                    return True
            elif key == b"cookie":
                presented = cookie_parser(value.decode("latin-1")).get(name)
                if presented is not None and self._matches(presented):
                    return True
        return False

    def _link(self, scope: Scope) -> Response | None:
        """The answer to a `?token=` link: the cookie (if the token is right) and a redirect to the clean address."""
        if scope["method"] not in ("GET", "HEAD") or scope["path"] != "/":
            return None
        query = urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        presented = [v for k, v in query if k == "token"]
        if not presented:
            return None
        rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "token"])
        response = RedirectResponse(scope.get("root_path", "") + "/" + (f"?{rest}" if rest else ""), 303)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        if self._matches(presented[-1]):
            response.set_cookie(
                cookie_name(scope),
                presented[-1],
                max_age=COOKIE_DAYS * 86400,
                path="/",
                httponly=True,
                samesite="strict",
                secure=scope.get("scheme") == "https",
            )
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            answer = self._link(scope)
            if answer is None and scope["path"] not in OPEN_PATHS and not self.authorised(scope):
                answer = _json(
                    401,
                    "unauthorized",
                    "this server needs its token: open the address `flowerid serve` printed (it ends in "
                    "?token=...), or send the header Authorization: Bearer TOKEN",
                    {"WWW-Authenticate": "Bearer"},
                )
            if answer is not None:
                await answer(scope, receive, send)
                return
        elif scope["type"] == "websocket" and not self.authorised(scope):
            await send({"type": "websocket.close", "code": 1008})  # before accepting: a 403 to the client
            return
        await self.app(scope, receive, send)


def client_key(scope: Scope) -> str:
    """Who a request counts against: its IPv4 address, or its IPv6 /64 (one device's usual share)."""
    client = scope.get("client")
    host = client[0] if client else ""
    if ":" not in host:
        return host  # IPv4 (or no address: every such request shares one bucket)
    try:
        addr = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.IPv6Network(f"{addr}/64", strict=False))


class RateLimiter:
    """A token bucket per client: `per_minute` requests a minute on average, a burst of as many.

    Memory is bounded: at most `max_clients` buckets, the least recently seen dropped first
    (a dropped client starts again with a full bucket, which is no more than a new client gets).
    """

    def __init__(
        self, per_minute: int, max_clients: int = MAX_TRACKED_CLIENTS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute < 1:
            raise UsageError("a rate limit is at least 1 request a minute (0 turns it off)", setting="rate_limit")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)

    def take(self, key: str) -> float:
        """0 if `key` may make a request now (and it is counted), else the seconds until it may."""
        now = self.clock()
        tokens, then = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimit:
    """ASGI middleware: a client over its limit is answered 429 with Retry-After, before anything is read."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (wait := self.limiter.take(client_key(scope))):
            seconds = max(1, math.ceil(wait))
            per_minute = int(self.limiter.capacity)
            answer = _json(
                429,
                "rate_limited",
                f"more than {per_minute} requests a minute from this address; try again in {seconds} s",
                {"Retry-After": str(seconds)},
            )
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)


def protect(app: Any, token: str | None, rate_limit: int) -> None:
    """Put the gate (when there is a token) and the rate limit (when > 0) around every route of `app`.

    The rate limit is outermost, so requests without the token count against their client too.
    """
    if token is not None:
        app.add_middleware(TokenGate, token=token)
    if rate_limit > 0:
        app.add_middleware(RateLimit, limiter=RateLimiter(rate_limit))


def hide_query_tokens(text: str) -> str:
    """`text` (a logged `path?query`) with the value of every parameter that decodes to `token` as ***.

    By the decoded name, as the gate reads it (`parse_qsl`): `?tok%65n=T` is the token link too, and
    a search for the literal `token=` left it in the log.
    """
    path, sep, query = text.partition("?")
    if not sep:
        return text
    pieces = []
    for piece in query.split("&"):
        key, eq, _ = piece.partition("=")
        if eq and urllib.parse.unquote(key.replace("+", " ")) == "token":
            piece = f"{key}=***"
        pieces.append(piece)
    return f"{path}?{'&'.join(pieces)}"


class _HideTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(hide_query_tokens(a) if isinstance(a, str) else a for a in record.args)
        return True


def hide_tokens_in_access_log() -> None:
    """uvicorn logs each request's address, query included: the token in the link is shown as ***."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _HideTokens) for f in logger.filters):
        logger.addFilter(_HideTokens())
