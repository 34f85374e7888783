"""What `serve` prints at start: the address to open (with its token), a QR code of it, the certificate.

Bound to every network (0.0.0.0), the server's own address says nothing a phone can use,
so the address printed is this computer's address on its network, found from the route
the system would take (a UDP "connect" sends nothing).
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from .serve_config import is_loopback

if TYPE_CHECKING:  # tls asks this module which hosts to certify; the type alone comes back
    from .tls import TLSFiles

_WILDCARDS = {"0.0.0.0", "::", ""}


def network_address(family: int = socket.AF_INET) -> str | None:
    """This computer's address on its network, or None without one (offline, no route)."""
    probe = "192.0.2.1" if family == socket.AF_INET else "2001:db8::1"  # documentation ranges, never reached
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((probe, 9))
        address = s.getsockname()[0]
        return None if is_loopback(address) else address
    return None


def reachable_hosts(bound: str) -> list[str]:
    """The host names to print and to put in a certificate for a server bound to `bound`."""
    if bound not in _WILDCARDS:
        return [bound]
    found = [a for a in (network_address(), network_address(socket.AF_INET6)) if a]
    return found or ["127.0.0.1"]


def page_url(scheme: str, host: str, port: int, token: str | None = None) -> str:
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{scheme}://{netloc}/" + (f"?token={token}" if token else "")


def print_qr(url: str, out: TextIO) -> None:
    """A QR code of `url` in the terminal, two rows of modules a line; a plain note if segno is missing."""
    try:
        import segno
    except ImportError:
        print("flowerid: (pip install segno to get a QR code of the address here)", file=out)
        return
    qr = segno.make(url, error="l")
    try:
        qr.terminal(out=out, compact=True)
    except UnicodeEncodeError:  # a terminal without block characters: coloured spaces instead
        qr.terminal(out=out)


def announce(
    *,
    backbone: str,
    bound: str,
    port: int,
    token: str | None,
    tls: TLSFiles | None,
    warnings: Sequence[str] = (),
    out: TextIO | None = None,
) -> list[str]:
    """Print where the server is and how to open it; returns the page addresses printed (tests read them)."""
    out = out or sys.stdout
    scheme = "https" if tls else "http"
    loopback = is_loopback(bound)
    hosts = reachable_hosts(bound)
    urls = [page_url(scheme, h, port, token) for h in hosts]
    say = lambda text: print(f"flowerid: {text}", file=out, flush=True)  # noqa: E731
    say(f"serving {backbone} on {page_url(scheme, hosts[0], port)} (bound to {bound or '*'}:{port})")
    for url in urls:
        say(f"open {url}")
    if loopback:
        say("only this computer can reach it; --host 0.0.0.0 opens it to your network")
    else:
        say("on a phone on the same network, scan this:")
        print_qr(urls[0], out)
    if token is not None:
        say("the token in that address is needed for every request; keep it to the people you share it with")
    if tls is not None:
        made = "made now" if tls.made else "kept"
        kind = f"self-signed, {made} in {tls.cert.parent}" if tls.self_signed else str(tls.cert)
        say(f"certificate SHA-256 {tls.fingerprint} ({kind})")
        if tls.self_signed:
            say("the phone will warn about it once: check that the fingerprint it shows is this one, then accept it")
    elif not loopback:
        say("plain HTTP: photos and the token cross the network unencrypted; --https encrypts them")
    for warning in warnings:
        print(f"flowerid: warning: {warning}", file=out, flush=True)
    return urls
