"""Runs `flowerid` in a child process with the tiny test backbone, optionally slowed down.

Used by test_interrupt.py to press Ctrl-C at a chosen stage:
    python tests/train_driver.py STAGE MARKER flowerid-args...
STAGE is "features" (decoding in the DataLoader workers and the backbone are slow),
"head" (each head training epoch is slow) or "none". MARKER is a file created once
the slow stage has started.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def main() -> int:
    stage, marker, *argv = sys.argv[1:]
    # A terminal's Ctrl-C, even when the tests run from a background job (whose children start with
    # SIGINT ignored, so Python would never raise KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from flowerid.apps.cli import main as cli_main
    from flowerid.backbones import engines, register_backbone
    from flowerid.data import preprocess
    from flowerid.training import frozen as training
    from tests.conftest import tiny_spec

    register_backbone(tiny_spec(), replace=True)

    def mark() -> None:
        Path(marker).touch()

    if stage == "features":
        load = preprocess.Preprocessing.load

        def slow_load(self, source, max_pixels=None):  # runs in the DataLoader workers, ahead of the engine
            time.sleep(0.01)
            return load(self, source, max_pixels)

        def slowed(engine_call):
            def slow_engine(self, batch):
                mark()
                time.sleep(0.3)
                return engine_call(self, batch)

            return slow_engine

        preprocess.Preprocessing.load = slow_load
        for engine in (engines.TorchEngine, engines.OnnxEngine):  # whichever the run picks
            engine.__call__ = slowed(engine.__call__)
    elif stage == "head":
        evaluate = training.evaluate_head

        def slow_evaluate(*a, **k):
            mark()
            time.sleep(0.25)
            return evaluate(*a, **k)

        training.evaluate_head = slow_evaluate
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
