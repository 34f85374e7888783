"""Result files of batch prediction: CSV, JSON Lines or Parquet, written row by row.

A result file names each photo once. Rows go to disk as they are made, so an
interrupted run loses nothing it finished; reopening the file repairs a row that a
killed process left half-written (it is dropped and made again) and lists the
photos already in it, which the next run skips. Parquet cannot be appended to, so
its rows go to a JSON Lines journal beside it (FILE.part) that is folded into the
Parquet file when the writer closes, on Ctrl-C too; a killed run's journal is
folded in by the next one.

Every row is a record in `predict --json`'s schema: {"image", "predictions": [{
"category", "name", "probability"}, ...]} or {"image", "error"}, plus any
per-photo fields a model adds (for instance "known" and "unknown_score"); CSV and
Parquet flatten it into the columns `columns()` lists.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ResultsFileError, UsageError

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
BASE_COLUMNS = ("image", "category", "name", "probability", "error")
# What predict --out adds after `error`: whether the photo looks like anything trained on, and how unlike it is.
PHOTO_FIELDS = ("known", "unknown_score")
_ENC = ("utf-8", "surrogateescape")  # file names that are not UTF-8 keep their bytes

Record = dict[str, Any]


def result_format(path: str | os.PathLike) -> str:
    """'csv', 'jsonl' or 'parquet' from the file name's ending; UsageError for anything else."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise UsageError(f"--out {path}: the file name must end in .csv, .jsonl or .parquet")
    return kind


def columns(top_k: int = 1, extra: Sequence[str] = ()) -> list[str]:
    """The flat columns of CSV and Parquet: the first prediction, any extra fields, then the 2nd..k-th."""
    cols = [*BASE_COLUMNS, *extra]
    for k in range(2, top_k + 1):
        cols += [f"category_{k}", f"name_{k}", f"probability_{k}"]
    return cols


def flatten(record: Record, top_k: int = 1, extra: Sequence[str] = ()) -> dict[str, Any]:
    """One record as a flat row; an error row has only image and error."""
    row: dict[str, Any] = dict.fromkeys(columns(top_k, extra))
    row["image"] = record["image"]
    row["error"] = record.get("error")
    for name in extra:
        row[name] = record.get(name)
    for k, pred in enumerate(record.get("predictions") or [], 1):
        if k > top_k:
            break
        suffix = "" if k == 1 else f"_{k}"
        row[f"category{suffix}"] = pred["category"]
        row[f"name{suffix}"] = pred["name"]
        row[f"probability{suffix}"] = pred["probability"]
    return row


def printable(text: str) -> str:
    """A file name that is not UTF-8 with its odd bytes as \\xNN: Parquet strings must be UTF-8."""
    return text.encode(*_ENC).decode("utf-8", "backslashreplace")


def image_key(image: str) -> int:
    """A 64-bit digest of a photo's name (as `printable` writes it): what the done set keeps, 8 bytes a photo."""
    return int.from_bytes(hashlib.blake2b(printable(image).encode("utf-8"), digest_size=8).digest(), "little")


class DoneSet:
    """The photos a result file already holds, as sorted 64-bit digests: 8 MB per million photos."""

    def __init__(self) -> None:
        self._sorted = np.zeros(0, dtype=np.uint64)
        self._recent: set[int] = set()

    def add(self, image: str) -> None:
        self._recent.add(image_key(image))
        if len(self._recent) >= 65536:
            self._compact()

    def _compact(self) -> None:
        new = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
        self._sorted = np.union1d(self._sorted, new)
        self._recent.clear()

    def frozen(self) -> DoneSet:
        """A copy that later additions leave alone; it shares the sorted array (never changed in place)."""
        self._compact()
        copy = DoneSet()
        copy._sorted = self._sorted
        return copy

    def __contains__(self, image: str) -> bool:
        key = image_key(image)
        if key in self._recent:
            return True
        i = int(np.searchsorted(self._sorted, np.uint64(key)))
        return i < len(self._sorted) and int(self._sorted[i]) == key

    def __len__(self) -> int:
        self._compact()
        return len(self._sorted)


def _json_line(record: Record) -> bytes:
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a name that is not UTF-8: \u escapes read back as the same name
        return (json.dumps(record) + "\n").encode("ascii")


def _complete_lines(path: Path) -> Iterator[tuple[bytes, int]]:
    """Each complete line of a file with the offset just after it (a last line without its newline is not)."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield line, offset


def _repair(path: Path, good_end: int) -> None:
    """Cut off what a killed writer left after the last complete row."""
    if path.exists() and path.stat().st_size > good_end:
        with open(path, "r+b") as f:
            f.truncate(good_end)


def _first_line(path: Path) -> tuple[bytes, bool]:
    """The file's first line (at most 64 KiB of it, newline cut off) and whether it ends in a newline."""
    with open(path, "rb") as f:
        line = f.readline(65536)
    whole = line.endswith(b"\n")
    return line.rstrip(b"\r\n") if whole else line, whole


def _not_ours(path: Path, what: str) -> ResultsFileError:
    return ResultsFileError(f"{path} exists and is not a flowerid results file ({what}); choose another --out")


_JSONL_START = b'{"image": '


def _check_jsonl_start(path: Path) -> None:
    """Refuse a non-empty file whose first line is not a result row, before anything is cut from it.

    A complete first line must be a record with an "image" field; one without its newline (a writer
    killed at once) must begin as flowerid writes rows.
    """
    line, whole = _first_line(path)
    if whole:
        try:
            record = json.loads(line.decode(*_ENC))
        except ValueError:
            record = None
        ours = isinstance(record, dict) and isinstance(record.get("image"), str)
    else:
        ours = line.startswith(_JSONL_START) or _JSONL_START.startswith(line)
    if not ours:
        raise _not_ours(path, 'its first line is not a JSON record with an "image" field')


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _row_problem(record: object) -> str | None:
    """What keeps a JSON value from being a result row that every format can write, or None.

    Checked as rows are read, so a hand-edited journal or part file is refused before any photo
    is named, not with a KeyError when its rows are folded in at the end.
    """
    if not isinstance(record, dict):
        return "it is not a JSON object"
    if not isinstance(record.get("image"), str):
        return 'its "image" is not text'
    if record.get("error") is not None and not isinstance(record["error"], str):
        return 'its "error" is not text'
    if record.get("known") is not None and not isinstance(record["known"], bool):
        return 'its "known" is not true or false'
    if record.get("unknown_score") is not None and not _number(record["unknown_score"]):
        return 'its "unknown_score" is not a number'
    preds = record.get("predictions")
    if preds is None:
        return None
    if not isinstance(preds, list):
        return 'its "predictions" is not a list'
    for k, pred in enumerate(preds, 1):
        if not isinstance(pred, dict):
            return f"its prediction {k} is not an object"
        for key in ("category", "name", "probability"):
            if key not in pred:
                return f'its prediction {k} lacks "{key}"'
        if not isinstance(pred["category"], str) or not (pred["name"] is None or isinstance(pred["name"], str)):
            return f'its prediction {k} has a "category" or "name" that is not text'
        if not _number(pred["probability"]):
            return f'its prediction {k} has a "probability" that is not a number'
    return None


def read_jsonl(path: Path, repair: bool = False) -> Iterator[Record]:
    """The complete records of a JSON Lines result file; with `repair`, a half-written last line is cut off."""
    end = 0
    for n, (line, offset) in enumerate(_complete_lines(path), 1):
        end = offset
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode(*_ENC))
        except ValueError:
            problem: str | None = "it is not JSON"
        else:
            problem = _row_problem(record)
        if problem:
            raise ResultsFileError(
                f"{path} line {n} is not a flowerid result row ({problem}); fix or remove it, or write to another --out"
            )
        yield record
    if repair:
        _repair(path, end)


class JsonlWriter:
    """Records appended as JSON Lines, each batch flushed to the file as soon as it is written."""

    def __init__(self, path: str | os.PathLike, done: DoneSet | None = None) -> None:
        self.path = Path(path)
        self.done = done if done is not None else DoneSet()
        if self.path.exists():
            _check_jsonl_start(self.path)
            for record in read_jsonl(self.path, repair=True):
                self.done.add(record["image"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab")  # noqa: SIM115 (kept open for the run; closed by close())

    def write(self, records: Iterable[Record]) -> None:
        for record in records:
            self._f.write(_json_line(record))
            self.done.add(record["image"])
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection"); category
# names come from whoever trained the checkpoint, so such text gets a leading ' in CSV files only.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _defused(text: str) -> str:
    """Text as a CSV cell: ' before a formula start, and before text that would read back as one
    (a ' then a formula start), so `_undefused` gives back exactly the text."""
    return "'" + text if text.lstrip("'").startswith(_FORMULA_START) else text


def _undefused(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell.lstrip("'").startswith(_FORMULA_START) else cell


def _csv_text(row: dict[str, Any]) -> list[str]:
    return [
        "" if v is None else repr(v) if isinstance(v, float) else _defused(v) if isinstance(v, str) else str(v)
        for v in row.values()
    ]


class _CsvLines:
    """A CSV file's lines as text for csv.reader, counting lines and bytes so a record's end is known.

    Files written before rows holding a bare "\r" were quoted have it unquoted, which the csv module
    refuses; such a line is read with it as NUL, which no file name can hold, and `swapped` says so.
    """

    def __init__(self, f: io.BufferedReader) -> None:
        self.f = f
        self.offset = 0  # just after the last line handed out
        self.line = 0  # its number, from 1
        self.last = b""
        self.eof = False
        self.swapped = False

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        raw = self.f.readline()
        if not raw:
            self.eof = True
            raise StopIteration
        self.offset += len(raw)
        self.line += 1
        self.last = raw
        text = raw.decode(*_ENC)
        body = text.rstrip("\r\n")
        if "\r" in body and "\0" not in text:
            self.swapped = True
            text = body.replace("\r", "\0") + text[len(body) :]
        return text


def _unreadable(path: Path, line: int) -> ResultsFileError:
    return ResultsFileError(f"{path} line {line} cannot be read as CSV; fix or remove it, or write to another --out")


def _csv_records(path: Path) -> Iterator[tuple[list[str], int]]:
    """Each complete record of a CSV result file (the header first) with the offset just after it.

    The csv module finds where records end, as any reader of the file will: a quote opens a quoted
    field only at a field's start, so a stray quote typed inside a field is text, and never swallows
    the rows after it. A record of the wrong width (a quote that did swallow rows) is refused with its
    line. A record left open at the end is what a killed writer leaves and is not yielded, unless it
    holds whole rows after its first line: then it is a hand edit, and refused.
    """
    with open(path, "rb") as f:
        lines = _CsvLines(f)
        reader = csv.reader(lines)
        width = None
        while True:
            start, start_offset, lines.swapped = lines.line + 1, lines.offset, False
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error:
                raise _unreadable(path, start) from None
            if lines.eof or not lines.last.endswith(b"\n"):  # open at the end of the file
                if lines.eof and width is not None and _holds_rows(path, start_offset, width):
                    raise _unreadable(path, start)
                return
            if lines.swapped:
                fields = [v.replace("\0", "\r") for v in fields]
            fields = [_undefused(v) for v in fields]
            if width is None:
                width = len(fields)
            elif fields and len(fields) != width:
                raise _unreadable(path, start)
            yield fields, lines.offset


def _holds_rows(path: Path, offset: int, width: int) -> bool:
    """Whether a quoted field open at the end of the file holds rows (a typed quote) rather than part of a
    name (a killed writer): it ends in a line break, or a later line is a whole row by itself."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read().decode(*_ENC)
    if tail.endswith("\n"):
        return True
    for line in tail.split("\n")[1:]:
        try:
            if len(next(csv.reader([line.replace("\r", "\0")]), [])) == width:
                return True
        except csv.Error:
            pass
    return False


class CsvWriter:
    """Flat rows appended to a CSV file with a header line; a file with other columns is refused."""

    def __init__(
        self, path: str | os.PathLike, top_k: int = 1, extra: Sequence[str] = (), done: DoneSet | None = None
    ) -> None:
        self.path = Path(path)
        self.top_k, self.extra = top_k, tuple(extra)
        self.cols = columns(top_k, extra)
        self.done = done if done is not None else DoneSet()
        header_written = self.path.exists() and self._check_start() and self._read_existing()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._raw = open(self.path, "ab")  # noqa: SIM115 (kept open for the run; closed by close())
        self._f = io.TextIOWrapper(self._raw, encoding=_ENC[0], errors=_ENC[1], newline="", write_through=True)
        self._csv = csv.writer(self._f, lineterminator="\n")
        # With "\n" as line end the csv module leaves a bare "\r" unquoted (Python 3.11), which readers
        # take for a line break; a row holding one is written with every field quoted.
        self._csv_quoted = csv.writer(self._f, lineterminator="\n", quoting=csv.QUOTE_ALL)
        if not header_written:
            self._csv.writerow(self.cols)
            self._f.flush()

    def _check_start(self) -> bool:
        """Refuse a non-empty file whose first line is not a results header; True when there is one to read.

        A first line without its newline is a header cut short by a killed writer only if it begins ours.
        """
        line, whole = _first_line(self.path)
        ours = ",".join(BASE_COLUMNS).encode()
        if line.startswith(ours) or (not whole and ours.startswith(line)):
            return True
        raise _not_ours(self.path, f"its first line is not the header {','.join(self.cols)}")

    def _read_existing(self) -> bool:
        """Collect the photos the file holds, cut a half-written last row; False when it has no header yet."""
        end, header = 0, None
        for fields, offset in _csv_records(self.path):
            end = offset
            if header is None:
                header = fields
                if header != self.cols:
                    raise UsageError(
                        f"{self.path} holds results with other columns ({', '.join(header[:8])}"
                        f"{', …' if len(header) > 8 else ''}); run with the same --top-k as before, "
                        "or give --out another file"
                    )
            elif fields:
                self.done.add(fields[0])
        _repair(self.path, end)
        return header is not None

    def write(self, records: Iterable[Record]) -> None:
        for record in records:
            fields = _csv_text(flatten(record, self.top_k, self.extra))
            (self._csv_quoted if any("\r" in f for f in fields) else self._csv).writerow(fields)
            self.done.add(record["image"])
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def require_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(
            "writing .parquet needs pyarrow: pip install 'flowerid[parquet]' (or give --out a .csv or .jsonl file)"
        ) from None
    return pa, pq


class ParquetWriter:
    """Rows journaled as JSON Lines in FILE.part, folded into the Parquet file FILE on close."""

    CHUNK = 8192  # rows per Parquet row group when folding

    def __init__(
        self, path: str | os.PathLike, top_k: int = 1, extra: Sequence[str] = (), done: DoneSet | None = None
    ) -> None:
        self.pa, self.pq = require_pyarrow()
        self.path = Path(path)
        self.top_k, self.extra = top_k, tuple(extra)
        self.cols = columns(top_k, extra)
        self.done = done if done is not None else DoneSet()
        if self.path.exists() and self.path.stat().st_size:  # an empty file is replaced on close
            self._check_schema()
            read_done(self.path, self.done)
        self.journal = JsonlWriter(journal_path(self.path), self.done)

    def _schema(self):
        pa = self.pa
        return pa.schema([(c, _arrow_type(pa, c)) for c in self.cols])

    def _check_schema(self) -> None:
        try:
            names = self.pq.read_schema(self.path).names
        except Exception:  # pyarrow raises several kinds on bytes that are not Parquet
            raise _not_ours(self.path, "it is not a Parquet file") from None
        if names[: len(BASE_COLUMNS)] != list(BASE_COLUMNS):
            raise _not_ours(self.path, f"its columns do not begin {', '.join(BASE_COLUMNS)}")
        if names != self.cols:
            raise UsageError(
                f"{self.path} holds results with other columns; run with the same --top-k as before, "
                "or give --out another file"
            )

    def write(self, records: Iterable[Record]) -> None:
        self.journal.write(records)

    def close(self) -> None:
        """Fold the journal into the Parquet file: old row groups, then the journal's rows; atomically."""
        self.journal.close()
        journal = self.journal.path
        pa, pq = self.pa, self.pq
        schema = self._schema()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with pq.ParquetWriter(tmp, schema) as out:
            if self.path.exists() and self.path.stat().st_size:
                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.CHUNK):
                    out.write_batch(batch.cast(schema) if batch.schema != schema else batch)
            rows: list[dict[str, Any]] = []
            for record in read_jsonl(journal):
                row = flatten(record, self.top_k, self.extra)
                for c, v in row.items():  # text as UTF-8; a field of a type the schema lacks as text
                    if v is not None and _arrow_type(pa, c) == pa.string():
                        row[c] = printable(str(v))
                rows.append(row)
                if len(rows) >= self.CHUNK:
                    out.write_table(pa.Table.from_pylist(rows, schema))
                    rows.clear()
            if rows:
                out.write_table(pa.Table.from_pylist(rows, schema))
        os.replace(tmp, self.path)
        journal.unlink(missing_ok=True)


def _arrow_type(pa, column: str):
    if column.startswith("probability") or column == "unknown_score":
        return pa.float64()
    return pa.bool_() if column == "known" else pa.string()


def read_done(path: str | os.PathLike, done: DoneSet) -> None:
    """Add the photos a result file names to `done`, reading only: the file is neither checked nor repaired
    (under torchrun the main process opens it for writing first, which does both)."""
    path = Path(path)
    if not path.exists() or not path.stat().st_size:
        return
    kind = result_format(path)
    if kind == "jsonl":
        for record in read_jsonl(path):
            done.add(record["image"])
    elif kind == "csv":
        for n, (fields, _) in enumerate(_csv_records(path)):
            if n and fields:  # the first line is the header
                done.add(fields[0])
    else:
        _, pq = require_pyarrow()
        for batch in pq.ParquetFile(path).iter_batches(columns=["image"]):
            for image in batch.column(0).to_pylist():
                done.add(image)


def journal_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.part")


def open_results(
    path: str | os.PathLike, top_k: int = 1, extra: Sequence[str] = (), done: DoneSet | None = None
) -> JsonlWriter | CsvWriter | ParquetWriter:
    """A writer for FILE by its ending, holding in `.done` every photo FILE already names."""
    kind = result_format(path)
    if kind == "jsonl":
        return JsonlWriter(path, done)
    if kind == "csv":
        return CsvWriter(path, top_k, extra, done)
    return ParquetWriter(path, top_k, extra, done)
