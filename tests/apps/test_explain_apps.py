"""`predict --explain`, `/predict?explain=1` and evaluate's mistakes with their maps."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import flowerid
from flowerid.apps.cli import main
from flowerid.apps.server import ServeConfig, create_app

from ..conftest import CLASS_COLOURS, ROOT, build_folder, make_photo

FIELDS = {"category", "grid", "box", "logit", "bias", "exact"}


def _photos(data):
    return [str(next((data / "test" / c).iterdir())) for c in ("1", "10", "2")]


def test_predict_explain_writes_a_picture_per_photo(trained, tmp_path, capsys):
    data, result = trained
    photos = _photos(data)
    out = tmp_path / "why"
    rc = main(["predict", *photos, "--checkpoint", str(result.checkpoint_path), "--explain", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for photo in photos:
        picture = out / (os.path.splitext(os.path.basename(photo))[0] + ".explain.png")
        assert f"why: {picture}" in text
        with Image.open(picture) as im:
            assert im.format == "PNG" and im.width > im.height / 2
    # The top 2, side by side: a picture about twice as wide.
    with Image.open(out / (os.path.splitext(os.path.basename(photos[0]))[0] + ".explain.png")) as im:
        one = im.width
    main(["predict", photos[0], "--checkpoint", str(result.checkpoint_path), "--explain", str(out), "--explain-k", "2"])
    with Image.open(out / (os.path.splitext(os.path.basename(photos[0]))[0] + ".explain.png")) as im:
        assert im.width > 1.8 * one


def test_predict_explain_json_has_the_fields_and_an_error_row_for_an_unreadable_photo(trained, tmp_path, capsys):
    data, result = trained
    bad = tmp_path / "notes.jpg"
    bad.write_text("shopping list")
    photos = [_photos(data)[1], str(bad)]
    rc = main(["predict", *photos, "--checkpoint", str(result.checkpoint_path), "--json", "--explain",
               "--explain-k", "2", "--top-k", "3"])  # fmt: skip
    assert rc == 1  # one photo could not be read, as predict without --explain
    rows = json.loads(capsys.readouterr().out)
    assert rows[1] == {"image": str(bad), "error": rows[1]["error"]} and "not an image" in rows[1]["error"]
    row = rows[0]
    assert set(row["explanation"]) == FIELDS and row["explanation"]["exact"] is True
    assert row["explanation"]["category"] == row["predictions"][0]["category"] == "10"
    assert [e["category"] for e in row["explanations"]] == [p["category"] for p in row["predictions"][:2]]
    for e in row["explanations"]:
        assert np.mean(e["grid"]) + e["bias"] == pytest.approx(e["logit"], abs=1e-5)
    assert "picture" not in row  # --json with a bare --explain: numbers only, no pictures in the current folder
    # The answers are those of predict without --explain.
    main(["predict", photos[0], "--checkpoint", str(result.checkpoint_path), "--json", "--top-k", "3"])
    plain = json.loads(capsys.readouterr().out)[0]
    for a, b in zip(plain["predictions"], row["predictions"], strict=True):
        assert a["category"] == b["category"] and a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_explain_flags_that_cannot_work_are_usage_errors(trained, tmp_path, capsys):
    data, result = trained
    photos = _photos(data)
    ck = ["--checkpoint", str(result.checkpoint_path)]
    assert main(["predict", "--explain", *photos, *ck]) == 2  # the first photo taken for the folder
    assert "is a file" in capsys.readouterr().err
    assert main(["predict", photos[0], *ck, "--explain-k", "2"]) == 2
    assert main(["predict", photos[0], *ck, "--explain", "--explain-k", "0"]) == 2
    assert main(["predict", photos[0], *ck, "--explain", "--out", str(tmp_path / "x.csv")]) == 2


def test_predict_explain_stays_torch_free_once_the_spatial_graph_is_cached(trained, tmp_path):
    data = trained[0]
    code = (
        "import sys; from flowerid.apps.cli import main; "
        "rc = main(['predict', sys.argv[1], '--checkpoint', sys.argv[2], '--explain', sys.argv[3]]); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    # The built-in model (lite0): a child process knows its backbone, and the first run caches both graphs.
    args = [sys.executable, "-c", code, _photos(data)[0], "builtin", str(tmp_path)]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert first.stdout.strip().endswith("TORCH 0"), first.stdout + first.stderr
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.stdout.strip().endswith("NO-TORCH 0"), again.stdout + again.stderr


@pytest.fixture
def client(trained):
    app = create_app(flowerid.load(trained[1].checkpoint_path), ServeConfig(max_upload_bytes=64 * 1024))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _jpeg(colour=CLASS_COLOURS["10"]) -> bytes:
    buf = io.BytesIO()
    make_photo(colour, 7, (60, 40)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_the_api_explains_when_asked_and_only_then(client):
    plain = client.post("/predict", files={"file": ("a.jpg", _jpeg())})
    assert plain.status_code == 200 and "explanation" not in plain.json()
    resp = client.post("/predict?explain=1&top_k=2", files={"file": ("a.jpg", _jpeg())})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    e = body["explanation"]
    assert set(e) == FIELDS and e["category"] == body["predictions"][0]["category"] == "10"
    assert np.mean(e["grid"]) + e["bias"] == pytest.approx(e["logit"], abs=1e-5)
    x0, y0, x1, y1 = e["box"]
    assert 0 <= x0 < x1 <= 60 and 0 <= y0 < y1 <= 40 and y1 - y0 == pytest.approx(40 * 32 / 36, abs=1.5)
    assert [p["category"] for p in body["predictions"]] == [p["category"] for p in plain.json()["predictions"][:2]]
    bad = client.post("/predict?explain=1", files={"file": ("a.jpg", b"not an image")})
    assert bad.status_code == 415 and bad.json()["error"] == "not_an_image"


def test_evaluate_shows_each_mistake_with_the_maps_of_what_it_said_and_what_was_right(trained, tmp_path):
    # Labels swapped between two categories: every one of their photos is a mistake.
    swapped = {"1": CLASS_COLOURS["10"], "10": CLASS_COLOURS["1"], "2": CLASS_COLOURS["2"]}
    folder = build_folder(tmp_path / "swapped", {"test": 3}, classes=swapped) / "test"
    result = flowerid.evaluate(trained[1].checkpoint_path, folder, tmp_path / "eval", log=lambda s: None)
    assert len(result.why) == 6 and all(p.said != p.true for p in result.why)
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "Mistakes: where it looked" in html and html.count('alt="maps of ') == 6
    with Image.open(io.BytesIO(result.why[0].jpeg)) as im:
        assert im.width > 2 * im.height * 0.8  # two panels side by side
