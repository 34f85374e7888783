"""Batch prediction that streams: folders of any size into a CSV, JSON Lines or Parquet file.

Photos are walked in a stable order (data/walk.py) and cut into groups; one stream
per core decodes a group and then names it on its own share of the engine's
threads (Pillow, numpy and ONNX Runtime let go of the GIL while they work, and no
torch is imported), so every core is busy and none waits on another. Groups are
written in walk order, each group's rows flushed to the result file at once
(results.py). What the file already holds is skipped, so an
interrupted run is finished by running the same command again. Memory stays flat:
a bounded number of photos is in flight, and the done set takes 8 bytes a photo.

Under torchrun each process takes every N-th photo of the walk and writes its own
part file (FILE.rank-K.part); the main process folds the parts into FILE after
the others finish. Parts left by an interrupted job are honoured and folded in by
the next run, whatever its number of processes.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import distributed
from .._io import atomic_write_json, file_sha256
from .._numeric import one_blas_thread
from ..backbones.engines import default_threads
from ..data.walk import Warn, iter_photos
from ..errors import ResultsFileError, UsageError
from .predictor import photo_fields
from .results import (
    PHOTO_FIELDS,
    DoneSet,
    JsonlWriter,
    Record,
    open_results,
    read_done,
    read_jsonl,
    require_pyarrow,
    result_format,
)

if TYPE_CHECKING:
    from ..backbones.engines import Engine
    from .predictor import Classifier

Log = Callable[[str], None]


@dataclass
class BatchSummary:
    """What one run did: photos it named, photos that could not be read, photos the file already had."""

    out: Path
    predicted: int = 0
    errors: int = 0
    already: int = 0
    seconds: float = 0.0
    rate: float = 0.0  # photos per second, named or unreadable


def stamp_path(out: str | os.PathLike) -> Path:
    """FILE.flowerid.json: which checkpoint and --top-k wrote FILE, checked when a run resumes it."""
    return Path(f"{os.fspath(out)}.flowerid.json")


def _stamp(checkpoint: str | os.PathLike, top_k: int) -> dict[str, Any]:
    """The checkpoint file's sha256, as `flowerid info` shows it (one read of a few MB, once a run)."""
    return {"checkpoint": os.fspath(checkpoint), "sha256": file_sha256(checkpoint), "top_k": top_k}


def _check_stamp(out: Path, stamp: dict[str, Any]) -> None:
    """Refuse to add one model's rows to a file another model (or another --top-k) began.

    Only a file that already holds rows is checked; one without a stamp (written before stamps, or by
    a library call without `checkpoint`) resumes as it always did.
    """
    path = stamp_path(out)
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        sha, top_k, was = str(old["sha256"]), int(old["top_k"]), str(old.get("checkpoint", "?"))
    except (OSError, ValueError, TypeError, KeyError):
        raise ResultsFileError(
            f"{path} cannot be read; remove it to resume {out} without checking which checkpoint wrote it"
        ) from None
    if sha != stamp["sha256"]:
        raise UsageError(
            f"{out} was written by checkpoint {was} (sha256 {sha[:12]}…); resume with it, or write to another --out"
        )
    if top_k != stamp["top_k"]:
        raise UsageError(
            f"{out} was written with --top-k {top_k}; run with the same --top-k, or write to another --out"
        )


def part_path(out: Path, rank: int) -> Path:
    return Path(f"{os.fspath(out)}.rank-{rank}.part")


def existing_parts(out: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(glob.escape(os.fspath(out)) + ".rank-*.part"))


class _Progress:
    """A tqdm bar on a terminal, its total counted by a background walk so the time left shows early.

    The total leaves out the photos `already` names: a resumed run's bar counts what is left.
    """

    def __init__(self, inputs: Sequence[str], share: tuple[int, int], enabled: bool | None, already: DoneSet) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(desc="predict", unit="img", disable=None if enabled is None else not enabled, smoothing=0.05)
        self._stop = threading.Event()
        self._counter: threading.Thread | None = None
        if not self.bar.disable:
            rank, size = share
            self._counter = threading.Thread(target=self._count, args=(inputs, rank, size, already), daemon=True)
            self._counter.start()

    def _count(self, inputs: Sequence[str], rank: int, size: int, already: DoneSet) -> None:
        n = 0
        for i, image in enumerate(iter_photos(inputs)):
            if self._stop.is_set():
                return
            n += i % size == rank and image not in already
        self.bar.total = n
        self.bar.refresh()

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self, finished: bool) -> None:
        """A finished run's bar ends on its total; an interrupted one stops counting at once."""
        if finished and self._counter is not None:
            self._counter.join()
        self._stop.set()
        self.bar.close()


def _name_group(clf: Classifier, engine: Engine, images: list[str], top_k: int) -> list[Record]:
    """One stream's work: decode a group of photos, then name the readable ones in one engine call."""
    rows, probs, scores, errors = clf.forward_photos(images, engine)
    named = {i: j for j, i in enumerate(rows)}
    out: list[Record] = []
    for i, image in enumerate(images):
        if i in errors:
            out.append({"image": image, "error": errors[i].reason})
        else:
            j = named[i]
            preds = clf.top_k(probs[j], top_k, None if scores is None else scores[j])
            out.append({"image": image, **photo_fields(preds), "predictions": [p.to_dict() for p in preds]})
    return out


def predict_to_file(
    clf: Classifier,
    inputs: Sequence[str],
    out: str | os.PathLike,
    *,
    top_k: int = 1,
    batch_size: int = 8,
    threads: int | None = None,
    progress: bool | None = None,
    warn: Warn | None = None,
    log: Log | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> BatchSummary:
    """Name every photo in `inputs` (files and folders) into `out`, skipping those it already names.

    `checkpoint`, the file `clf` was loaded from, is recorded beside a new `out` (stamp_path) so that
    resuming it with another model is refused rather than mixing two models' answers.

    Under torchrun, call it in every process: each takes its share, and on return
    the main process's `out` holds every photo exactly once. `progress` None shows a
    bar on a terminal only.
    """
    if top_k < 1 or batch_size < 1:
        raise UsageError("--top-k and --batch-size must be at least 1")
    out = Path(out)
    kind = result_format(out)
    if kind == "parquet":
        require_pyarrow()  # said before any work
    w = distributed.init(getattr(clf, "device", "cpu"))
    t0 = time.perf_counter()
    done = DoneSet()
    if w.distributed:
        if w.is_main:
            # Repair FILE (fold a Parquet journal) before the others read it.
            open_results(out, top_k, PHOTO_FIELDS).close()
        distributed.barrier()
        read_done(out, done)
        writer: Any = JsonlWriter(part_path(out, w.rank), done)
    else:
        writer = open_results(out, top_k, PHOTO_FIELDS, done)
    for part in existing_parts(out):
        if part != part_path(out, w.rank):
            for record in read_jsonl(part):
                done.add(record["image"])
    if checkpoint is not None:
        try:
            stamp = _stamp(checkpoint, top_k)
            if len(done):
                _check_stamp(out, stamp)
            elif w.is_main:
                atomic_write_json(stamp_path(out), stamp)
        except BaseException:
            writer.close()
            raise
    distributed.barrier()  # every process knows what is done before any writes more
    summary = BatchSummary(out)
    streams = max(1, threads or default_threads())
    engine = clf.backbone.engine.for_streams(streams)
    pool = ThreadPoolExecutor(streams, thread_name_prefix="predict")
    bar = _Progress(inputs, (w.rank, w.size), progress if w.is_main else False, done.frozen())
    photos = (p for i, p in enumerate(iter_photos(inputs, warn)) if i % w.size == w.rank)
    inflight: deque[Future[list[Record]]] = deque()
    finished = False
    try:

        def submit() -> bool:
            """Queue the next group of photos FILE lacks; False when the walk is over."""
            group: list[str] = []
            for image in photos:
                if image in done:
                    summary.already += 1
                    continue
                group.append(image)
                if len(group) >= batch_size:
                    break
            if group:
                inflight.append(pool.submit(_name_group, clf, engine, group, top_k))
            return bool(group)

        with one_blas_thread():
            more = True
            while more and len(inflight) < 2 * streams:
                more = submit()
            while inflight:
                records = inflight.popleft().result()  # in walk order, whichever stream finished first
                if more:
                    more = submit()
                writer.write(records)
                summary.errors += sum("error" in r for r in records)
                summary.predicted += sum("error" not in r for r in records)
                bar.update(len(records))
        finished = True
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close(finished)
        writer.close()
    # The job's totals on every process (this also waits for all to finish), then the parts fold into FILE.
    summary.predicted, summary.errors, summary.already = (
        int(v) for v in distributed.all_sum([summary.predicted, summary.errors, summary.already])
    )
    if w.is_main:
        _fold_parts(out, top_k, log)
    summary.seconds = time.perf_counter() - t0
    summary.rate = (summary.predicted + summary.errors) / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _fold_parts(out: Path, top_k: int, log: Log | None) -> None:
    """Append every part file's rows that FILE lacks into FILE, then remove the parts.

    A row already in FILE (a fold cut short by a crash) is not appended twice.
    """
    parts = existing_parts(out)
    if not parts:
        return
    writer = open_results(out, top_k, PHOTO_FIELDS)
    try:
        for part in parts:
            batch: list[Record] = []
            for record in read_jsonl(part, repair=True):
                if record["image"] not in writer.done:
                    batch.append(record)
                    writer.done.add(record["image"])
                if len(batch) >= 1024:
                    writer.write(batch)
                    batch = []
            writer.write(batch)
    finally:
        writer.close()
    for part in parts:
        part.unlink(missing_ok=True)
    if log:
        log(f"merged {len(parts)} part file{'s' if len(parts) != 1 else ''} into {out}")
