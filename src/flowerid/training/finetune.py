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

from .._io import atomic_write_bytes
from ..backbones import BackboneSpec
from ..backbones.engines import Backbone
from ..backbones.features import extract_features
from ..data.folders import ImageFolder
from ..errors import UsageError
from ..model.head import HeadConfig, build_head
from .config import TrainConfig
from .schedule import warmup_cosine

Log = Callable[[str], None]
BACKBONE_FILE = "backbone.pth"
TAIL_LR_FACTOR = 1.0 / 3.0  # the pretrained stages learn at a third of the head's rate
BACKBONE_LR_FACTOR = 0.1  # full fine-tuning: the pretrained network at a tenth of the head's rate


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


def _optimizer(backbone: list[nn.Parameter], head: nn.Module, cfg: TrainConfig, factor: float):
    """AdamW with two rates, the pretrained part's `factor` times the head's; returns it and the rates."""
    rates = [cfg.learning_rate * factor, cfg.learning_rate]
    groups = [{"params": backbone, "lr": rates[0]}, {"params": list(head.parameters()), "lr": rates[1]}]
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay), rates


def _step(
    opt: torch.optim.Optimizer,
    rates: list[float],
    factor: float,
    logits: torch.Tensor,
    y: torch.Tensor,
    label_smoothing: float,
) -> tuple[float, int]:
    """One optimiser step at `factor` of the peak rates; returns the batch's summed loss and correct count."""
    for group, rate in zip(opt.param_groups, rates, strict=True):
        group["lr"] = rate * factor
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item() * len(y), int((logits.argmax(1) == y).sum().item())


class _Best:
    """The best epoch so far (valid accuracy, ties to the lower loss), with CPU copies of what to keep."""

    def __init__(self) -> None:
        self.key = (-1.0, -float("inf"))
        self.epoch = 0
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.logits = torch.empty(0)
        self.labels = torch.empty(0, dtype=torch.long)

    def offer(
        self, epoch: int, logits: torch.Tensor, labels: torch.Tensor, **modules: nn.Module
    ) -> tuple[float, float, bool]:
        """Score an epoch's valid logits; keep it when it is the best. Returns (loss, accuracy, improved)."""
        loss = F.cross_entropy(logits, labels).item()
        acc = (logits.argmax(1) == labels).float().mean().item()
        if (acc, -loss) <= self.key:
            return loss, acc, False
        self.key, self.epoch, self.logits, self.labels = (acc, -loss), epoch, logits, labels
        self.states = {
            name: copy.deepcopy({k: v.detach().cpu() for k, v in m.state_dict().items()}) for name, m in modules.items()
        }
        return loss, acc, True


# Mixed precision where a GPU runs it (bfloat16 needs no loss scaling); float32 on a CPU.
def _autocast(device: str) -> torch.autocast:
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))


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
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]], int, torch.Tensor]:
    """Train tail + head with AdamW (warm-up epoch, cosine); keep the epoch best on valid.

    The tail is left holding the best epoch's weights. Returns the best head state, the
    history, the best epoch (1-based) and that epoch's valid logits (for calibration).
    """
    from .run import EpochStats

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = build_head(head_cfg).to(device)
    tail = tail.to(device)
    tail.requires_grad_(True)  # the registry hands out frozen backbones
    _freeze_batchnorm(tail)
    opt, rates = _optimizer([p for p in tail.parameters() if p.requires_grad], head, cfg, TAIL_LR_FACTOR)
    n = len(y_train)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    amp = _autocast(device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with amp:
            return head(tail(x.to(device).float().contiguous(memory_format=torch.channels_last))).float()

    history: list[EpochStats] = []
    best = _Best()
    step = 0
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
            loss_sum, correct = _step(
                opt,
                rates,
                warmup_cosine(step, steps_per_epoch, cfg.epochs),
                forward(x),
                y_train[idx].to(device),
                cfg.label_smoothing,
            )
            step += 1
            run_loss += loss_sum
            run_correct += correct
        tail.eval()
        head.eval()
        with torch.no_grad():
            logits = torch.cat([forward(x_valid[i : i + 256]) for i in range(0, len(y_valid), 256)]).cpu()
        v_loss, v_acc, improved = best.offer(epoch, logits, y_valid, tail=tail, head=head)
        lr = rates[1] * warmup_cosine(step - 1, steps_per_epoch, cfg.epochs)
        stats = EpochStats(epoch, run_loss / n, run_correct / n, v_loss, v_acc, lr, time.perf_counter() - t0)
        history.append(stats)
        log(stats.line(cfg.epochs, improved))
    tail.load_state_dict(best.states["tail"])
    return best.states["head"], [dataclasses.asdict(h) for h in history], best.epoch, best.logits


def save_backbone(module: nn.Module, save_dir: Path) -> Path:
    """The whole tuned feature extractor as a plain state dict beside the checkpoint, written atomically."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return atomic_write_bytes(save_dir / BACKBONE_FILE, buf.getvalue())


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

    from ..backbones.features import default_workers, photo_loader
    from ..data.augment import Augment
    from .run import EpochStats

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    module = module.to(device).to(memory_format=torch.channels_last)
    module.requires_grad_(True)
    head = build_head(head_cfg).to(device)
    opt, rates = _optimizer(list(module.parameters()), head, cfg, BACKBONE_LR_FACTOR)
    workers = default_workers() if cfg.num_workers is None else cfg.num_workers
    amp = _autocast(device)
    y_train = torch.as_tensor(np.asarray(train.targets, dtype=np.int64))
    y_valid = torch.as_tensor(np.asarray(valid.targets, dtype=np.int64))
    steps_per_epoch = max(1, math.ceil(len(train.paths) / cfg.batch_size))

    def forward(batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
        with amp:
            return head(module(x)).float()

    history: list[EpochStats] = []
    best = _Best()
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        module.train()
        head.train()
        run_loss, run_correct, seen = 0.0, 0, 0
        # View `epoch` of every photo: a fresh, repeatable augmentation each epoch.
        batches = photo_loader(train.paths, spec.preprocessing, cfg.batch_size, workers, Augment(), epoch, gen)
        with tqdm(total=len(train.paths), desc=f"epoch {epoch}", unit="img", disable=None, leave=False) as bar:
            for idx, batch, failed in batches:
                skipped.update({str(train.paths[j]): reason for j, reason in failed})
                bar.update(len(idx) + len(failed))
                if batch is None:
                    continue
                loss_sum, correct = _step(
                    opt,
                    rates,
                    warmup_cosine(step, steps_per_epoch, cfg.epochs),
                    forward(batch),
                    y_train[idx].to(device),
                    cfg.label_smoothing,
                )
                step += 1
                run_loss += loss_sum
                run_correct += correct
                seen += len(idx)
        module.eval()
        head.eval()
        outs, labels = [], []
        with torch.no_grad():
            for idx, batch, failed in photo_loader(valid.paths, spec.preprocessing, cfg.batch_size, workers):
                skipped.update({str(valid.paths[j]): reason for j, reason in failed})
                if batch is not None:
                    outs.append(forward(batch).cpu())
                    labels.append(y_valid[idx])
        if not outs or not seen:
            raise UsageError("no readable photos left to fine-tune on; run `flowerid check` on the data")
        v_loss, v_acc, improved = best.offer(epoch, torch.cat(outs), torch.cat(labels), module=module, head=head)
        lr = rates[1] * warmup_cosine(step - 1, steps_per_epoch, cfg.epochs)
        stats = EpochStats(epoch, run_loss / seen, run_correct / seen, v_loss, v_acc, lr, time.perf_counter() - t0)
        history.append(stats)
        log(f"{stats.line(cfg.epochs, improved)}  ({stats.seconds:.0f}s)")
    module.load_state_dict(best.states["module"])
    return best.states["head"], [dataclasses.asdict(h) for h in history], best.epoch, best.logits, best.labels
