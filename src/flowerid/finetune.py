"""Partial fine-tuning that stays cheap on a CPU: the last stages of an EfficientNet train with the head.

The frozen front of the network runs once per photo, up to the first tuned stage, and
its activations stay in memory (float16). An epoch then costs only the tuned stages:
for EfficientNet-Lite0's last stage, about 7 s over the 6552 flower photos on 2 cores,
against about 90 s for the one pass through the front. BatchNorm keeps its ImageNet
statistics (one data set's batches are too small to re-estimate them), the pretrained
stages learn at a lower rate than the new head, and a random mirror of the activation
maps stands in for photo flips. The tuned network is saved beside the checkpoint as a
plain state dict, so prediction, exports and the ONNX engine treat it like any
backbone with local weights.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._io import atomic_write_bytes
from .config import TrainConfig
from .data import ImageFolder
from .engines import Backbone
from .errors import UsageError
from .features import extract_features
from .model import HeadConfig, build_head
from .registry import BackboneSpec
from .schedule import warmup_cosine

Log = Callable[[str], None]
BACKBONE_FILE = "backbone.pth"
TAIL_LR_FACTOR = 1.0 / 3.0  # the pretrained stages learn at a third of the head's rate


def split_backbone(module: nn.Module, spec: BackboneSpec, stages: int) -> tuple[nn.Module, nn.Module]:
    """(front, tail) sharing the module's layers; the tail is the last `stages` stages, conv_head and pooling."""
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not all(hasattr(module, a) for a in ("conv_stem", "conv_head")):
        raise UsageError(
            f"--tune-stages needs a single EfficientNet backbone (efficientnet_lite0/1/2, efficientnet_b0); "
            f"{spec.name} is not one"
        )
    if not 1 <= stages <= len(blocks):
        raise UsageError(f"--tune-stages must be 0 (frozen) to {len(blocks)} for {spec.name}")
    cut = len(blocks) - stages
    front = nn.Sequential(module.conv_stem, module.bn1, *blocks[:cut])
    tail = nn.Sequential(*blocks[cut:], module.conv_head, module.bn2, module.global_pool)
    return front, tail


def front_activations(
    split: ImageFolder, front: nn.Module, spec: BackboneSpec, digest: str, cfg: TrainConfig, name: str
) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
    """(activations float16, labels, failures by index) of the frozen front, through the one input pipeline."""
    front = front.eval().to(memory_format=torch.channels_last)
    size = spec.input_size
    with torch.inference_mode():
        shape = tuple(front(torch.zeros(1, 3, size, size)).shape[1:])

    def engine(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return front(x).reshape(len(batch), -1).numpy()

    cut_spec = dataclasses.replace(spec, num_features=int(np.prod(shape)))
    ex = extract_features(
        split.paths,
        Backbone(cut_spec, digest, engine),
        use_cache=False,  # activations are large; they live for this run only
        num_workers=cfg.num_workers,
        desc=f"{name} activations",
    )
    keep = np.flatnonzero(ex.ok)
    x = torch.from_numpy(ex.features[keep]).reshape(-1, *shape).half()
    y = torch.as_tensor(np.asarray(split.targets, dtype=np.int64)[keep])
    return x, y, ex.failures


def _freeze_batchnorm(tail: nn.Module) -> None:
    for m in tail.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.requires_grad_(False)


def fit_tail(
    tail: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_valid: torch.Tensor,
    y_valid: torch.Tensor,
    head_cfg: HeadConfig,
    cfg: TrainConfig,
    device: str,
    log: Log = print,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[dict[str, float]], int]:
    """Train tail + head with AdamW (warm-up epoch, cosine); keep the epoch best on valid.

    Returns the best tail state, the best head state, the history and the best epoch (1-based).
    """
    from .training import EpochStats

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = build_head(head_cfg).to(device)
    tail = tail.to(device)
    tail.requires_grad_(True)  # the registry hands out frozen backbones
    _freeze_batchnorm(tail)
    tail_params = [p for p in tail.parameters() if p.requires_grad]
    rates = [cfg.learning_rate * TAIL_LR_FACTOR, cfg.learning_rate]
    opt = torch.optim.AdamW(
        [{"params": tail_params, "lr": rates[0]}, {"params": list(head.parameters()), "lr": rates[1]}],
        weight_decay=cfg.weight_decay,
    )
    n = len(y_train)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))

    def scale(step: int) -> float:
        return warmup_cosine(step, steps_per_epoch, cfg.epochs)

    # Mixed precision where a GPU runs it (bfloat16 needs no loss scaling); float32 on a CPU.
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))

    def forward(x: torch.Tensor) -> torch.Tensor:
        with amp:
            return head(tail(x.to(device).float().contiguous(memory_format=torch.channels_last))).float()

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        tail.eval()
        head.eval()
        logits = torch.cat([forward(x_valid[i : i + 256]) for i in range(0, len(y_valid), 256)]).cpu()
        return F.cross_entropy(logits, y_valid).item(), (logits.argmax(1) == y_valid).float().mean().item()

    history: list[EpochStats] = []
    best = (-1.0, float("inf"))
    best_tail: dict[str, torch.Tensor] = {}
    best_head: dict[str, torch.Tensor] = {}
    best_epoch, step = 0, 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        tail.train()
        head.train()
        _freeze_batchnorm(tail)
        order = torch.randperm(n, generator=gen)
        run_loss, run_correct = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x = x_train[idx]
            mirror = torch.rand(len(idx), generator=gen) < 0.5
            x[mirror] = x[mirror].flip(-1)
            y = y_train[idx].to(device)
            for group, rate in zip(opt.param_groups, rates, strict=True):
                group["lr"] = rate * scale(step)
            logits = forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            run_loss += loss.item() * len(idx)
            run_correct += (logits.argmax(1) == y).sum().item()
        v_loss, v_acc = evaluate()
        stats = EpochStats(
            epoch, run_loss / n, run_correct / n, v_loss, v_acc, rates[1] * scale(step - 1), time.perf_counter() - t0
        )
        history.append(stats)
        improved = (v_acc, -v_loss) > (best[0], -best[1])
        if improved:
            best, best_epoch = (v_acc, v_loss), epoch
            best_tail = copy.deepcopy({k: v.detach().cpu() for k, v in tail.state_dict().items()})
            best_head = copy.deepcopy({k: v.detach().cpu() for k, v in head.state_dict().items()})
        log(
            f"epoch {epoch:3d}/{cfg.epochs}  train loss {stats.train_loss:.4f}  acc {stats.train_acc:6.2%}  "
            f"valid loss {v_loss:.4f}  acc {v_acc:6.2%}{'  *' if improved else ''}"
        )
    tail.load_state_dict(best_tail)
    return best_tail, best_head, [dataclasses.asdict(h) for h in history], best_epoch


@torch.no_grad()
def tail_logits(tail: nn.Module, head: nn.Module, x: torch.Tensor, device: str) -> torch.Tensor:
    tail.eval()
    head.eval()
    out = [
        head(tail(x[i : i + 256].to(device).float().contiguous(memory_format=torch.channels_last)))
        for i in range(0, len(x), 256)
    ]
    return torch.cat(out).cpu()


def save_backbone(module: nn.Module, save_dir: Path) -> Path:
    """The whole tuned feature extractor as a plain state dict beside the checkpoint, written atomically."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return atomic_write_bytes(save_dir / BACKBONE_FILE, buf.getvalue())


BACKBONE_LR_FACTOR = 0.1  # full fine-tuning: the pretrained network at a tenth of the head's rate


def fit_full(
    module: nn.Module,
    head_cfg: HeadConfig,
    train: ImageFolder,
    valid: ImageFolder,
    spec: BackboneSpec,
    cfg: TrainConfig,
    device: str,
    skipped: dict[str, str],
    log: Log = print,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]], int, torch.Tensor, torch.Tensor]:
    """Full fine-tuning, for a GPU: every layer trains on freshly augmented photos each epoch.

    AdamW with the backbone at a tenth of the head's rate, one warm-up epoch then cosine,
    bfloat16 autocast on CUDA, BatchNorm in training mode. The module is left holding
    the best epoch's weights. Returns the best head state, the history, the best epoch,
    and the best epoch's valid logits and labels (for calibration).
    """
    from tqdm.auto import tqdm

    from .augment import Augment
    from .features import _collate, _PhotoDataset, _worker_init, default_workers
    from .training import EpochStats

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    module = module.to(device).to(memory_format=torch.channels_last)
    module.requires_grad_(True)
    head = build_head(head_cfg).to(device)
    rates = [cfg.learning_rate * BACKBONE_LR_FACTOR, cfg.learning_rate]
    opt = torch.optim.AdamW(
        [{"params": list(module.parameters()), "lr": rates[0]}, {"params": list(head.parameters()), "lr": rates[1]}],
        weight_decay=cfg.weight_decay,
    )
    workers = default_workers() if cfg.num_workers is None else cfg.num_workers
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    y_train = torch.as_tensor(np.asarray(train.targets, dtype=np.int64))
    y_valid_all = torch.as_tensor(np.asarray(valid.targets, dtype=np.int64))

    def loader(split: ImageFolder, view: int, shuffle: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            _PhotoDataset(split.paths, spec.preprocessing, Augment() if view else None, view),
            batch_size=cfg.batch_size,
            shuffle=shuffle,
            generator=gen if shuffle else None,
            num_workers=workers,
            collate_fn=_collate,
            worker_init_fn=_worker_init if workers else None,
        )

    steps_per_epoch = max(1, math.ceil(len(train.paths) / cfg.batch_size))

    def scale(step: int) -> float:
        return warmup_cosine(step, steps_per_epoch, cfg.epochs)

    def forward(batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
        with amp:
            return head(module(x)).float()

    history: list[EpochStats] = []
    best = (-1.0, float("inf"))
    best_module: dict[str, torch.Tensor] = {}
    best_head: dict[str, torch.Tensor] = {}
    best_logits, best_labels = torch.empty(0), torch.empty(0, dtype=torch.long)
    best_epoch, step = 0, 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        module.train()
        head.train()
        run_loss, run_correct, seen = 0.0, 0, 0
        # View `epoch` of every photo: a fresh, repeatable augmentation each epoch.
        with tqdm(total=len(train.paths), desc=f"epoch {epoch}", unit="img", disable=None, leave=False) as bar:
            for idx, batch, failed in loader(train, epoch, shuffle=True):
                skipped.update({str(train.paths[j]): reason for j, reason in failed})
                bar.update(len(idx) + len(failed))
                if batch is None:
                    continue
                for group, rate in zip(opt.param_groups, rates, strict=True):
                    group["lr"] = rate * scale(step)
                y = y_train[idx].to(device)
                logits = forward(batch)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                run_loss += loss.item() * len(idx)
                run_correct += (logits.argmax(1) == y).sum().item()
                seen += len(idx)
        module.eval()
        head.eval()
        outs, labels = [], []
        with torch.no_grad():
            for idx, batch, failed in loader(valid, 0, shuffle=False):
                skipped.update({str(valid.paths[j]): reason for j, reason in failed})
                if batch is not None:
                    outs.append(forward(batch).cpu())
                    labels.append(y_valid_all[idx])
        if not outs or not seen:
            raise UsageError("no readable photos left to fine-tune on; run `flowerid check` on the data")
        logits_va, y_va = torch.cat(outs), torch.cat(labels)
        v_loss = F.cross_entropy(logits_va, y_va).item()
        v_acc = (logits_va.argmax(1) == y_va).float().mean().item()
        stats = EpochStats(
            epoch,
            run_loss / seen,
            run_correct / seen,
            v_loss,
            v_acc,
            rates[1] * scale(step - 1),
            time.perf_counter() - t0,
        )
        history.append(stats)
        improved = (v_acc, -v_loss) > (best[0], -best[1])
        if improved:
            best, best_epoch = (v_acc, v_loss), epoch
            best_module = copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
            best_head = copy.deepcopy({k: v.detach().cpu() for k, v in head.state_dict().items()})
            best_logits, best_labels = logits_va, y_va
        log(
            f"epoch {epoch:3d}/{cfg.epochs}  train loss {stats.train_loss:.4f}  acc {stats.train_acc:6.2%}  "
            f"valid loss {v_loss:.4f}  acc {v_acc:6.2%}{'  *' if improved else ''}  ({stats.seconds:.0f}s)"
        )
    module.load_state_dict(best_module)
    return best_head, [dataclasses.asdict(h) for h in history], best_epoch, best_logits, best_labels
