"""Batch prediction into files: walking folders, result writers, resume after an interruption."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from flowerid._io import file_sha256
from flowerid.data.walk import iter_photos
from flowerid.distributed import shard
from flowerid.errors import ResultsFileError, UsageError
from flowerid.model import batch as batch_module
from flowerid.model.batch import part_path, predict_to_file, stamp_path
from flowerid.model.predictor import Classifier
from flowerid.model.results import (
    CsvWriter,
    DoneSet,
    JsonlWriter,
    ParquetWriter,
    columns,
    open_results,
    printable,
    read_jsonl,
)

from ..conftest import CLASS_COLOURS, make_photo

ODD_NAMES = ["plain.jpg", "com,ma.jpg", 'quo"te.jpg', "new\nline.jpg", "tab\there.jpg", os.fsdecode(b"caf\xe9.jpg")]


def _tree(root: Path) -> list[str]:
    """A photo tree with nested folders, a hidden file, a text file, a link loop and a second link to a folder."""
    files = []
    for i, rel in enumerate(["b/2.jpg", "b/10.png", "a/x/1.jpg", "a/0.jpg", "top.jpg", "c d/é.jpg"]):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        make_photo(CLASS_COLOURS["1"], i).save(p)
        files.append(p)
    (root / "a" / ".hidden.jpg").write_bytes(b"x")
    (root / "a" / "notes.txt").write_text("not a photo")
    (root / "a" / "x" / "loop").symlink_to(root / "a", target_is_directory=True)
    (root / "z-link").symlink_to(root / "b", target_is_directory=True)  # b is walked once, under its own name
    return [str(p) for p in files]


def test_walk_is_stable_follows_links_once_and_skips_non_photos(tmp_path):
    files = _tree(tmp_path / "t")
    got = list(iter_photos([str(tmp_path / "t")]))
    assert sorted(got) == sorted(files) and len(got) == len(set(got))
    assert got == list(iter_photos([str(tmp_path / "t")]))
    assert got[:3] == [str(tmp_path / "t" / "a" / "0.jpg"), str(tmp_path / "t" / "a" / "x" / "1.jpg"), files[1]]
    # a named file is kept as given, even a missing one (its row will say why); order of inputs is kept
    named = ["missing.jpg", str(tmp_path / "t" / "top.jpg")]
    assert list(iter_photos(named)) == named


def test_walk_reports_an_unreadable_folder(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    make_photo(CLASS_COLOURS["1"], 0).save(tmp_path / "ok.jpg")
    real = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):  # as root, chmod 0 does not stop reading: refuse here instead
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    warned: list[tuple[str, str]] = []
    assert list(iter_photos([str(tmp_path)], lambda p, r: warned.append((p, r)))) == [str(tmp_path / "ok.jpg")]
    assert warned == [(str(tmp_path / "locked"), "Permission denied")]


def _record(image: str, k: int = 2) -> dict:
    preds = [{"category": str(i), "name": f"n{i}" if i else None, "probability": 0.5 / (i + 1)} for i in range(k)]
    return {"image": image, "predictions": preds}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_writers_round_trip_odd_names_and_resume(tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    w = open_results(out, top_k=2)
    w.write([_record(n) for n in ODD_NAMES[:3]])
    w.write([{"image": ODD_NAMES[3], "error": "not an image Pillow can read"}])
    w.close()
    w = open_results(out, top_k=2)
    assert len(w.done) == 4 and all(n in w.done for n in ODD_NAMES[:4]) and ODD_NAMES[4] not in w.done
    w.write([_record(n) for n in ODD_NAMES[4:]])
    w.close()
    rows = _read_rows(out)
    # Parquet text is UTF-8: a name that is not keeps its odd bytes as \xNN (and still counts as done)
    assert [r["image"] for r in rows] == [printable(n) if suffix == ".parquet" else n for n in ODD_NAMES]
    assert rows[3]["error"] == "not an image Pillow can read" and not rows[3]["category"]
    assert rows[0]["category"] == "0" and float(rows[0]["probability"]) == 0.5
    assert rows[0]["category_2"] == "1" and rows[0]["name_2"] == "n1" and float(rows[0]["probability_2"]) == 0.25


def _read_rows(out: Path) -> list[dict]:
    if out.suffix == ".csv":
        with open(out, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return list(csv.DictReader(f))
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(out).to_pylist()
    from flowerid.model.results import flatten

    return [flatten(r, 2) for r in read_jsonl(out)]


def test_a_name_holding_a_bare_carriage_return_is_quoted_and_a_rerun_skips_it(tmp_path):
    out = tmp_path / "r.csv"
    w = open_results(out, top_k=2)
    w.write([_record("x\rz.jpg"), {"image": "a.jpg", "error": "bad\rline"}])
    w.close()
    assert [(r["image"], r["error"]) for r in _read_rows(out)] == [("x\rz.jpg", ""), ("a.jpg", "bad\rline")]
    w = open_results(out, top_k=2)
    assert "x\rz.jpg" in w.done and len(w.done) == 2
    w.close()


def test_a_csv_written_with_an_unquoted_carriage_return_still_resumes(tmp_path):
    out = tmp_path / "r.csv"
    cols = columns(2)
    out.write_bytes((",".join(cols) + "\n" + "x\rz.jpg,0,n0,0.5" + "," * (len(cols) - 4) + "\n").encode())
    w = open_results(out, top_k=2)
    assert "x\rz.jpg" in w.done and len(w.done) == 1
    w.close()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_half_written_last_row_is_cut_and_made_again(tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    w = open_results(out, top_k=2)
    w.write([_record("a.jpg"), _record("new\nline.jpg")])
    w.close()
    whole = out.read_bytes()
    w = open_results(out, top_k=2)
    w.write([_record('b"c\nd.jpg')])
    w.close()
    last = out.read_bytes()[len(whole) :]
    for cut in (1, len(last) // 2, len(last) - 1):  # killed anywhere inside the row, inside quotes too
        out.write_bytes(whole + last[:cut])
        w = open_results(out, top_k=2)
        assert out.read_bytes() == whole and 'b"c\nd.jpg' not in w.done and len(w.done) == 2
        w.close()


def test_a_killed_parquet_run_keeps_its_rows_in_the_journal(tmp_path):
    out = tmp_path / "r.parquet"
    w = ParquetWriter(out, top_k=1)
    w.write([_record("a.jpg", 1)])
    w.close()
    w = ParquetWriter(out, top_k=1)
    w.write([_record("b.jpg", 1), _record("c.jpg", 1)])
    w.journal._f.close()  # as if killed: no fold
    assert out.with_name("r.parquet.part").exists()
    w = ParquetWriter(out, top_k=1)
    assert {"a.jpg", "b.jpg", "c.jpg"} == {n for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg") if n in w.done}
    w.close()
    assert [r["image"] for r in _read_rows(out)] == ["a.jpg", "b.jpg", "c.jpg"]
    assert not out.with_name("r.parquet.part").exists()


def test_other_columns_or_a_foreign_file_are_refused_not_overwritten(tmp_path):
    out = tmp_path / "r.csv"
    CsvWriter(out, top_k=1).close()
    with pytest.raises(UsageError, match="same --top-k"):
        CsvWriter(out, top_k=3)
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"user": "data"}\n')
    with pytest.raises(ResultsFileError, match="mine.jsonl exists and is not a flowerid results file"):
        JsonlWriter(mine)
    assert mine.read_text() == '{"user": "data"}\n'
    with pytest.raises(UsageError, match=r"\.csv, \.jsonl or \.parquet"):
        open_results(tmp_path / "r.txt")
    assert columns(2, ["known", "unknown_score"]) == [
        *("image", "category", "name", "probability", "error", "known", "unknown_score"),
        *("category_2", "name_2", "probability_2"),
    ]


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(UsageError, match=r"pip install 'flowerid\[parquet\]'"):
        open_results(tmp_path / "r.parquet")
    assert not (tmp_path / "r.parquet").exists()


def test_done_set_holds_many_names_in_little_memory():
    done = DoneSet()
    names = [f"photos/{i // 1000}/{i}.jpg" for i in range(200_000)]
    for n in names:
        done.add(n)
    assert len(done) == 200_000 and all(n in done for n in names[::997]) and "photos/x.jpg" not in done
    assert done._sorted.nbytes == 8 * 200_000


def test_shards_cover_each_index_once_without_padding():
    for n in (0, 1, 7, 10):
        for size in (1, 2, 3):
            got = [i for r in range(size) for i in shard(n, r, size)]
            assert sorted(got) == list(range(n))


@pytest.fixture
def tree(trained, tmp_path) -> tuple[Classifier, Path, list[str]]:
    data, result = trained
    root = tmp_path / "photos"
    root.mkdir()
    for split in ("valid", "test"):
        (root / split).symlink_to(data / split, target_is_directory=True)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "page.png").write_text("<html>404</html>")
    clf = Classifier.load(result.checkpoint_path)
    return clf, root, list(iter_photos([str(root)]))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_predict_to_file_names_every_photo_once_and_matches_predict(tree, tmp_path, suffix):
    clf, root, photos = tree
    out = tmp_path / f"out{suffix}"
    s = predict_to_file(clf, [str(root)], out, top_k=2, batch_size=4, progress=False)
    assert (s.predicted, s.errors, s.already) == (len(photos) - 2, 2, 0)
    rows = _read_rows(out)
    assert [r["image"] for r in rows] == photos
    errors = {r["image"]: r["error"] for r in rows if r["error"]}
    assert set(errors) == {str(root / "broken.jpg"), str(root / "page.png")}
    assert "web page" in errors[str(root / "page.png")]
    for r in rows:
        if not r["error"]:
            expect = clf.predict(r["image"], top_k=2)
            assert r["category"] == expect[0].category and r["category_2"] == expect[1].category
            assert float(r["probability"]) == pytest.approx(expect[0].probability, abs=1e-6)
    again = predict_to_file(clf, [str(root)], out, top_k=2, progress=False)
    assert (again.predicted, again.errors, again.already) == (0, 0, len(photos))
    assert _read_rows(out) == rows


def test_an_interrupted_batch_resumes_with_each_photo_once(tree, tmp_path, monkeypatch):
    clf, root, photos = tree
    out = tmp_path / "out.jsonl"
    real = batch_module._name_group

    def stop_at_third_group(clf_, engine, group, top_k):
        # The third group in walk order, whichever stream takes it first: streams run groups concurrently,
        # so "the third call" may be any group on a loaded machine.
        if group[0] == photos[8]:
            raise KeyboardInterrupt
        return real(clf_, engine, group, top_k)

    monkeypatch.setattr(batch_module, "_name_group", stop_at_third_group)
    with pytest.raises(KeyboardInterrupt):
        predict_to_file(clf, [str(root)], out, batch_size=4, progress=False)
    kept = [r["image"] for r in read_jsonl(out)]
    assert 0 < len(kept) < len(photos) and kept == photos[: len(kept)]
    monkeypatch.setattr(batch_module, "_name_group", real)
    s = predict_to_file(clf, [str(root)], out, batch_size=4, progress=False)
    assert s.already == len(kept)
    images = [r["image"] for r in read_jsonl(out)]
    assert sorted(images) == sorted(photos) and len(images) == len(set(images))


def test_the_bar_of_a_resumed_run_counts_what_is_left(tree, tmp_path, capsys):
    clf, root, photos = tree
    out = tmp_path / "out.jsonl"
    w = JsonlWriter(out)
    w.write([_record(p, 1) for p in photos[:5]])
    w.close()
    s = predict_to_file(clf, [str(root)], out, progress=True)
    left = len(photos) - 5
    assert s.already == 5 and s.predicted + s.errors == left
    assert f"{left}/{left}" in capsys.readouterr().err  # rate and time left need the total


def test_parts_left_by_a_torchrun_job_are_honoured_and_merged(tree, tmp_path):
    clf, root, photos = tree
    out = tmp_path / "out.csv"
    part = JsonlWriter(part_path(out, 1))
    part.write([_record(photos[1], 1), _record(photos[3], 1)])
    part.close()
    s = predict_to_file(clf, [str(root)], out, progress=False)
    assert s.already == 2 and not part_path(out, 1).exists()
    images = [r["image"] for r in _read_rows(out)]
    assert sorted(images) == sorted(photos) and len(images) == len(set(images))
    assert json.dumps(images)  # names stay strings


def test_ctrl_c_keeps_every_finished_row_and_the_same_command_finishes(trained, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    data, result = trained
    out = tmp_path / "out.csv"
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    args = ["predict", str(data), "--out", str(out), "--checkpoint", str(result.checkpoint_path)]

    def start(stage: str) -> subprocess.Popen:
        driver = [sys.executable, str(root / "tests" / "train_driver.py"), stage, str(tmp_path / "marker")]
        return subprocess.Popen(
            [*driver, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )

    proc = start("features")  # each engine batch takes 0.3 s
    end = time.monotonic() + 120
    while not (out.exists() and out.read_text().count("\n") > 8):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no rows written"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command again" in err
    with open(out, newline="") as f:
        kept = [r["image"] for r in csv.DictReader(f)]
    total = len(list(iter_photos([str(data)])))
    assert 8 <= len(kept) < total and len(set(kept)) == len(kept)
    proc = start("none")
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"{len(kept)} were already there" in stdout
    with open(out, newline="") as f:
        images = [r["image"] for r in csv.DictReader(f)]
    assert sorted(images) == sorted(iter_photos([str(data)])) and len(images) == total


def test_rows_say_whether_each_photo_is_known_as_predict_does(tree, tmp_path):
    clf, root, photos = tree
    assert clf.unknown is not None  # a model trained now carries the unknown-photo detector
    out = tmp_path / "out.csv"
    predict_to_file(clf, [str(root)], out, progress=False)
    with open(out, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:7] == ["image", "category", "name", "probability", "error", "known", "unknown_score"]
        rows = {r["image"]: r for r in reader}
    named = [p for p in photos if not rows[p]["error"]]
    assert named
    for p in named:
        expected = clf.predict(p, top_k=1)[0]
        assert rows[p]["known"] == str(expected.known)
        assert float(rows[p]["unknown_score"]) == pytest.approx(expected.unknown_score, abs=1e-5)


def _csv_with_rows(out: Path, names: list[str]) -> None:
    w = open_results(out, top_k=2)
    w.write([_record(n) for n in names])
    w.close()


def test_a_stray_quote_in_a_hand_edited_csv_keeps_every_later_row(tmp_path):
    out = tmp_path / "r.csv"
    _csv_with_rows(out, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    lines = out.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(",n1,", ',5" green,')  # row 2's name_2, as typed in an editor
    out.write_text("".join(lines))
    w = open_results(out, top_k=2)
    w.close()
    assert len(w.done) == 4 and all(n in w.done for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"))
    assert out.read_text() == "".join(lines)  # nothing cut


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_a_quote_that_swallows_later_rows_is_refused_naming_the_line(tmp_path, trailing_newline):
    out = tmp_path / "r.csv"
    _csv_with_rows(out, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    lines = out.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(",n1,", ',"5 green,')  # an opening quote that never closes
    text = "".join(lines) if trailing_newline else "".join(lines).rstrip("\n")
    out.write_text(text)
    with pytest.raises(ResultsFileError, match=rf"{out.name} line 3 cannot be read as CSV; fix or remove it"):
        open_results(out, top_k=2)
    assert out.read_text() == text
    lines[2] = lines[2].replace(',"5 green,', ',"5 green",')  # closed: fine again
    lines[3] = lines[3].replace(",n1,", ',"x,')  # ... and one in row 3 that a later quote closes: too many fields
    lines[4] = lines[4].replace("d.jpg,0,", 'd.jpg,0",')
    out.write_text("".join(lines))
    with pytest.raises(ResultsFileError, match=r"line 4 cannot be read as CSV"):
        open_results(out, top_k=2)


@pytest.mark.parametrize(
    ("name", "content", "first_line"),
    [
        ("mine.csv", "name,amount,alice,100", "the header image,category,"),
        ("mine.csv", "name,amount\nalice,100\n", "the header image,category,"),
        ("mine.jsonl", '{"my":"record"}', 'a JSON record with an "image" field'),
        ("mine.jsonl", "just some notes", 'a JSON record with an "image" field'),
        ("mine.parquet", "not parquet at all", None),
    ],
)
def test_a_file_that_is_not_flowerid_results_is_refused_and_kept(tmp_path, name, content, first_line):
    mine = tmp_path / name
    mine.write_text(content)
    with pytest.raises(ResultsFileError, match=rf"{name} exists and is not a flowerid results file") as e:
        open_results(mine, top_k=1).close()
    assert "choose another --out" in str(e.value)
    if first_line:
        assert f"its first line is not {first_line}" in str(e.value)
    assert mine.read_text() == content


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_an_empty_file_or_a_header_cut_short_is_used(tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    out.write_bytes(b"")
    w = open_results(out, top_k=1)
    w.write([_record("a.jpg", 1)])
    w.close()
    assert [r["image"] for r in _read_rows(out)] == ["a.jpg"]
    if suffix != ".parquet":
        out.write_bytes(b"image,catego" if suffix == ".csv" else b'{"ima')  # killed while writing the first line
        open_results(out, top_k=1).close()
        assert len(_read_rows(out)) == 0


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"image": "x", "predictions": [{"category": 5}]}, 'prediction 1 lacks "name"'),
        ({"image": "x", "predictions": {"category": "5"}}, '"predictions" is not a list'),
        ({"image": "x", "predictions": [{"category": "5", "name": None, "probability": "high"}]}, "probability"),
        ({"image": "x", "known": "yes", "predictions": []}, '"known"'),
        ({"image": "x", "error": 404}, '"error"'),
        ({"name": "x"}, '"image"'),
    ],
)
def test_a_hand_edited_journal_row_is_refused_with_its_line_before_any_work(tmp_path, row, problem):
    out = tmp_path / "o3.parquet"
    good = json.dumps(_record("a.jpg", 1))
    journal = tmp_path / "o3.parquet.part"
    journal.write_text(f"{good}\n{json.dumps(row)}\n")
    with pytest.raises(ResultsFileError, match=r"o3\.parquet\.part line 2 is not a flowerid result row") as e:
        open_results(out, top_k=1)
    assert problem in str(e.value) and "write to another --out" in str(e.value)
    assert journal.read_text() == f"{good}\n{json.dumps(row)}\n" and not out.exists()


def test_predict_refuses_a_bad_journal_before_naming_any_photo(tree, tmp_path, monkeypatch):
    clf, root, _ = tree
    out = tmp_path / "o3.parquet"
    (tmp_path / "o3.parquet.part").write_text('{"image":"x","predictions":[{"category":5}]}\n')

    def no_work(*a, **k):
        raise AssertionError("predicted before the journal was checked")

    monkeypatch.setattr(batch_module, "_name_group", no_work)
    with pytest.raises(ResultsFileError, match="line 1 is not a flowerid result row"):
        predict_to_file(clf, [str(root)], out, progress=False)


def test_csv_cells_a_spreadsheet_would_run_as_formulas_get_a_quote_and_resume_reads_them_back(tmp_path):
    risky = ["=cmd|calc.jpg", "+1.jpg", "-1.jpg", "@x.jpg", "\tt.jpg", "\rr.jpg", "'=quoted.jpg", "'plain.jpg"]
    out = tmp_path / "r.csv"
    pred = {"category": "=cmd|calc", "name": "@SUM(1)", "probability": 1.0}
    record = {"image": "=cmd|calc.jpg", "predictions": [pred]}
    w = open_results(out, top_k=1, extra=["unknown_score"])
    w.write([{**record, "unknown_score": -0.5}, *({"image": n, "error": "-boom"} for n in risky[1:])])
    w.close()
    rows = _read_rows(out)
    assert [r["image"] for r in rows] == ["'" + n for n in risky[:7]] + ["'plain.jpg"]
    assert (rows[0]["category"], rows[0]["name"], rows[0]["unknown_score"]) == ("'=cmd|calc", "'@SUM(1)", "-0.5")
    assert rows[1]["error"] == "'-boom"
    w = open_results(out, top_k=1, extra=["unknown_score"])
    assert len(w.done) == len(risky) and all(n in w.done for n in risky) and "'=cmd|calc.jpg" not in w.done
    w.close()
    out = tmp_path / "r.jsonl"  # JSON Lines keeps the exact text
    w = open_results(out)
    w.write([record])
    w.close()
    assert next(read_jsonl(out)) == record


def test_resuming_with_another_checkpoint_or_top_k_is_refused(tree, trained, tmp_path):
    clf, root, photos = tree
    ckpt = tmp_path / "a.pth"
    ckpt.write_bytes(Path(trained[1].checkpoint_path).read_bytes())
    other = tmp_path / "b.pth"
    other.write_bytes(ckpt.read_bytes() + b"retrained")  # only its digest is read here
    out = tmp_path / "out.jsonl"
    predict_to_file(clf, [photos[0]], out, checkpoint=ckpt, progress=False)
    stamp = json.loads(stamp_path(out).read_text())
    assert stamp["top_k"] == 1 and stamp["checkpoint"] == str(ckpt) and len(stamp["sha256"]) == 64
    with pytest.raises(UsageError, match=r"out\.jsonl was written by checkpoint .*a\.pth \(sha256 [0-9a-f]{12}"):
        predict_to_file(clf, [str(root)], out, checkpoint=other, progress=False)
    with pytest.raises(UsageError, match=r"written with --top-k 1; run with the same --top-k"):
        predict_to_file(clf, [str(root)], out, checkpoint=ckpt, top_k=2, progress=False)
    assert [r["image"] for r in read_jsonl(out)] == [photos[0]]
    moved = tmp_path / "moved.pth"  # the same bytes anywhere are the same model
    moved.write_bytes(ckpt.read_bytes())
    s = predict_to_file(clf, [str(root)], out, checkpoint=moved, progress=False)
    assert s.already == 1 and s.predicted + s.errors == len(photos) - 1
    out.unlink()  # a stamp whose file is gone says nothing: a new run writes its own
    predict_to_file(clf, [photos[0]], out, checkpoint=other, progress=False)
    assert json.loads(stamp_path(out).read_text())["checkpoint"] == str(other)


def test_a_file_from_before_the_stamp_resumes_as_before(tree, trained, tmp_path):
    clf, root, photos = tree
    out = tmp_path / "out.csv"
    predict_to_file(clf, [photos[0]], out, progress=False)  # no checkpoint given: no stamp
    assert not stamp_path(out).exists()
    s = predict_to_file(clf, [str(root)], out, checkpoint=trained[1].checkpoint_path, progress=False)
    assert s.already == 1 and not stamp_path(out).exists()


def test_predict_out_stamps_its_file_with_the_checkpoint(trained, tmp_path):
    from flowerid.apps.cli import main

    data, result = trained
    out = tmp_path / "o.csv"
    args = ["predict", str(data / "valid"), "--out", str(out), "--checkpoint", str(result.checkpoint_path)]
    assert main(args) == 0
    assert json.loads(stamp_path(out).read_text())["sha256"] == file_sha256(result.checkpoint_path)
