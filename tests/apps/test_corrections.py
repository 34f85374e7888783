"""The corrections folder: safe folder names, no path escapes, names recorded, photos checked."""

from __future__ import annotations

import io
import json

import pytest

from flowerid.apps.corrections import folder_for, safe_folder, save_correction
from flowerid.errors import DataError, ImageError, OutputError, UsageError

from ..conftest import make_photo

CATS, NAMES = ["1", "10"], ["pink primrose", None]


def _png(seed: int = 1) -> bytes:
    buf = io.BytesIO()
    make_photo((10, 200, 10), seed).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("Blue Poppy", "blue_poppy"),
        ("../../etc/passwd", "etc_passwd"),
        (".hidden", "hidden"),
        ("Œillet d'Inde", "œillet_d_inde"),
        ("ＦＵＬＬ width", "full_width"),
        ("a/b\\c\0d", "a_b_c_d"),
    ],
)
def test_safe_folder_names(name, folder):
    assert safe_folder(name) == folder


@pytest.mark.parametrize("name", ["", "...", "/", " \t ", "-_-"])
def test_a_name_with_nothing_to_keep_is_refused(name):
    with pytest.raises(UsageError):
        safe_folder(name)


def test_folder_for_maps_known_names_and_ids_to_their_category():
    assert folder_for(CATS, NAMES, None, "Pink  Primrose") == ("1", None)
    assert folder_for(CATS, NAMES, None, "10") == ("10", None)
    assert folder_for(CATS, NAMES, "10", None) == ("10", None)
    assert folder_for(CATS, NAMES, None, "Blue poppy") == ("blue_poppy", "Blue poppy")
    with pytest.raises(UsageError):
        folder_for(CATS + ["../x"], NAMES + [None], "../x", None)


def test_save_correction_writes_atomically_inside_the_folder(tmp_path):
    root = tmp_path / "fixes"
    path = save_correction(root, _png(), CATS, NAMES, name="../Blue poppy")
    assert path.parent == root / "blue_poppy" and path.suffix == ".png" and path.read_bytes() == _png()
    assert json.loads((root / "cat_to_name.json").read_text()) == {"blue_poppy": "../Blue poppy"}
    save_correction(root, _png(2), CATS, NAMES, name="blue  POPPY")  # same folder; the first name stays
    assert json.loads((root / "cat_to_name.json").read_text()) == {"blue_poppy": "../Blue poppy"}
    assert len(list((root / "blue_poppy").iterdir())) == 2
    assert not list(root.rglob(".*.tmp"))


def test_an_iphone_photo_is_kept_as_heic(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    pillow_heif.from_pillow(make_photo((30, 200, 30), 3, (64, 64))).save(buf, quality=90)
    path = save_correction(tmp_path / "fixes", buf.getvalue(), CATS, NAMES, category="1")
    assert path.suffix == ".heic" and path.read_bytes() == buf.getvalue()


def test_a_file_that_is_not_a_photo_is_not_kept(tmp_path):
    with pytest.raises(ImageError):
        save_correction(tmp_path / "fixes", b"GIF89a broken", CATS, NAMES, category="1")
    assert not (tmp_path / "fixes").exists()


@pytest.mark.parametrize("typed", ["Rose!", "rose.", "ROSE", "  rose ", "Ｒｏｓｅ", "74", "rose\t"])
def test_a_name_add_would_see_as_an_existing_category_is_that_category(tmp_path, typed):
    """`flowerid add` compares folders and names after its own normalisation: what it would call a clash is
    filed under the existing category instead, so the folder never makes `add` refuse."""
    from flowerid.model.add import read_new_data

    cats, names = ["1", "74"], ["pink primrose", "rose"]
    assert folder_for(cats, names, None, typed) == ("74", None)
    root = tmp_path / "fixes"
    save_correction(root, _png(), cats, names, name=typed)
    groups = read_new_data(root, cats, names)  # raised "clashes with existing category '74'" for "Rose!"
    assert [(g.category, g.existing) for g in groups] == [("74", True)]


def test_a_name_whose_folder_is_an_old_category_is_that_category():
    assert folder_for(CATS, NAMES, None, "10!") == ("10", None)
    assert folder_for(["Rose"], [None], None, "rose!") == ("Rose", None)


@pytest.mark.parametrize("name", ["a\x00b", "\u202eevil", "x\u200by", "a\x1bb", "\ufeffrose"])
def test_control_and_invisible_format_characters_are_refused(tmp_path, name):
    with pytest.raises(UsageError, match="control or invisible"):
        save_correction(tmp_path / "fixes", _png(), CATS, NAMES, name=name)
    assert not (tmp_path / "fixes").exists()


def test_whitespace_in_a_name_is_collapsed(tmp_path):
    save_correction(tmp_path / "fixes", _png(), CATS, NAMES, name=" Blue\t\n poppy\u2028 ")
    assert json.loads((tmp_path / "fixes" / "cat_to_name.json").read_text()) == {"blue_poppy": "Blue poppy"}


def test_a_photo_that_cannot_be_written_leaves_no_name_behind(tmp_path):
    """The photo first, then its name: a failed photo must not leave a name with no folder of photos."""
    root = tmp_path / "fixes"
    root.mkdir()
    (root / "blue_poppy").write_bytes(b"a file where the folder goes")
    with pytest.raises(OutputError):
        save_correction(root, _png(), CATS, NAMES, name="Blue poppy")
    assert not (root / "cat_to_name.json").exists()


def test_a_name_that_cannot_be_written_takes_its_new_photo_back(tmp_path, monkeypatch):
    from flowerid.apps import corrections

    def full_disk(*args, **kwargs):
        raise OutputError("cannot write cat_to_name.json: No space left on device")

    root = tmp_path / "fixes"
    monkeypatch.setattr(corrections, "atomic_write_json", full_disk)
    with pytest.raises(OutputError):
        save_correction(root, _png(), CATS, NAMES, name="Blue poppy")
    assert not (root / "blue_poppy").exists()


@pytest.mark.parametrize("damaged", ['{"x":', "[1,2]"])
def test_a_damaged_names_file_keeps_nothing(tmp_path, damaged):
    root = tmp_path / "fixes"
    root.mkdir()
    (root / "cat_to_name.json").write_text(damaged)
    with pytest.raises(DataError, match="cat_to_name.json"):
        save_correction(root, _png(), CATS, NAMES, name="Blue poppy")
    assert (root / "cat_to_name.json").read_text() == damaged and not (root / "blue_poppy").exists()


def test_a_names_file_its_owner_saved_in_notepad_is_kept(tmp_path):
    """Notepad starts UTF-8 with a byte-order mark: the owner's names stay, and the new one joins them."""
    import json

    root = tmp_path / "fixes"
    root.mkdir()
    (root / "cat_to_name.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"mine": "my rose"}).encode())
    save_correction(root, _png(), CATS, NAMES, name="Blue poppy")
    names = json.loads((root / "cat_to_name.json").read_text(encoding="utf-8-sig"))
    assert names["mine"] == "my rose" and names["blue_poppy"] == "Blue poppy"
