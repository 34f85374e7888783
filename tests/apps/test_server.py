"""The web service through FastAPI's test client: answers, limits and every bad request."""

from __future__ import annotations

import io
import json
import re
import struct
import threading
import zlib

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import flowerid
from flowerid.apps.cli import main
from flowerid.apps.server import ServeConfig, create_app

from ..conftest import CLASS_COLOURS, ROOT, make_photo


def _jpeg(colour=CLASS_COLOURS["10"], seed=7, size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    make_photo(colour, seed, size).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A real PNG whose header claims width x height: a decompression bomb's shape, a few bytes long."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


@pytest.fixture
def clf(trained):
    return flowerid.load(trained[1].checkpoint_path)


@pytest.fixture
def client(clf, trained):
    app = create_app(clf, ServeConfig(max_upload_bytes=64 * 1024), trained[1].checkpoint_path)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _error(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]
    return body["detail"]


def test_predict_matches_the_cli(client, trained, capsys):
    data, result = trained
    photo = next((data / "valid" / "10").iterdir())
    assert main(["predict", str(photo), "--checkpoint", str(result.checkpoint_path), "--json", "--top-k", "3"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]["predictions"]

    multipart = client.post("/predict?top_k=3", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
    raw = client.post("/predict?top_k=3", content=photo.read_bytes(), headers={"content-type": "image/jpeg"})
    for resp in (multipart, raw):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["predictions"] == expected
        assert body["predictions"][0]["name"] == "globe thistle"
        assert body["model"]["backbone"] == "tiny_test" and body["model"]["num_classes"] == 3
        assert body["model"]["checkpoint"] == "checkpoint.pth"
        assert body["unsure"] is (expected[0]["probability"] < body["model"]["unsure_below"])


def test_top_k_defaults_to_five_and_is_capped_at_the_classes(client):
    full = client.post("/predict", files={"file": ("a.jpg", _jpeg(), "image/jpeg")}).json()
    assert len(full["predictions"]) == 3  # the tiny model knows 3 categories
    assert sum(p["probability"] for p in full["predictions"]) == pytest.approx(1.0)
    one = client.post("/predict?top_k=1", files={"file": ("a.jpg", _jpeg(), "image/jpeg")}).json()
    assert one["predictions"] == full["predictions"][:1]


def test_unsure_follows_the_threshold(clf, trained):
    photo = _jpeg(CLASS_COLOURS["1"])
    for below, unsure in ((0.0, False), (1.0, True)):
        app = create_app(clf, ServeConfig(unsure_below=below))
        with TestClient(app) as c:
            body = c.post("/predict", content=photo).json()
        assert body["unsure"] is unsure and body["model"]["unsure_below"] == below


def test_health_labels_and_docs(client):
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["max_upload_bytes"] == 64 * 1024 and health["model"]["num_classes"] == 3
    assert health["model"]["subject"] == "flower"  # named as the built-in model's flowers: the page talks of flowers
    labels = client.get("/labels").json()["labels"]
    assert labels == [
        {"category": "1", "name": "pink primrose"},
        {"category": "10", "name": "globe thistle"},
        {"category": "2", "name": "hard-leaved pocket orchid"},
    ]
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/labels"} <= set(spec["paths"])
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "file" in body["multipart/form-data"]["schema"]["properties"] and "image/jpeg" in body
    docs = client.get("/docs")
    assert docs.status_code == 200
    for asset in re.findall(r'(?:src|href)="([^"]+)"', docs.text):
        assert not asset.startswith(("http:", "https:", "//")), f"/docs needs the network for {asset}"
        assert client.get("/" + asset).status_code == 200


def test_page_works_offline_and_opens_the_camera(client):
    resp = client.get("/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert re.search(r'<input[^>]*type="file"[^>]*accept="image/\*"[^>]*capture="environment"', page)
    assert 'name="viewport"' in page
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page), "the page must not load anything from the network"
    assert "@import" not in page and "url(http" not in page


def test_not_an_image_is_415(client):
    detail = _error(
        client.post("/predict", files={"file": ("a.txt", b"hello, not a photo", "text/plain")}), 415, "not_an_image"
    )
    assert "not an image" in detail
    _error(
        client.post("/predict", content=b"<html></html>", headers={"content-type": "image/png"}), 415, "not_an_image"
    )


def test_image_that_cannot_be_decoded_is_422(client):
    jpeg = _jpeg(size=(64, 64))
    detail = _error(
        client.post("/predict", files={"file": ("cut.jpg", jpeg[: len(jpeg) // 2])}), 422, "undecodable_image"
    )
    assert "decoded" in detail


def test_decompression_bomb_is_refused_before_decoding(clf):
    app = create_app(clf, ServeConfig(max_pixels=1_000_000))
    with TestClient(app) as c:
        # 20000 x 5000 would need 300 MB to decode, 50000 x 50000 7.5 GB: refused from the header alone.
        resp = c.post("/predict", files={"file": ("bomb.png", _png_claiming(20_000, 5_000), "image/png")})
        detail = _error(resp, 413, "too_many_pixels")
        assert "1,000,000" in detail and "too large" in detail and "FLOWERID_MAX_PIXELS" not in detail
        # Over Pillow's own limit too: still this server's limit, and no server setting the sender cannot change.
        detail = _error(c.post("/predict", content=_png_claiming(50_000, 50_000)), 413, "too_many_pixels")
        assert "1,000,000" in detail and "178956970" not in detail and "178,956,970" not in detail
        assert "FLOWERID_MAX_PIXELS" not in detail
        assert c.post("/predict", files={"file": ("ok.jpg", _jpeg())}).status_code == 200


def test_a_pixel_limit_above_the_library_default_is_honoured(clf, monkeypatch):
    monkeypatch.setenv("FLOWERID_MAX_PIXELS", "1000")  # the library default, now below a 48x40 photo
    with TestClient(create_app(clf, ServeConfig(max_pixels=10_000))) as c:
        assert c.post("/predict", content=_jpeg()).status_code == 200
        _error(c.post("/predict", content=_jpeg(size=(200, 100))), 413, "too_many_pixels")


def test_upload_over_the_limit_is_413(client):
    big = b"\xff\xd8" + bytes(100 * 1024)
    detail = _error(client.post("/predict", files={"file": ("big.jpg", big, "image/jpeg")}), 413, "upload_too_large")
    assert "64 KB" in detail or "0.0625 MB" in detail
    _error(client.post("/predict", content=big, headers={"content-type": "image/jpeg"}), 413, "upload_too_large")


def _asgi_post(app, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, dict, int]:
    """POST /predict straight through ASGI; returns (status, JSON body, how many chunks the app pulled)."""
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


@pytest.mark.parametrize("multipart", [False, True])
def test_upload_limit_is_enforced_while_reading(clf, multipart):
    """A chunked upload with no Content-Length is cut off as soon as it passes the limit, not read to the end."""
    app = create_app(clf, ServeConfig(max_upload_bytes=10_000))
    chunks = [bytes(1000)] * 100  # 100 kB in all
    headers = [(b"content-type", b"image/jpeg")]
    if multipart:
        head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        chunks = [head, *chunks, b"\r\n--xyz--\r\n"]
        headers = [(b"content-type", b"multipart/form-data; boundary=xyz")]
    status, body, pulled = _asgi_post(app, chunks, headers)
    assert status == 413 and body["error"] == "upload_too_large"
    assert pulled <= 12, f"the server read {pulled} of {len(chunks)} chunks before refusing"


def test_declared_length_over_the_limit_is_refused_unread(clf):
    app = create_app(clf, ServeConfig(max_upload_bytes=10_000))
    headers = [(b"content-type", b"image/jpeg"), (b"content-length", b"100000")]
    status, body, pulled = _asgi_post(app, [bytes(50_000), bytes(50_000)], headers)
    assert status == 413 and pulled == 0


def test_missing_field_and_empty_requests_are_400(client):
    detail = _error(client.post("/predict", files={"photo": ("a.jpg", _jpeg(), "image/jpeg")}), 400, "missing_file")
    assert "'file'" in detail and "photo" in detail
    detail = _error(client.post("/predict", files={"file": (None, "just text")}), 400, "missing_file")
    assert "text, not a file" in detail
    _error(client.post("/predict", data={"file": "a url-encoded form"}), 400, "missing_file")
    _error(client.post("/predict", files={"file": ("empty.jpg", b"", "image/jpeg")}), 400, "missing_file")
    _error(client.post("/predict"), 400, "missing_file")
    _error(
        client.post("/predict", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
        400,
        "bad_multipart",
    )


@pytest.mark.parametrize("top_k", ["0", "-3", "many"])
def test_bad_top_k_is_422(client, top_k):
    detail = _error(client.post(f"/predict?top_k={top_k}", content=_jpeg()), 422, "invalid_request")
    assert "top_k" in detail


def test_unknown_route_is_404_json(client):
    """The same {"error", "detail"} shape as every other refusal, not FastAPI's {"detail": "Not Found"}."""
    assert "/nope" in _error(client.get("/nope"), 404, "not_found")
    _error(client.get("/docs-assets/no-such-file.js"), 404, "not_found")
    resp = client.get("/predict")
    assert "POST" in _error(resp, 405, "method_not_allowed") and resp.headers["allow"] == "POST"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda cut, junk: _jpeg()[:cut] + junk, st.integers(0, 600), st.binary(max_size=40)),
        st.builds(lambda w, h: _png_claiming(w, h), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    ),
    multipart=st.booleans(),
)
def test_no_body_makes_a_500(client, body, multipart):
    if multipart:
        resp = client.post("/predict", files={"file": ("x", body, "application/octet-stream")})
    else:
        resp = client.post("/predict", content=body, headers={"content-type": "application/octet-stream"})
    assert resp.status_code == 200 or 400 <= resp.status_code < 500, resp.text
    assert "error" in resp.json() or "predictions" in resp.json()


def test_inference_runs_off_the_event_loop(clf):
    """While one photo is stuck in the model, the server still answers other requests.

    The stuck prediction is released only by the /health answer; were inference on the
    event loop, /health could not be answered and the release would time out.
    """
    release = threading.Event()
    waited: list[bool] = []
    real_forward = clf.forward

    def stuck_forward(batch):
        waited.append(release.wait(3))
        return real_forward(batch)

    async def scenario() -> dict[str, int]:
        out: dict[str, int] = {}
        transport = httpx.ASGITransport(app=create_app(clf))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac, anyio.create_task_group() as tg:

            async def slow() -> None:
                out["predict"] = (await ac.post("/predict", content=_jpeg())).status_code

            tg.start_soon(slow)
            await anyio.sleep(0.05)
            out["health"] = (await ac.get("/health")).status_code
            release.set()
        return out

    clf.forward = stuck_forward  # an instance attribute, looked up per request
    try:
        assert anyio.run(scenario) == {"health": 200, "predict": 200}
    finally:
        del clf.forward
    assert waited == [True], "/health was not answered while a prediction ran"


def test_serve_cli_errors_are_messages(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.pth")]) != 0
    err = capsys.readouterr().err
    assert "missing.pth" in err and "Traceback" not in err
    assert main(["serve", "--checkpoint", str(tmp_path / "x.pth"), "--max-upload-mb", "0"]) == 2
    assert "upload limit" in capsys.readouterr().err


def test_bad_config_is_a_usage_error():
    with pytest.raises(flowerid.UsageError):
        ServeConfig(unsure_below=1.5)
    with pytest.raises(flowerid.UsageError):
        ServeConfig(inference_threads=0)


def _load_script():
    import importlib.util

    path = ROOT / "benchmarks" / "load_serve.py"
    spec = importlib.util.spec_from_file_location("load_serve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_script_runs_bounded_on_loopback(clf, trained, tmp_path, capsys):
    from flowerid.apps.listen import background_server

    load_serve = _load_script()
    out = tmp_path / "load.json"
    with background_server(create_app(clf)) as url:
        code = load_serve.main(
            ["--url", url, "--images", str(trained[0] / "valid"), "--clients", "3", "--requests", "15", "--warmup", "1"]
            + ["--json-out", str(out)]
        )
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["requests"] == 15 and report["errors"] == 0 and report["clients"] == 3
    assert report["requests_per_s"] > 0 and 0 < report["p50_ms"] <= report["p95_ms"] <= report["max_ms"]
    assert report["top1_right"] == "15/15"
    with pytest.raises(SystemExit):
        load_serve.main(["--url", "http://192.0.2.1:8000/", "--images", str(trained[0] / "valid")])
    assert "not a loopback address" in capsys.readouterr().err


def test_a_taken_port_is_a_clear_error(trained, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--checkpoint", str(trained[1].checkpoint_path), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_real_http_round_trip_on_loopback(clf):
    """uvicorn itself, not only the test client: a photo over a real socket, and a declared-too-large body."""
    from flowerid.apps.listen import background_server

    with background_server(create_app(clf, ServeConfig(max_upload_bytes=50_000))) as url:
        assert url.startswith("http://127.0.0.1:")
        ok = httpx.post(url + "predict", files={"file": ("a.jpg", _jpeg(CLASS_COLOURS["2"]), "image/jpeg")})
        assert ok.status_code == 200 and ok.json()["predictions"][0]["category"] == "2"
        big = httpx.post(url + "predict", content=bytes(200_000), headers={"content-type": "image/jpeg"})
        assert big.status_code == 413 and big.json()["error"] == "upload_too_large"


# "Not right? Tell me what it is": POST /correct keeps the photo for `flowerid add`, only with --corrections.


@pytest.fixture
def fixing(clf, trained, tmp_path):
    app = create_app(clf, ServeConfig(max_upload_bytes=64 * 1024, corrections=str(tmp_path / "fixes")))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, tmp_path / "fixes"


def test_corrections_are_off_unless_asked_for(client):
    assert client.get("/health").json()["model"]["takes_corrections"] is False
    detail = _error(client.post("/correct?category=1", files={"file": _jpeg()}), 404, "corrections_off")
    assert "--corrections DIR" in detail


def test_a_correction_to_a_known_category_is_kept_in_its_folder(fixing):
    c, root = fixing
    assert c.get("/health").json()["model"]["takes_corrections"] is True
    r = c.post("/correct?category=2", files={"file": ("a.jpg", _jpeg(), "image/jpeg")})
    assert r.status_code == 200 and r.json() == {"saved": True, "category": "2"}
    again = c.post("/correct?category=2", content=_jpeg())  # the same photo as a raw body: one file
    assert again.status_code == 200
    files = list((root / "2").iterdir())
    assert len(files) == 1 and files[0].suffix == ".jpg" and files[0].read_bytes() == _jpeg()


def test_a_new_name_gets_a_safe_folder_and_its_name_recorded(fixing):
    c, root = fixing
    r = c.post("/correct", params={"name": "../../Blue  Poppy/"}, files={"file": _jpeg()})
    assert r.status_code == 200 and r.json()["category"] == "blue_poppy"
    assert json.loads((root / "cat_to_name.json").read_text()) == {"blue_poppy": "../../Blue Poppy/"}
    assert sorted(p.name for p in root.iterdir()) == ["blue_poppy", "cat_to_name.json"]
    r = c.post("/correct", params={"name": "Globe Thistle"}, files={"file": _jpeg(seed=8)})
    assert r.json()["category"] == "10"  # a typed name the model knows is that category: no clash for `add`


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("", 400, "bad_correction"),
        ("?category=1&name=x", 400, "bad_correction"),
        ("?category=99", 400, "bad_correction"),
        ("?name=%20..%20", 400, "bad_correction"),
        ("?name=" + "x" * 61, 400, "bad_correction"),
    ],
)
def test_bad_corrections_are_refused_and_nothing_is_written(fixing, query, status, code):
    c, root = fixing
    _error(c.post("/correct" + query, files={"file": _jpeg()}), status, code)
    assert not root.exists() or not any(root.rglob("*.jpg"))


def test_a_correction_must_be_a_readable_photo_under_the_limit(fixing):
    c, root = fixing
    _error(c.post("/correct?category=1", files={"file": ("x.jpg", b"<html>", "image/jpeg")}), 415, "not_an_image")
    _error(c.post("/correct?category=1", content=b"\xff" * (65 * 1024)), 413, "upload_too_large")
    assert not root.exists() or not any(root.rglob("*.*"))


def test_a_corrections_folder_that_cannot_be_written_is_said_not_leaked(fixing, capfd):
    c, root = fixing
    root.write_bytes(b"not a folder")  # the owner's mistake (or a full disk): the sender learns only that
    detail = _error(c.post("/correct?category=2", files={"file": _jpeg()}), 507, "not_saved")
    assert "could not keep the photo" in detail and str(root) not in detail
    assert f"{root} is a file, not a folder" in capfd.readouterr().err  # the owner reads where and why
    assert c.get("/health").status_code == 200  # and the server goes on


def test_the_corrections_folder_teaches_the_model(fixing, trained, tmp_path):
    c, root = fixing
    for seed in range(3):
        c.post("/correct", params={"name": "Sunflower"}, files={"file": _jpeg((220, 220, 30), seed)})
    res = flowerid.add(trained[1].checkpoint_path, root, tmp_path / "taught.pth", log=lambda s: None)
    assert res.added == {"sunflower": 3}
    clf = flowerid.load(res.path)
    assert clf.names[-1] == "Sunflower"
    assert clf.predict(make_photo((220, 220, 30), 77), top_k=1)[0].category == "sunflower"


def test_corrections_need_the_token_like_every_other_route(clf, tmp_path):
    token = "server-token-0123456789abcdef"
    app = create_app(clf, ServeConfig(corrections=str(tmp_path / "fixes"), token=token))
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.post("/correct?category=1", files={"file": _jpeg()}).status_code == 401
        assert not (tmp_path / "fixes").exists()
        ok = c.post("/correct?category=1", files={"file": _jpeg()}, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("multipart", [False, True])
def test_a_client_that_leaves_mid_upload_is_dropped_quietly(clf, multipart, caplog):
    """Content-Length 100000, 30 bytes sent, then the socket closes: no traceback, no 500, one short line."""
    app = create_app(clf, ServeConfig(corrections=None))
    head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' if multipart else b""
    ctype = b"multipart/form-data; boundary=xyz" if multipart else b"image/jpeg"
    messages = [{"type": "http.request", "body": head + bytes(30), "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", ctype), (b"content-length", b"100000")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    with caplog.at_level("INFO"):
        anyio.run(app, scope, receive, send)  # raised ClientDisconnect (and uvicorn logged a traceback)
    assert all(m.get("status", 0) < 500 for m in sent)
    assert not [r for r in caplog.records if r.levelno >= 30 or r.exc_info]
    assert len([r for r in caplog.records if "left" in r.getMessage()]) <= 1


@pytest.mark.parametrize("damaged", ['{"x":', "[1,2]"])
def test_a_damaged_names_file_is_507_and_named_to_the_owner(fixing, capfd, damaged):
    c, root = fixing
    root.mkdir()
    (root / "cat_to_name.json").write_text(damaged)
    detail = _error(c.post("/correct", params={"name": "Blue poppy"}, files={"file": _jpeg()}), 507, "not_saved")
    assert str(root) not in detail
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "cat_to_name.json" in line]
    assert len(lines) == 1 and str(root / "cat_to_name.json") in lines[0] and "fix" in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("query", ["?name=a%00b", "?name=%E2%80%AEevil"])
def test_a_name_with_control_characters_is_refused(fixing, query):
    c, root = fixing
    detail = _error(c.post("/correct" + query, files={"file": _jpeg()}), 400, "bad_correction")
    assert "control or invisible" in detail
    assert not root.exists()


@pytest.mark.parametrize("path", ["/", "/health", "/labels"])
def test_head_answers_like_get_without_a_body(client, path):
    got, head = client.get(path), client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))


@pytest.mark.parametrize("path", ["/health/", "/labels/", "/predict/"])
def test_no_trailing_slash_redirect_to_a_host_the_client_named(client, path):
    """A redirect built from the Host header would send the browser wherever the request said (evil.example)."""
    resp = client.request(
        "POST" if path == "/predict/" else "GET", path, headers={"host": "evil.example"}, follow_redirects=False
    )
    _error(resp, 404, "not_found")
    assert "location" not in resp.headers


SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


def test_every_answer_carries_the_security_headers(client):
    answers = {
        "page": client.get("/"),
        "health": client.get("/health"),
        "docs": client.get("/docs"),
        "asset": client.get("/docs-assets/swagger-ui.css"),
        "404": client.get("/nope"),
        "422": client.post("/predict?top_k=0", content=_jpeg()),
        "413": client.post("/predict", content=bytes(100 * 1024)),
        "predict": client.post("/predict", content=_jpeg()),
        "head": client.head("/health"),
    }
    for what, resp in answers.items():
        for header, value in SECURITY_HEADERS.items():
            assert resp.headers.get(header) == value, (what, header, resp.headers)
        assert "frame-ancestors 'none'" in resp.headers.get("content-security-policy", ""), what
        json_answer = resp.headers["content-type"].startswith("application/json")
        assert (resp.headers.get("cache-control") == "no-store") == json_answer, (what, resp.headers)
    assert answers["page"].headers["cache-control"] == "no-cache"  # the page itself revalidates, as before


def test_an_unexpected_error_is_a_json_500_with_the_security_headers(clf, monkeypatch):
    app = create_app(clf)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as c:
        resp = c.get("/boom")
    assert _error(resp, 500, "internal_error") and "a bug" not in resp.text
    assert resp.headers["x-content-type-options"] == "nosniff" and resp.headers["cache-control"] == "no-store"
