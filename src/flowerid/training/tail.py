"""Training a tuned network's tail with its head on cached front activations: the epoch loop of the tuned mode
(and of its cross-validation), and what the head then sees.

BatchNorm keeps its ImageNet statistics, the pretrained stages learn at a lower rate than the new head, each
convolution and its frozen BatchNorm run as one (backbones/surgery.py), and a random mirror of the activation
maps stands in for photo flips.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from .. import distributed
from .._text import Log
from ..backbones.surgery import TunedPart, freeze_batchnorm, fused_conv_bn
from ..errors import UsageError
from ..model.head import HeadConfig, build_head
from .config import Fit
from .loop import Best, Stepper, autocast, data_parallel, gather_shares, padded_order, run_epochs, score, share_batch

TAIL_LR_FACTOR = 1.0 / 3.0  # the pretrained stages learn at a third of the head's rate

Rows = tuple[torch.Tensor, torch.Tensor]  # (front activations, labels)
Fitted = tuple[dict[str, torch.Tensor], list[dict[str, float]], int, torch.Tensor, torch.Tensor]


def _on(device: str, x: torch.Tensor) -> torch.Tensor:
    return x.to(device).float().contiguous(memory_format=torch.channels_last)


def fit_tail(
    part: TunedPart,
    head_cfg: HeadConfig,
    train: Rows,
    valid: Rows,
    fit: Fit,
    device: str,
    log: Log = print,
    epoch_logits: list[torch.Tensor] | None = None,
    teacher: torch.Tensor | None = None,
) -> Fitted:
    """Train the part's tail + a head with AdamW (warm-up epoch, cosine) for fit.epochs; keep the last epoch
    (or, with fit.keep_best_epoch, the one best on valid). `epoch_logits` collects every epoch's valid
    logits (an ensemble's history is its members' logits averaged, epoch by epoch). `teacher`: a teacher's
    logits for each training row, learnt as training/distill.py says.

    The tail is left holding the kept epoch's weights. Returns the kept head state, the history, the
    kept epoch (1-based) and its valid logits and labels (for calibration). Cross-validation calls it
    with a held-out fold as `valid`. Under torchrun each process brings its share of the photos and
    trains on it with DistributedDataParallel, a batch split across the processes; valid is scored
    over the job and its logits gathered on the main process.
    """
    torch.manual_seed(fit.seed)
    head = build_head(head_cfg).to(device)
    tail = part.tail.to(device)
    tail.requires_grad_(True)  # the registry hands out frozen backbones
    freeze_batchnorm(tail)
    with fused_conv_bn(tail, part.anatomy):  # put back before the caller sees the tail
        run = _TailRun(tail, head, head_cfg.num_classes, train, valid, fit, device, epoch_logits, teacher)
        history = run_epochs(fit, run.stepper, [], run.train_epoch, run.validate, log)
        best = run.best
        tail.load_state_dict(best.states["tail"])  # saved with the fused modules in place
    return best.states["head"], [dataclasses.asdict(h) for h in history], best.epoch, best.logits, best.labels


class _TailRun:
    """The two steps of `fit_tail`'s epochs, over this process's rows: train (mirrored at random), validate."""

    def __init__(
        self,
        tail: nn.Module,
        head: nn.Module,
        num_classes: int,
        train: Rows,
        valid: Rows,
        fit: Fit,
        device: str,
        epoch_logits: list[torch.Tensor] | None,
        teacher: torch.Tensor | None = None,
    ) -> None:
        self.tail, self.head, self.num_classes, self.device = tail, head, num_classes, device
        self.teacher = teacher
        (self.x, self.y), self.valid, self.epoch_logits = train, valid, epoch_logits
        w = distributed.world()
        self.gen = torch.Generator().manual_seed(fit.seed + w.rank)
        self.net = data_parallel(nn.Sequential(tail, head), device)
        self.n = len(self.y)
        self.length = distributed.all_max(self.n)  # the largest share: the others repeat a photo or so to match
        if self.n == 0:
            raise UsageError(f"{w.label()} has no readable training photos: run with fewer processes")
        self.local = share_batch(fit)
        backbone_params = [p for p in tail.parameters() if p.requires_grad]
        rates = [fit.learning_rate * TAIL_LR_FACTOR, fit.learning_rate]
        weight = Stepper.class_weights(self.y, num_classes, fit)
        self.stepper = Stepper([backbone_params, list(head.parameters())], rates, self.local, self.length, weight)
        self.amp = autocast(device)
        self.best = Best(keep_last=not fit.keep_best_epoch)

    def train_epoch(self, epoch: int) -> tuple[float, int, int]:
        self.tail.train()
        self.head.train()
        freeze_batchnorm(self.tail)
        order = padded_order(self.n, self.length, self.gen)
        loss_sum, correct, step = 0.0, 0, self.local.batch_size
        for i in range(0, self.length, step):
            idx = order[i : i + step]
            x = self.x[idx]
            mirror = torch.rand(len(idx), generator=self.gen) < 0.5
            x[mirror] = x[mirror].flip(-1)
            with self.amp:
                logits = self.net(_on(self.device, x)).float()
            soft = None if self.teacher is None else self.teacher[idx].to(self.device)
            batch_loss, batch_correct = self.stepper(logits, self.y[idx].to(self.device), soft)
            loss_sum += batch_loss
            correct += batch_correct
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, self.length])
        return loss_sum, int(correct), int(seen)

    def validate(self, epoch: int) -> tuple[float, float, bool]:
        """Score on valid; offer the epoch to `best` (gathering the logits it keeps, or every epoch's)."""
        (x_valid, y_valid), best = self.valid, self.best
        self.tail.eval()
        self.head.eval()
        plain = nn.Sequential(self.tail, self.head)
        parts = []
        with torch.no_grad():
            for i in range(0, len(y_valid), 256):
                with self.amp:
                    parts.append(plain(_on(self.device, x_valid[i : i + 256])).float().cpu())
        logits = torch.cat(parts) if parts else torch.zeros(0, self.num_classes)
        loss, acc = score(logits, y_valid)
        labels = y_valid
        if best.keeps(loss, acc) or self.epoch_logits is not None:
            logits, labels = gather_shares(logits, y_valid)
        if self.epoch_logits is not None:
            self.epoch_logits.append(logits)
        return loss, acc, best.offer(epoch, loss, acc, logits, labels, tail=self.tail, head=self.head)


@torch.no_grad()
def head_inputs(tail: nn.Module, x: torch.Tensor, device: str, batch: int = 256) -> torch.Tensor:
    """What the head sees for each row of front activations: the tuned network's pooled features (float32).

    The seam for anything fitted on the final network's features of the training photos.
    """
    tail.eval()
    amp = autocast(device)
    out = []
    for i in range(0, len(x), batch):
        with amp:
            out.append(tail(_on(device, x[i : i + batch])))
    return torch.cat(out).float().cpu() if out else torch.empty(0)
