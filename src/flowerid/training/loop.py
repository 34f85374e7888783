"""The one epoch loop every training mode runs, and the pieces it is made of.

A mode supplies how to train one epoch and how to score the valid split; the loop
times the epoch, keeps the best one (valid accuracy, ties to the lower loss) and
prints the same progress line for every mode.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from .._text import Log
from ..errors import UsageError
from .config import Fit
from .schedule import warmup_cosine


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    valid_loss: float
    valid_acc: float
    lr: float
    seconds: float

    def line(self, epochs: int, improved: bool) -> str:
        """The progress line every training loop prints after an epoch; `*` marks a new best."""
        return (
            f"epoch {self.epoch:>3}/{epochs}  train loss {self.train_loss:.4f}  acc {self.train_acc:6.2%}  "
            f"valid loss {self.valid_loss:.4f}  acc {self.valid_acc:6.2%}{'  *' if improved else ''}"
        )


class Best:
    """The epoch to keep, with CPU copies of its modules: the last one offered (`keep_last`, the default:
    a fixed schedule chosen by cross-validation, so valid chooses nothing and can report and calibrate)
    or the best so far on valid (accuracy, ties to the lower loss; valid is then used up)."""

    def __init__(self, keep_last: bool = True) -> None:
        self.keep_last = keep_last
        self.key = (-1.0, -float("inf"))
        self.epoch = 0
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.logits = torch.empty(0)
        self.labels = torch.empty(0, dtype=torch.long)

    def better(self, loss: float, acc: float) -> bool:
        return (acc, -loss) > self.key

    def keeps(self, loss: float, acc: float) -> bool:
        """Whether `offer` will keep this epoch: under torchrun its valid logits must be gathered first."""
        return self.keep_last or self.better(loss, acc)

    def offer(
        self,
        epoch: int,
        loss: float,
        acc: float,
        logits: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **modules: nn.Module,
    ) -> bool:
        """Keep the epoch (its modules' states, and its valid logits and labels if given) when it is the one
        to keep; True for a new best on valid either way (the progress line's `*`)."""
        improved = self.better(loss, acc)
        if not self.keeps(loss, acc):
            return False
        self.key, self.epoch = max(self.key, (acc, -loss)), epoch
        if logits is not None and labels is not None:
            self.logits, self.labels = logits, labels
        self.states = {
            name: copy.deepcopy({k: v.detach().cpu() for k, v in m.state_dict().items()}) for name, m in modules.items()
        }
        return improved


def score(logits: torch.Tensor, labels: torch.Tensor, over_job: bool = True) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of valid logits.

    Under torchrun each process brings its share of valid and the sums are taken over
    the job, so every photo counts once (no padding) and every process gets the same figures.
    `over_job=False`: these logits are already the whole job's (gathered), scored here alone.
    """
    if not (over_job and distributed.world().distributed):
        return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()
    loss_sum, correct, n = distributed.all_sum(
        [
            F.cross_entropy(logits, labels, reduction="sum").item(),
            (logits.argmax(1) == labels).sum().item(),
            len(labels),
        ]
    )
    return loss_sum / max(1.0, n), correct / max(1.0, n)


def gather_shares(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's valid logits and labels, on the main process (for calibration); alone, as they are."""
    parts = distributed.gather((logits.cpu(), labels.cpu()))
    if parts is None:
        return logits, labels
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def share_batch(fit: Fit) -> Fit:
    """Settings for one process's share of a batch: under torchrun a batch is split across the processes,
    so the job takes the same steps as one process would."""
    size = distributed.world().size
    return fit if size == 1 else dataclasses.replace(fit, batch_size=-(-fit.batch_size // size))


def padded_order(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """A shuffle of 0..n-1, repeated up to `length`: under torchrun every process takes as many steps
    (DistributedDataParallel needs it) even when the shares differ by a photo."""
    order = torch.randperm(n, generator=gen)
    return order.repeat(-(-length // n))[:length] if length > n else order


def data_parallel(module: nn.Module, device: str) -> nn.Module:
    """The module wrapped in DistributedDataParallel under torchrun (gradients averaged over the job); alone,
    the module itself."""
    if not distributed.world().distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module, device_ids=[torch.device(device).index] if device.startswith("cuda") else None
    )


class Stepper:
    """AdamW over parameter groups with their own peak rates, on the warm-up + cosine schedule.

    `rates` are the groups' peak rates (the head's last); `step` counts optimiser steps
    across epochs, so a resumed run continues the schedule where it stopped.
    """

    def __init__(
        self,
        groups: list[list[nn.Parameter]],
        rates: list[float],
        fit: Fit,
        n: int,
        weight: torch.Tensor | None = None,
    ) -> None:
        self.opt = torch.optim.AdamW(
            [{"params": p, "lr": r} for p, r in zip(groups, rates, strict=True)], weight_decay=fit.weight_decay
        )
        self.rates = rates
        self.epochs = fit.epochs
        self.steps_per_epoch = max(1, -(-n // fit.batch_size))
        self.label_smoothing = fit.label_smoothing
        self.temperature, self.alpha = fit.distill_temperature, fit.distill_alpha
        self.weight = weight  # per-category loss weights (Stepper.class_weights), or None
        self.step = 0

    @staticmethod
    def class_weights(y: torch.Tensor, num_classes: int, fit: Fit) -> torch.Tensor | None:
        """Loss weights n / (C x count) per category with fit.balance_classes (counted over a torchrun job):
        each category then weighs as much in the loss as any other. None without it."""
        if not fit.balance_classes:
            return None
        counts = distributed.all_sum(torch.bincount(y.cpu(), minlength=num_classes).tolist())
        c = torch.as_tensor(counts, dtype=torch.float32).clamp(min=1.0)
        return c.sum() / (num_classes * c)

    def factor(self, step: int) -> float:
        return warmup_cosine(step, self.steps_per_epoch, self.epochs)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None = None) -> tuple[float, int]:
        """One optimiser step; returns the batch's summed loss and correct count. `teacher`: a teacher's
        logits for the same rows, whose probabilities the student learns (distill_loss)."""
        for group, rate in zip(self.opt.param_groups, self.rates, strict=True):
            group["lr"] = rate * self.factor(self.step)
        weight = None if self.weight is None else self.weight.to(logits.device)
        loss = F.cross_entropy(logits, y, weight=weight, label_smoothing=self.label_smoothing)
        if teacher is not None:
            loss = distill_loss(logits, teacher, self.temperature, self.alpha, loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return loss.item() * len(y), int((logits.argmax(1) == y).sum().item())

    def idle(self, loss: torch.Tensor) -> None:
        """The step of a torchrun process that has no photo for it: `loss` is zero, the gradients averaged
        over the job are the other processes', and every process keeps the same weights."""
        for group, rate in zip(self.opt.param_groups, self.rates, strict=True):
            group["lr"] = rate * self.factor(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1

    @property
    def last_lr(self) -> float:
        """The head's rate at the last step taken."""
        return self.rates[-1] * self.factor(self.step - 1)


def distill_loss(
    logits: torch.Tensor, teacher: torch.Tensor, temperature: float, alpha: float, hard: torch.Tensor
) -> torch.Tensor:
    """Hinton's distillation loss: alpha * T^2 * KL(teacher || student) at temperature T, plus (1 - alpha) times
    the labels' cross-entropy `hard`. T^2 keeps the teacher's gradients the same size at any temperature."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(logits / t, 1), F.log_softmax(teacher.float() / t, 1), reduction="batchmean", log_target=True
    )
    return alpha * t * t * soft + (1.0 - alpha) * hard if alpha < 1.0 else t * t * soft


def bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where autocast halves the tuned
    stages' epoch time (measured on 2 cores: 0.84 -> 0.41 s per batch of 64 for Lite0's last stage)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: str) -> torch.autocast:
    """bfloat16 mixed precision (no loss scaling needed) on a GPU, and on a CPU that computes it natively;
    float32 elsewhere. Weights and optimiser state stay float32."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_cpu())


def run_epochs(
    fit: Fit,
    stepper: Stepper,
    history: list[EpochStats],
    train_epoch: Callable[[int], tuple[float, int, int]],
    validate: Callable[[int], tuple[float, float, bool]],
    log: Log,
    after_epoch: Callable[[EpochStats], None] | None = None,
    show_seconds: bool = False,
) -> list[EpochStats]:
    """Epochs len(history)+1 .. fit.epochs: train (summed loss, correct, seen), validate (loss, accuracy,
    improved), record, then `after_epoch` (resume state) and the progress line."""
    for epoch in range(len(history) + 1, fit.epochs + 1):
        t0 = time.perf_counter()
        loss_sum, correct, seen = train_epoch(epoch)
        if not math.isfinite(loss_sum):  # diverged: every later epoch and the calibration would be NaN too
            raise UsageError(
                f"training diverged in epoch {epoch} (its loss is not a number); use a lower learning_rate "
                f"than {fit.learning_rate:g}",
                setting="learning_rate",
            )
        v_loss, v_acc, improved = validate(epoch)
        stats = EpochStats(
            epoch, loss_sum / seen, correct / seen, v_loss, v_acc, stepper.last_lr, time.perf_counter() - t0
        )
        history.append(stats)
        if after_epoch is not None:
            after_epoch(stats)
        log(stats.line(fit.epochs, improved) + (f"  ({stats.seconds:.0f}s)" if show_seconds else ""))
    return history
