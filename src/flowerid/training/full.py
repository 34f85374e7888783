"""The full mode (full_finetune): every layer trains on freshly augmented photos each epoch. For a GPU.

AdamW with the backbone at a tenth of the head's rate, bfloat16 autocast on CUDA,
BatchNorm in training mode. On a CPU each epoch runs every photo through the whole
network both ways; tune_stages 1 gets most of the gain there in minutes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .._text import Log
from ..backbones import BackboneSpec, get_spec
from ..backbones.build import build_backbone
from ..backbones.features import default_workers, photo_loader
from ..data.augment import Augment
from ..data.folders import ImageFolder
from ..errors import UsageError
from ..model.head import HeadConfig, build_head
from .common import Run, TrainResult, best_metrics, finish_trained_backbone
from .config import TrainConfig
from .loop import Best, Stepper, autocast, run_epochs, score

BACKBONE_LR_FACTOR = 0.1  # the pretrained network at a tenth of the head's rate


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
    """Train every layer; the module is left holding the best epoch's weights.

    Returns the best head state, the history, the best epoch, and the best epoch's
    valid logits and labels (for calibration).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    module = module.to(device).to(memory_format=torch.channels_last)
    module.requires_grad_(True)
    head = build_head(head_cfg).to(device)
    rates = [cfg.learning_rate * BACKBONE_LR_FACTOR, cfg.learning_rate]
    stepper = Stepper([list(module.parameters()), list(head.parameters())], rates, cfg, len(train.paths))
    workers = default_workers() if cfg.num_workers is None else cfg.num_workers
    amp = autocast(device)
    y_train = torch.as_tensor(np.asarray(train.targets, dtype=np.int64))
    y_valid = torch.as_tensor(np.asarray(valid.targets, dtype=np.int64))

    def forward(batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
        with amp:
            return head(module(x)).float()

    def train_epoch(epoch: int) -> tuple[float, int, int]:
        module.train()
        head.train()
        loss_sum, correct, seen = 0.0, 0, 0
        # View `epoch` of every photo: a fresh, repeatable augmentation each epoch.
        batches = photo_loader(train.paths, spec.preprocessing, cfg.batch_size, workers, Augment(), epoch, gen)
        with tqdm(total=len(train.paths), desc=f"epoch {epoch}", unit="img", disable=None, leave=False) as bar:
            for idx, batch, failed in batches:
                skipped.update({str(train.paths[j]): reason for j, reason in failed})
                bar.update(len(idx) + len(failed))
                if batch is None:
                    continue
                batch_loss, batch_correct = stepper(forward(batch), y_train[idx].to(device))
                loss_sum += batch_loss
                correct += batch_correct
                seen += len(idx)
        if not seen:
            raise UsageError("no readable photos left to fine-tune on; run `flowerid check` on the data")
        return loss_sum, correct, seen

    def validate(epoch: int) -> tuple[float, float, bool]:
        module.eval()
        head.eval()
        outs, labels = [], []
        with torch.no_grad():
            for idx, batch, failed in photo_loader(valid.paths, spec.preprocessing, cfg.batch_size, workers):
                skipped.update({str(valid.paths[j]): reason for j, reason in failed})
                if batch is not None:
                    outs.append(forward(batch).cpu())
                    labels.append(y_valid[idx])
        if not outs:
            raise UsageError("no readable photos left to fine-tune on; run `flowerid check` on the data")
        logits, y = torch.cat(outs), torch.cat(labels)
        loss, acc = score(logits, y)
        return loss, acc, best.offer(epoch, loss, acc, logits, y, module=module, head=head)

    best = Best(keep_last=not cfg.keep_best_epoch)
    history = run_epochs(cfg, stepper, [], train_epoch, validate, log, show_seconds=True)
    module.load_state_dict(best.states["module"])
    return best.states["head"], [dataclasses.asdict(h) for h in history], best.epoch, best.logits, best.labels


def train_full(run: Run) -> TrainResult:
    """full_finetune: build the backbone unfrozen, train it with the head, then finish as a tuned run does."""
    cfg, data = run.cfg, run.data
    if cfg.views or cfg.resume or cfg.tune_stages:
        raise UsageError("--full-finetune trains on fresh augmented photos; drop --views, --resume and --tune-stages")
    spec = get_spec(cfg.arch)
    if spec.family == "ensemble":
        raise UsageError(f"--full-finetune takes one network; {spec.name} is an ensemble of {', '.join(spec.members)}")
    if run.device == "cpu":
        run.log(
            "full fine-tuning on a CPU is slow (every photo through the whole network, both ways, every epoch); "
            "it is meant for a GPU. On a CPU, --tune-stages 1 gets most of the gain in minutes"
        )
    module, _ = build_backbone(spec, cfg.weights)
    head_cfg = HeadConfig(spec.num_features, len(data.categories), cfg.hidden_units, cfg.dropout)
    skipped: dict[str, str] = {}
    head_state, history, best_epoch, logits_va, y_va = fit_full(
        module, head_cfg, data.train, data.valid, spec, cfg, run.device, skipped, run.log
    )
    metrics = best_metrics(history, best_epoch)
    metrics["feature_seconds"] = 0.0
    metrics["features_computed"] = 0
    readable = sum(1 for p in data.train.paths if str(p) not in skipped)
    photos = {"train_images": readable, "train_rows": readable, "valid_images": len(y_va)}
    return finish_trained_backbone(run, module, head_cfg, head_state, logits_va, y_va, metrics, skipped, photos)
