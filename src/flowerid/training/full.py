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

from .. import distributed
from .._text import Log
from ..backbones import BackboneSpec, get_spec
from ..backbones.build import build_backbone
from ..backbones.features import default_workers, photo_loader
from ..data.augment import Augment
from ..data.folders import ImageFolder
from ..errors import UsageError
from ..model.head import HeadConfig, build_head
from .common import Run, TrainResult, best_metrics, finish_trained_backbone, share_of
from .config import Fit
from .loop import Best, Stepper, autocast, data_parallel, gather_shares, padded_order, run_epochs, score, share_batch

BACKBONE_LR_FACTOR = 0.1  # the pretrained network at a tenth of the head's rate


def fit_full(
    module: nn.Module,
    head_cfg: HeadConfig,
    train: ImageFolder,
    valid: ImageFolder,
    spec: BackboneSpec,
    fit: Fit,
    workers: int | None,
    device: str,
    skipped: dict[str, str],
    log: Log = print,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]], int, torch.Tensor, torch.Tensor]:
    """Train every layer; the module is left holding the best epoch's weights.

    Returns the best head state, the history, the best epoch, and the best epoch's
    valid logits and labels (for calibration). Under torchrun each process trains on its
    share of the photos with DistributedDataParallel, a batch split across the processes,
    and scores its share of valid; the figures are the job's.
    """
    w = distributed.world()
    torch.manual_seed(fit.seed)
    gen = torch.Generator().manual_seed(fit.seed + w.rank)
    module = module.to(device).to(memory_format=torch.channels_last)
    module.requires_grad_(True)
    head = build_head(head_cfg).to(device)
    net = data_parallel(nn.Sequential(module, head), device)
    mine = list(distributed.shard(len(train.paths), w.rank, w.size))
    length = distributed.all_max(len(mine))  # every process takes as many steps
    local = share_batch(fit)
    rates = [fit.learning_rate * BACKBONE_LR_FACTOR, fit.learning_rate]
    y_train = torch.as_tensor(np.asarray(train.targets, dtype=np.int64))
    weight = Stepper.class_weights(y_train, head_cfg.num_classes, fit)  # every process holds all of train: same weights
    stepper = Stepper([list(module.parameters()), list(head.parameters())], rates, local, length, weight)
    workers = default_workers() if workers is None else workers
    amp = autocast(device)
    valid = share_of(valid)
    y_valid = torch.as_tensor(np.asarray(valid.targets, dtype=np.int64))
    size = spec.input_size

    def forward(batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
        with amp:
            return net(x).float()

    def idle_step() -> None:
        """A process whose whole batch was unreadable still takes the step with the others (DDP needs it)."""
        net.eval()  # BatchNorm statistics stay as they are
        with amp:
            loss = net(torch.zeros(1, 3, size, size, device=device)).float().sum() * 0.0
        stepper.idle(loss)
        net.train()

    def train_epoch(epoch: int) -> tuple[float, int, int]:
        module.train()
        head.train()
        loss_sum, correct, seen = 0.0, 0, 0
        # View `epoch` of every photo: a fresh, repeatable augmentation each epoch.
        if w.distributed:
            index = [mine[j] for j in padded_order(len(mine), length, gen).tolist()]
            paths = [train.paths[j] for j in index]
            batches = photo_loader(paths, spec.preprocessing, local.batch_size, workers, Augment(), epoch)
        else:
            index, paths = mine, train.paths
            batches = photo_loader(paths, spec.preprocessing, fit.batch_size, workers, Augment(), epoch, gen)
        quiet = None if w.is_main else True
        with tqdm(total=len(paths), desc=f"epoch {epoch}", unit="img", disable=quiet, leave=False) as bar:
            for idx, batch, failed in batches:
                skipped.update({str(paths[j]): reason for j, reason in failed})
                bar.update(len(idx) + len(failed))
                if batch is None:
                    if w.distributed:
                        idle_step()
                    continue
                batch_loss, batch_correct = stepper(forward(batch), y_train[[index[j] for j in idx]].to(device))
                loss_sum += batch_loss
                correct += batch_correct
                seen += len(idx)
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen])
        if not seen:
            raise UsageError("no readable photos left to fine-tune on; run `flowerid check` on the data")
        return loss_sum, int(correct), int(seen)

    def validate(epoch: int) -> tuple[float, float, bool]:
        module.eval()
        head.eval()
        outs, labels = [], []
        plain = nn.Sequential(module, head)
        with torch.no_grad():
            for idx, batch, failed in photo_loader(valid.paths, spec.preprocessing, fit.batch_size, workers):
                skipped.update({str(valid.paths[j]): reason for j, reason in failed})
                if batch is not None:
                    x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
                    with amp:
                        outs.append(plain(x).float().cpu())
                    labels.append(y_valid[idx])
        if not distributed.all_sum([len(outs)])[0]:
            raise UsageError("no readable photos left to fine-tune on; run `flowerid check` on the data")
        logits = torch.cat(outs) if outs else torch.zeros(0, head_cfg.num_classes)
        y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        loss, acc = score(logits, y)
        if best.keeps(loss, acc):
            logits, y = gather_shares(logits, y)
        return loss, acc, best.offer(epoch, loss, acc, logits, y, module=module, head=head)

    best = Best(keep_last=not fit.keep_best_epoch)
    history = run_epochs(fit, stepper, [], train_epoch, validate, log, show_seconds=True)
    if w.distributed:  # every process's unreadable photos, for skipped.tsv
        skipped.update({k: v for part in distributed.all_gather(dict(skipped)) for k, v in part.items()})
    module.load_state_dict(best.states["module"])
    return best.states["head"], [dataclasses.asdict(h) for h in history], best.epoch, best.logits, best.labels


def train_full(run: Run) -> TrainResult | None:
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
        module, head_cfg, data.train, data.valid, spec, cfg.fit, cfg.num_workers, run.device, skipped, run.log
    )
    if not distributed.world().is_main:
        return None  # the main process writes the checkpoint
    metrics = best_metrics(history, best_epoch)
    metrics["feature_seconds"] = 0.0
    metrics["features_computed"] = 0
    readable = sum(1 for p in data.train.paths if str(p) not in skipped)
    photos = {"train_images": readable, "train_rows": readable, "valid_images": len(y_va)}
    return finish_trained_backbone(run, module, head_cfg, head_state, logits_va, y_va, metrics, skipped, photos)
