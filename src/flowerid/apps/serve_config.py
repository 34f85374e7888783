"""The server's limits and thresholds, apart from fastapi so the command line can show their defaults cheaply."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import UsageError

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Top probability under which the page and API call a prediction unsure. On the
#: flowers102 valid split (default model, label smoothing 0.1) 12.7% of photos fall
#: under 0.4; predictions at or above it are right 99.0% of the time.
DEFAULT_UNSURE_BELOW = 0.4
TOKEN_ENV = "FLOWERID_TOKEN"
TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 256 bits in 43 characters
MIN_TOKEN_CHARS = 16
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
#: Requests a minute per client when bound beyond loopback and --rate-limit is not given: two a
#: second on average, with a burst of as many, far above a person taking photos.
DEFAULT_RATE_LIMIT = 120


def default_threads() -> int:
    """Photos named at once: one per core, 1-4. On 2 shared cores, 2 threads served 36-42 photos/s
    against 22 for one (decoding one photo overlaps the model on another)."""
    from ..backbones.engines import default_threads as cores

    return min(4, cores())


@dataclass(frozen=True)
class ServeConfig:
    """Limits and thresholds of one server; the defaults suit a phone on a home network."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int | None = None  # None: FLOWERID_MAX_PIXELS or the library default
    inference_threads: int = field(default_factory=default_threads)
    unsure_below: float = DEFAULT_UNSURE_BELOW
    token: str | None = None  # None: no token asked for (see choose_token)
    rate_limit: int = 0  # requests a minute per client; 0: no limit
    corrections: str | None = None  # folder the page's "Not right?" photos go to (NEWDATA layout); None: off

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)
        if self.rate_limit < 0:
            raise UsageError("the rate limit is requests a minute per client, 0 for none", setting="rate_limit")
        if self.max_upload_bytes < 1:
            raise UsageError("the upload limit must be at least 1 byte")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError("the pixel limit must be at least 1")
        if self.inference_threads < 1:
            raise UsageError("inference threads must be at least 1")
        if not 0.0 <= self.unsure_below <= 1.0:
            raise UsageError("the unsure threshold is a probability between 0 and 1")


def check_token(token: str) -> str:
    """`token` if it can travel in an address and a cookie as it is and is long enough not to be guessed."""
    if len(token) < MIN_TOKEN_CHARS or not _TOKEN_CHARS.fullmatch(token):
        raise UsageError(
            f"a token must be at least {MIN_TOKEN_CHARS} characters of letters, digits, '-' and '_'; "
            "leave --token out to have one made, or make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            setting="token",
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this computer alone."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def choose_token(
    host: str, token: str | None = None, no_token: bool = False, env: Mapping[str, str] | None = None
) -> tuple[str | None, list[str]]:
    """The token a server on `host` needs (None: open) and the warnings to print.

    Beyond loopback a token is required: `token`, else FLOWERID_TOKEN, else a new random one.
    On loopback it is optional, on only when given. `no_token` opens it on purpose, with a
    warning beyond loopback.
    """
    env = os.environ if env is None else env
    given = token if token is not None else (env.get(TOKEN_ENV) or None)
    loopback = is_loopback(host)
    if no_token:
        if token is not None:
            raise UsageError("--token and --no-token contradict each other; give one of them")
        if loopback:
            return None, []
        return None, [
            "--no-token: anyone who can reach this address can use it, and fill its CPU; "
            "only do this on a network you trust, and stop it (Ctrl-C) when done"
        ]
    if given is not None:
        return check_token(given), []
    return (None if loopback else secrets.token_urlsafe(TOKEN_BYTES)), []


def default_rate_limit(host: str) -> int:
    """No limit on loopback (benchmarks, one user); DEFAULT_RATE_LIMIT beyond it."""
    return 0 if is_loopback(host) else DEFAULT_RATE_LIMIT
