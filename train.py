"""Heritage entry point: `python train.py data_dir --save_dir DIR --arch NAME --learning_rate LR
--hidden_units N --epochs N [--gpu]`. A thin wrapper over flowerid's library."""

import argparse
import os
import sys

try:
    import flowerid  # noqa: F401
except ImportError:  # a plain checkout: use the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from flowerid.apps.cli import run  # noqa: E402


def main(argv=None) -> int:
    from flowerid.training.config import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(description="Train a flower classifier (heritage interface of flowerid).")
    p.add_argument("data_dir")
    p.add_argument("--save_dir", default=".")
    p.add_argument("--arch", default=None, help=f"backbone (default: {d.arch})")
    p.add_argument("--learning_rate", type=float, default=d.learning_rate)
    p.add_argument("--hidden_units", type=int, default=d.hidden_units)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--gpu", action="store_true", help="train on CUDA (fails if there is none)")
    a = p.parse_args(argv)

    def go(a: argparse.Namespace) -> int:
        from flowerid.training.run import train

        cfg = TrainConfig.from_preset(
            arch=a.arch,
            learning_rate=a.learning_rate,
            hidden_units=a.hidden_units,
            epochs=a.epochs,
            device="cuda" if a.gpu else "cpu",
        )
        train(a.data_dir, a.save_dir, cfg, log=lambda s: print(s, flush=True))
        return 0

    return run(go, a, flag=lambda setting: f"--{setting}")  # its flags keep the underscores: --learning_rate


if __name__ == "__main__":
    sys.exit(main())
