"""Heritage entry point: `python predict.py image checkpoint --top_k K --category_names JSON [--gpu]`.
A thin wrapper over flowerid's library."""

import argparse
import os
import sys

try:
    import flowerid  # noqa: F401
except ImportError:  # a plain checkout: use the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from flowerid.apps.cli import run  # noqa: E402
from flowerid.apps.printing import format_predictions  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Name the flower in a photo (heritage interface of flowerid).")
    p.add_argument("image")
    p.add_argument("checkpoint")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--category_names", default=None)
    p.add_argument("--gpu", action="store_true", help="predict on CUDA (fails if there is none)")
    a = p.parse_args(argv)

    def go(a: argparse.Namespace) -> int:
        from flowerid.errors import UsageError
        from flowerid.model.predictor import Classifier

        if a.top_k < 1:
            raise UsageError("--top_k must be at least 1")
        clf = Classifier.load(a.checkpoint, device="cuda" if a.gpu else "cpu", category_names=a.category_names)
        preds = clf.predict(a.image, top_k=a.top_k)
        print(format_predictions(a.image, [x.to_dict() for x in preds]))
        return 0

    return run(go, a)


if __name__ == "__main__":
    sys.exit(main())
