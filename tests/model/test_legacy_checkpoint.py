"""A checkpoint written by flowerid before the package moved into subpackages (commit 2f4ef97) still loads.

tests/fixtures/legacy-2f4ef97/ holds that checkpoint (tiny test backbone, a 16-unit hidden layer,
one augmented view, calibrated) and the top-3 predictions the old code gave for three photos.
"""

from __future__ import annotations

import json

import pytest

import flowerid

from ..conftest import CLASS_COLOURS, ROOT, make_photo

LEGACY = ROOT / "tests" / "fixtures" / "legacy-2f4ef97"


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_checkpoint_from_before_the_move_predicts_as_it_did(engine):
    expected = json.loads((LEGACY / "expected.json").read_text())
    clf = flowerid.load(LEGACY / "checkpoint.pth", device="cpu", engine=engine)
    assert clf.categories == sorted(CLASS_COLOURS)
    for cat, colour in CLASS_COLOURS.items():
        got = [p.to_dict() for p in clf.predict(make_photo(colour, 1000 + int(cat)), top_k=3)]
        assert [p["category"] for p in got] == [p["category"] for p in expected[cat]]
        assert [p["name"] for p in got] == [p["name"] for p in expected[cat]]
        assert [p["probability"] for p in got] == pytest.approx([p["probability"] for p in expected[cat]], abs=1e-5)


def test_checkpoint_from_before_unknown_photos_says_it_cannot_tell(tmp_path, capsys):
    """It predicts as before; known and unknown_score are None (null in JSON); info says why."""
    from flowerid.apps.cli import main
    from flowerid.model.export import export_checkpoint
    from flowerid.model.info import checkpoint_info, format_info

    clf = flowerid.load(LEGACY / "checkpoint.pth", device="cpu")
    assert clf.unknown is None
    preds = clf.predict(make_photo(CLASS_COLOURS["1"], 1001), top_k=2)
    assert [(p.known, p.unknown_score) for p in preds] == [(None, None)] * 2
    photo = tmp_path / "p.png"
    make_photo(CLASS_COLOURS["2"], 5).save(photo)
    assert main(["predict", str(photo), "--checkpoint", str(LEGACY / "checkpoint.pth"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)[0]
    assert rec["known"] is None and rec["unknown_score"] is None and rec["predictions"]
    assert "cannot tell" in format_info(checkpoint_info(LEGACY / "checkpoint.pth"))
    assert export_checkpoint(LEGACY / "checkpoint.pth", tmp_path / "m.onnx").manifest["unknown"] is None
