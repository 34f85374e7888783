"""Serving on a network: the token, the rate limit and HTTPS, over real HTTP (uvicorn on a loopback socket)."""

from __future__ import annotations

import io
import json
import re
import ssl
import threading
import time

import httpx
import pytest
from fastapi import WebSocket  # at module level: the route's annotation is resolved from here

import flowerid
from flowerid.apps import access
from flowerid.apps.access import RateLimiter, client_key
from flowerid.apps.cli import main
from flowerid.apps.listen import background_server
from flowerid.apps.server import ServeConfig, create_app

from ..conftest import CLASS_COLOURS, make_photo

TOKEN = "s3cret-token_0123456789abcdef"


def _jpeg(colour=CLASS_COLOURS["10"]) -> bytes:
    buf = io.BytesIO()
    make_photo(colour, 7).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def clf(trained):
    return flowerid.load(trained[1].checkpoint_path)


@pytest.fixture
def guarded(clf):
    """A server that needs TOKEN, on a real loopback socket."""
    with background_server(create_app(clf, ServeConfig(token=TOKEN))) as url:
        yield url


def _refused(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "unauthorized" and "?token=" in resp.json()["detail"]
    assert resp.headers["www-authenticate"] == "Bearer"


def test_every_route_but_the_open_ones_needs_the_token(guarded):
    predict = lambda **kw: httpx.post(guarded + "predict", content=_jpeg(), **kw)  # noqa: E731
    _refused(predict())
    _refused(predict(headers={"Authorization": "Bearer wrong-token-0123456789"}))
    _refused(predict(headers={"Authorization": f"Bearer {TOKEN[:-1]}"}))  # one character short
    _refused(predict(headers={"Authorization": f"Basic {TOKEN}"}))  # the right value, not as a bearer token
    _refused(predict(cookies={"flowerid-token-" + guarded.rsplit(":", 1)[1].strip("/"): TOKEN + "x"}))
    closed = ("labels", "docs", "openapi.json", "docs-assets/swagger-ui.css", "no-such-route", "health/", "//health")
    for path in closed:
        _refused(httpx.get(guarded + path))
    # Open on purpose: liveness and the page itself (it holds no data and says how to get in).
    assert httpx.get(guarded + "health").json()["token_required"] is True
    assert "Which flower is this?" in httpx.get(guarded).text


def test_the_token_in_a_bearer_header_is_accepted(guarded):
    for scheme in ("Bearer", "bearer"):
        resp = httpx.post(guarded + "predict", content=_jpeg(), headers={"Authorization": f"{scheme} {TOKEN}"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"][0]["name"] == "globe thistle"
    assert httpx.get(guarded + "labels", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_page_link_sets_a_strict_cookie_and_drops_the_token_from_the_address(guarded):
    with httpx.Client(base_url=guarded) as c:
        link = c.get(f"/?token={TOKEN}")
        assert link.status_code == 303 and link.headers["location"] == "/"
        assert link.headers["cache-control"] == "no-store"
        cookie = link.headers["set-cookie"]
        assert re.search(r"HttpOnly", cookie, re.I) and re.search(r"SameSite=strict", cookie, re.I)
        assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never be sent back
        assert cookie.startswith("flowerid-token-" + guarded.rsplit(":", 1)[1].strip("/") + "=")
        page = c.get("/", follow_redirects=True)
        assert page.status_code == 200 and "token" not in str(page.url)
        resp = c.post("/predict", content=_jpeg())  # the cookie alone
        assert resp.status_code == 200, resp.text
    with httpx.Client(base_url=guarded) as c:
        wrong = c.get("/?token=not-the-token-at-all&x=1")
        assert wrong.status_code == 303 and wrong.headers["location"] == "/?x=1" and "set-cookie" not in wrong.headers
        _refused(c.post("/predict", content=_jpeg()))


def test_the_token_is_compared_in_constant_time(guarded, monkeypatch):
    seen: list[tuple[bytes, bytes]] = []
    real = access.hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    assert httpx.get(guarded + "labels", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    _refused(httpx.get(guarded + "labels", headers={"Authorization": "Bearer guess-guess-guess-guess"}))
    assert seen == [(TOKEN.encode(), TOKEN.encode()), (b"guess-guess-guess-guess", TOKEN.encode())]


def test_loopback_without_a_token_is_open(clf):
    with background_server(create_app(clf)) as url:
        assert httpx.post(url + "predict", content=_jpeg()).status_code == 200
        assert httpx.get(url + "labels").status_code == 200
        assert httpx.get(url + "health").json()["token_required"] is False


def test_past_the_rate_limit_is_429_with_retry_after(clf):
    with background_server(create_app(clf, ServeConfig(token=TOKEN, rate_limit=4))) as url:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        _refused(httpx.get(url + "labels"))  # refused requests count too
        codes = [httpx.post(url + "predict", content=_jpeg(), headers=auth).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        over = httpx.post(url + "predict", content=_jpeg(), headers=auth)
        assert over.status_code == 429 and over.json()["error"] == "rate_limited"
        assert 1 <= int(over.headers["retry-after"]) <= 15  # one request's worth of a 4-a-minute bucket
        assert httpx.get(url + "health").status_code == 429  # every route counts, open ones included


def test_the_rate_limiter_refills_and_forgets_old_clients():
    now = [0.0]
    limiter = RateLimiter(6, max_clients=3, clock=lambda: now[0])  # one request every 10 s, a burst of 6
    assert [limiter.take("a") for _ in range(6)] == [0.0] * 6
    assert limiter.take("a") == pytest.approx(10.0)
    now[0] = 5.0
    assert limiter.take("a") == pytest.approx(5.0)  # half a request refilled; refused ones cost nothing
    now[0] = 10.0
    assert limiter.take("a") == 0.0
    for key in "bcdefg":
        assert limiter.take(key) == 0.0
    assert len(limiter) == 3  # bounded memory: a flood of addresses keeps only the latest
    now[0] = 1e6
    assert [limiter.take("a") for _ in range(7)][-1] > 0  # a long rest refills no more than one burst
    with pytest.raises(flowerid.UsageError):
        RateLimiter(0)


def test_clients_are_counted_by_address_and_ipv6_by_their_64():
    key = lambda host: client_key({"client": (host, 1)})  # noqa: E731
    assert key("192.168.1.20") == "192.168.1.20"
    assert key("::ffff:192.168.1.20") == "192.168.1.20"
    assert key("2001:db8:1:2:aaaa::1") == key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")


def test_https_with_the_generated_certificate(clf, tmp_path):
    from flowerid.apps.tls import self_signed_files

    tls = self_signed_files(["192.0.2.7"], tmp_path / "tls")
    assert tls.made and re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", tls.fingerprint)
    assert (tls.key.stat().st_mode & 0o077) == 0, "the private key must be readable by its owner alone"
    again = self_signed_files(["192.0.2.7"], tmp_path / "tls")
    assert not again.made and again.fingerprint == tls.fingerprint  # kept: the phone need not accept a new one
    with background_server(create_app(clf, ServeConfig(token=TOKEN)), tls=tls) as url:
        assert url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=tls.cert)) as c:
            link = c.get(f"/?token={TOKEN}")
            assert re.search(r"; Secure", link.headers["set-cookie"], re.I)
            assert c.post("/predict", content=_jpeg()).status_code == 200
        with pytest.raises(httpx.ConnectError):  # not trusted without the certificate
            httpx.get(url + "health")
        with pytest.raises(httpx.HTTPError):  # and no plain HTTP on the same port
            httpx.get(url.replace("https:", "http:") + "health")
    moved = self_signed_files(["192.0.2.8"], tmp_path / "tls")  # the computer's address changed
    assert moved.made and moved.fingerprint != tls.fingerprint


def test_given_certificate_files_are_checked_up_front(tmp_path):
    from flowerid.apps.tls import given_files, self_signed_files

    one = self_signed_files([], tmp_path / "one")
    two = self_signed_files([], tmp_path / "two")
    assert given_files(one.cert, one.key).fingerprint == one.fingerprint
    cases = {
        "does not exist": (tmp_path / "missing.pem", one.key),
        "holds no PEM certificate": (one.key, one.key),
        "does not belong to the certificate": (one.cert, two.key),
    }
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
    cases["passphrase"] = (one.cert, encrypted)
    for words, (cert, key) in cases.items():
        with pytest.raises(flowerid.UsageError, match=words):
            given_files(cert, key)


def test_choosing_the_token():
    from flowerid.apps.serve_config import choose_token

    assert choose_token("127.0.0.1", env={}) == (None, [])
    assert choose_token("localhost", TOKEN, env={}) == (TOKEN, [])
    assert choose_token("::1", env={"FLOWERID_TOKEN": TOKEN}) == (TOKEN, [])
    made, warnings = choose_token("0.0.0.0", env={})
    assert len(made) >= 22 and re.fullmatch(r"[A-Za-z0-9_-]+", made) and not warnings  # >= 128 bits, URL-safe
    assert choose_token("0.0.0.0", env={})[0] != made
    assert choose_token("192.168.1.5", "given-token-0123456789", env={"FLOWERID_TOKEN": TOKEN})[0].startswith("given")
    token, warnings = choose_token("0.0.0.0", no_token=True, env={"FLOWERID_TOKEN": TOKEN})
    assert token is None and "anyone who can reach" in warnings[0]
    for bad in ("short", "has spaces in it, too many", "ünïcode-token-0123456789"):
        with pytest.raises(flowerid.UsageError, match="at least 16 characters"):
            choose_token("0.0.0.0", bad, env={})
    with pytest.raises(flowerid.UsageError, match="contradict"):
        choose_token("0.0.0.0", TOKEN, no_token=True, env={})


def _serve_cli(monkeypatch, argv: list[str], check) -> dict:
    """Run `flowerid serve ARGV` for real but stop it once `check(port)` has run in place of waiting for Ctrl-C."""
    from flowerid.apps import listen as server_module

    out: dict = {}

    def serve_briefly(server, sock) -> None:
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.02)
        try:
            out.update(check(sock.getsockname()[1]))
        except Exception as exc:  # main() would turn it into an exit code; the test wants to see it
            out["failed"] = exc
        finally:
            server.should_exit = True
            thread.join(10)

    monkeypatch.setattr(server_module, "_serve", serve_briefly)
    out["code"] = main(["serve", *argv, "--port", "0"])
    if "failed" in out:
        raise out["failed"]
    return out


def test_serve_beyond_loopback_prints_a_token_link_and_a_qr_code(trained, monkeypatch, capsys):
    monkeypatch.delenv("FLOWERID_TOKEN", raising=False)

    def check(port: int) -> dict:
        printed = capsys.readouterr().out
        token = re.search(r"\?token=([A-Za-z0-9_-]+)", printed).group(1)
        base = f"http://127.0.0.1:{port}/"
        return {
            "printed": printed,
            "token": token,
            "without": httpx.post(base + "predict", content=_jpeg()).status_code,
            "with": httpx.post(base + "predict", content=_jpeg(), headers={"Authorization": f"Bearer {token}"}),
        }

    out = _serve_cli(monkeypatch, ["--checkpoint", str(trained[1].checkpoint_path), "--host", "0.0.0.0"], check)
    assert out["code"] == 0 and out["without"] == 401 and out["with"].status_code == 200
    assert len(out["token"]) >= 22
    assert "▀" in out["printed"] or "▄" in out["printed"], "no QR code in the terminal"
    assert "plain HTTP" in out["printed"] and "warning" not in out["printed"]


def test_serve_no_token_warns_and_opens_it(trained, monkeypatch, capsys):
    def check(port: int) -> dict:
        return {"status": httpx.post(f"http://127.0.0.1:{port}/predict", content=_jpeg()).status_code}

    ckpt = str(trained[1].checkpoint_path)
    out = _serve_cli(monkeypatch, ["--checkpoint", ckpt, "--host", "0.0.0.0", "--no-token"], check)
    printed = capsys.readouterr().out
    assert out["status"] == 200 and "?token=" not in printed
    assert "warning: --no-token: anyone who can reach this address can use it" in printed


def test_serve_on_loopback_is_open_unless_given_a_token(trained, monkeypatch, capsys):
    monkeypatch.delenv("FLOWERID_TOKEN", raising=False)

    def check(port: int) -> dict:
        return {"status": httpx.post(f"http://127.0.0.1:{port}/predict", content=_jpeg()).status_code}

    ckpt = str(trained[1].checkpoint_path)
    out = _serve_cli(monkeypatch, ["--checkpoint", ckpt], check)
    printed = capsys.readouterr().out
    assert out["status"] == 200 and "?token=" not in printed and "only this computer" in printed
    monkeypatch.setenv("FLOWERID_TOKEN", TOKEN)
    out = _serve_cli(monkeypatch, ["--checkpoint", ckpt], check)
    assert out["status"] == 401 and f"?token={TOKEN}" in capsys.readouterr().out


def test_serve_https_prints_the_fingerprint_of_the_certificate_it_serves(trained, monkeypatch, capsys, isolated_cache):
    from flowerid.apps.tls import fingerprint_of

    cert = isolated_cache / "tls" / "cert.pem"

    def check(port: int) -> dict:
        trust = ssl.create_default_context(cafile=cert)
        return {"health": httpx.get(f"https://127.0.0.1:{port}/health", verify=trust).status_code}

    out = _serve_cli(monkeypatch, ["--checkpoint", str(trained[1].checkpoint_path), "--https"], check)
    printed = capsys.readouterr().out
    assert out["health"] == 200 and "https://127.0.0.1:" in printed
    assert f"certificate SHA-256 {fingerprint_of(cert.read_bytes())} (self-signed, made now" in printed


def test_serve_certificate_errors_are_messages(trained, tmp_path, capsys):
    ckpt = str(trained[1].checkpoint_path)
    assert main(["serve", "--checkpoint", ckpt, "--cert", str(tmp_path / "c.pem")]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", ckpt, "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert "c.pem does not exist" in err and "Traceback" not in err
    assert main(["serve", "--checkpoint", ckpt, "--host", "0.0.0.0", "--token", "short"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_the_load_script_sends_the_token(clf, trained, tmp_path, capsys):
    from .test_server import _load_script

    load_serve = _load_script()
    args = ["--images", str(trained[0] / "valid"), "--clients", "2", "--requests", "6", "--warmup", "1"]
    with background_server(create_app(clf, ServeConfig(token=TOKEN))) as url:
        assert load_serve.main(["--url", url, f"--token={TOKEN}", "--json-out", str(tmp_path / "r.json"), *args]) == 0
        assert load_serve.main(["--url", url, *args]) == 1  # without it, every request is refused
    assert "HTTP 401" in capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["token"] is True and report["errors"] == 0 and report["requests"] == 6


def test_a_websocket_route_added_later_is_closed_too(clf):
    """The gate covers every kind of route: a websocket added after create_app is refused without the token."""
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    app = create_app(clf, ServeConfig(token=TOKEN))

    @app.websocket("/live")
    async def live(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("hello")
        await ws.close()

    with TestClient(app) as c:
        with pytest.raises(WebSocketDisconnect) as refused, c.websocket_connect("/live"):
            pass
        assert refused.value.code == 1008 and not refused.value.reason  # the gate's refusal, not a route's
        with c.websocket_connect("/live", headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            assert ws.receive_text() == "hello"
        assert c.get("/labels").status_code == 401 and c.get("/health").status_code == 200


def test_the_access_log_hides_the_token_of_the_link():
    import logging

    access.hide_tokens_in_access_log()
    access.hide_tokens_in_access_log()  # once is enough, twice adds nothing
    logger = logging.getLogger("uvicorn.access")
    assert sum(isinstance(f, access._HideTokens) for f in logger.filters) == 1
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("10.0.0.2:5555", "GET", f"/?token={TOKEN}&x=1", "1.1", 303), None,
    )  # fmt: skip
    assert next(f for f in logger.filters if isinstance(f, access._HideTokens)).filter(record)
    assert TOKEN not in record.getMessage() and "/?token=***&x=1" in record.getMessage()


def test_the_gate_s_answers_carry_the_security_headers_too(clf):
    with background_server(create_app(clf, ServeConfig(token=TOKEN, rate_limit=3))) as url:
        refused = httpx.get(url + "labels")
        link = httpx.get(url + f"?token={TOKEN}", follow_redirects=False)
        head = httpx.head(url + "health")
        limited = httpx.get(url + "labels")
    assert (refused.status_code, link.status_code, limited.status_code, head.status_code) == (401, 303, 429, 200)
    for resp in (refused, link, limited, head):
        assert resp.headers["x-content-type-options"] == "nosniff" and resp.headers["x-frame-options"] == "DENY"
        assert resp.headers["referrer-policy"] == "no-referrer" and resp.headers["cache-control"] == "no-store"
    assert head.content == b"" and int(head.headers["content-length"]) > 0  # uvicorn too sends no body to HEAD


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        (f"/?tok%65n={TOKEN}", "/?tok%65n=***"),
        (f"/?x=1&%74%6F%6B%65%6E={TOKEN}&y=2", "/?x=1&%74%6F%6B%65%6E=***&y=2"),
        (f"/?token={TOKEN.replace('-', '%2D')}", "/?token=***"),
        (f"/?token={TOKEN}&token={TOKEN}", "/?token=***&token=***"),
        ("/?tokens=kept&x=token", "/?tokens=kept&x=token"),
    ],
)
def test_the_access_log_hides_the_token_however_the_query_spells_it(path, shown):
    """The gate reads the decoded query (`tok%65n` is `token`), so the log must hide what the gate reads."""
    import logging

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("10.0.0.2:5555", "GET", path, "1.1", 303), None,
    )  # fmt: skip
    assert access._HideTokens().filter(record)
    assert TOKEN not in record.getMessage() and "0123456789abcdef" not in record.getMessage()
    assert f'"GET {shown} HTTP/1.1"' in record.getMessage()
