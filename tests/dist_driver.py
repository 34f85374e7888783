"""Runs `flowerid` with the tiny test backbone in each process of a torchrun job (or alone).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_driver.py flowerid-args...

With FLOWERID_TEST_LOADS=DIR every photo a process (or its decode workers) reads for
features is logged, one line per read, in DIR/<pid>.log, so a test can check that
each photo was read exactly once across the job. With FLOWERID_TEST_CRASH_RANK=K the
process of rank K fails after its first batch of features, as a crashed process would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def main() -> int:
    from flowerid.apps.cli import main as cli_main
    from flowerid.backbones import engines, register_backbone
    from flowerid.data import preprocess
    from tests.conftest import tiny_spec

    register_backbone(tiny_spec(), replace=True)
    from tests.training.test_finetune import register_effnet_pair

    register_effnet_pair()  # a tiny EfficientNet and a pair of them, for --tune-stages and --full-finetune
    folder = os.environ.get("FLOWERID_TEST_LOADS")
    if folder:
        load = preprocess.Preprocessing.load

        def logged_load(self, source, max_pixels=None):
            line = os.fsencode(os.fspath(source)).replace(b"\n", b"\\n") + b"\n"
            fd = os.open(Path(folder) / f"{os.getpid()}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            return load(self, source, max_pixels)

        preprocess.Preprocessing.load = logged_load
    crash = os.environ.get("FLOWERID_TEST_CRASH_RANK")
    if crash is not None and os.environ.get("RANK") == crash:  # this process fails after its first batch
        calls = []
        real = engines.OnnxEngine.__call__

        def failing(self, batch):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("simulated crash")
            return real(self, batch)

        engines.OnnxEngine.__call__ = failing
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
