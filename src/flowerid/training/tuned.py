"""The tuned mode (tune_stages N): partial fine-tuning that stays cheap on a CPU.

The last stages of an EfficientNet train with the head. The frozen front of the
network runs once per photo, up to the first tuned stage (through ONNX Runtime on a
CPU, 3x faster than torch there), and its activations are cached on disk in float16,
keyed like features (backbone, weights, cut, preprocessing, loader; damaged entries
are recomputed): a re-run, or another preset on the same backbone, costs only the
tuned part. An epoch then costs only the tuned stages (Lite0's last stage: about 7 s
over the 6552 flower photos on 2 quiet cores; half that where the CPU computes
bfloat16). BatchNorm keeps its ImageNet statistics (one data set's batches are too
small to re-estimate them), the pretrained stages learn at a lower rate than the new
head, and a random mirror of the activation maps stands in for photo flips. The
tuned network is saved beside the checkpoint as a plain state dict, so prediction,
exports and the ONNX engine treat it like any backbone with local weights.

An ensemble of EfficientNets whose features stay raw (efficientnet_lite012, the `best`
preset) tunes each member in turn, with a linear head of its own, on the activations of
its front fed its view of the ensemble's crop (ensemble.OwnView), as it is fed at prediction.
The members' heads averaged are one linear head over the ensemble's features, so the
result is a checkpoint like any other: one backbone, one head.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

from .. import distributed
from .._text import Log
from ..backbones import BackboneSpec, get_spec
from ..backbones.build import assemble_ensemble, build_backbone
from ..backbones.cache import cache_root, namespace_for
from ..backbones.engines import Backbone, Engine, OnnxEngine, TorchEngine, choose_engine
from ..backbones.features import extract_features
from ..data.folders import ImageFolder
from ..data.images import LOADER_VERSION
from ..errors import UsageError
from ..model.head import HeadConfig, build_head
from .common import Run, TrainResult, best_metrics, check_left, finish_trained_backbone, share_of
from .config import TrainConfig
from .loop import (
    Best,
    Stepper,
    autocast,
    class_weights,
    data_parallel,
    gather_shares,
    padded_order,
    run_epochs,
    score,
    share_batch,
)

TAIL_LR_FACTOR = 1.0 / 3.0  # the pretrained stages learn at a third of the head's rate
FRONT_EXPORT_VERSION = 1  # bump when the cut or its export changes: it is part of the cache keys


def split_backbone(module: nn.Module, spec: BackboneSpec, stages: int) -> tuple[nn.Module, nn.Module]:
    """(front, tail) sharing the module's layers; the tail is the last `stages` stages, conv_head and pooling."""
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not all(hasattr(module, a) for a in ("conv_stem", "conv_head")):
        raise UsageError(
            f"--tune-stages needs an EfficientNet backbone (efficientnet_lite0/1/2, efficientnet_b0) or an "
            f"ensemble of them with raw features (efficientnet_lite012); {spec.name} is not one"
        )
    if not 1 <= stages <= len(blocks):
        raise UsageError(f"--tune-stages must be 0 (frozen) to {len(blocks)} for {spec.name}")
    cut = len(blocks) - stages
    front = nn.Sequential(module.conv_stem, module.bn1, *blocks[:cut])
    tail = nn.Sequential(*blocks[cut:], module.conv_head, module.bn2, module.global_pool)
    return front, tail


@dataclass
class TunedPart:
    """One network to tune: its frozen front (fed the run's preprocessed photos), its tail, and what keys the
    front's cached activations (`spec`: name and preprocessing; `digest`: its pretrained weights)."""

    name: str
    front: nn.Module
    tail: nn.Module
    spec: BackboneSpec
    digest: str
    num_features: int


def tuned_parts(spec: BackboneSpec, weights: str | None, stages: int) -> tuple[nn.Module, list[TunedPart]]:
    """The whole pretrained network and the parts to tune in it: itself, or each member of an ensemble.

    A member whose preprocessing differs from the ensemble's gets its view of the ensemble's crop, as
    the ensemble feeds it at prediction; its activations are keyed by the ensemble's name and
    preprocessing. A member fed exactly its own preprocessing shares the cache entries of a run
    that tunes it alone.
    """
    if spec.family != "ensemble":
        module, digest = build_backbone(spec, weights)
        front, tail = split_backbone(module, spec, stages)
        return module, [TunedPart(spec.name, front, tail, spec, digest, spec.num_features)]
    if spec.flip_tta or spec.member_norm is not None:
        raise UsageError(
            f"--tune-stages on an ensemble needs its members' raw features (efficientnet_lite012); "
            f"{spec.name} " + ("mirrors each photo" if spec.flip_tta else "rescales its members' features")
        )
    if weights is not None:
        raise UsageError(f"--weights starts one network; {spec.name} tunes its members from their own weights")
    built = [build_backbone(m) for m in spec.members]
    module, _ = assemble_ensemble(spec, built)
    parts = []
    for name, (member, digest), view in zip(spec.members, built, module.views, strict=True):
        mspec = get_spec(name)
        front, tail = split_backbone(member, mspec, stages)
        fspec = mspec
        if not isinstance(view, nn.Identity):
            front = nn.Sequential(view, front)
            fspec = dataclasses.replace(
                spec, name=f"{spec.name}.{name}", family=mspec.family, arch=mspec.arch, members=()
            )
        parts.append(TunedPart(name, front, tail, fspec, digest, mspec.num_features))
    return module, parts


def check_ensemble_recipe(spec: BackboneSpec, cfg: TrainConfig) -> None:
    """An ensemble's tuned heads average into one only when each is linear and trained a fixed number of epochs."""
    if spec.family == "ensemble" and (cfg.hidden_units or cfg.keep_best_epoch):
        raise UsageError(
            f"{spec.name} tunes each member with a linear head and averages them after a fixed number of "
            "epochs: leave out --hidden_units and --keep-best-epoch"
        )


def part_activations(
    split: ImageFolder, parts: list[TunedPart], stages: int, cfg: TrainConfig, device: str, name: str
) -> tuple[list[torch.Tensor], torch.Tensor, dict[int, str], int]:
    """Each part's front activations of the same photos (those every part could read), their labels,
    the failures by index and how many activations were computed."""
    got = []
    for part in parts:
        label = name if len(parts) == 1 else f"{name}, {part.name}"
        got.append(front_activations(split, part.front, part.spec, part.digest, stages, cfg, device, label))
    failed = {i: reason for _, _, f, _ in got for i, reason in f.items()}
    xs, y = [], torch.as_tensor(np.asarray(split.targets, dtype=np.int64))
    keep = torch.as_tensor(np.setdiff1d(np.arange(len(y)), np.fromiter(failed, dtype=np.int64, count=len(failed))))
    for x, _, f, _ in got:  # rows of the photos this part read, narrowed to those every part read
        read = np.setdiff1d(np.arange(len(y)), np.fromiter(f, dtype=np.int64, count=len(f)))
        xs.append(x[torch.as_tensor(np.searchsorted(read, keep.numpy()))] if len(f) != len(failed) else x)
    return xs, y[keep], failed, sum(c for *_, c in got)


def average_heads(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Linear heads over the members' features averaged into one over their concatenation: its logits are the
    mean of theirs, so its softmax is that of their averaged log-probabilities."""
    out = {}
    for key in states[0]:
        parts = [s[key] for s in states]
        out[key] = torch.cat(parts, 1) / len(parts) if key.endswith(".weight") else torch.stack(parts).mean(0)
    return out


def front_namespace(spec: BackboneSpec, digest: str, stages: int) -> str:
    """Everything a front's activations depend on: the cache namespace of its entries and of its ONNX graph."""
    return namespace_for(
        {
            "backbone": spec.name,
            "weights": digest,
            "front_of_last_stages": stages,
            "preprocessing": spec.preprocessing.to_dict(),
            "loader": LOADER_VERSION,
            "version": FRONT_EXPORT_VERSION,
        }
    )


class _FlatEngine:
    """An engine whose (N, C, H, W) output comes back as (N, C*H*W) rows, as feature extraction stores them."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.inner(batch).reshape(len(batch), -1)

    def for_streams(self, streams: int) -> _FlatEngine:
        return _FlatEngine(self.inner.for_streams(streams))


def front_engine(front: nn.Module, spec: BackboneSpec, namespace: str, device: str, engine: str) -> Engine:
    """The front as an engine giving flat rows: its ONNX graph (exported once, then cached) on a CPU."""
    if choose_engine(engine, device) != "onnx":
        return _FlatEngine(TorchEngine(front, device))
    path = cache_root() / "onnx" / f"{spec.name}-front-{namespace}.onnx"
    if path.is_file():
        try:
            return _FlatEngine(OnnxEngine(path))
        except Exception:  # a damaged cached graph is rebuilt, not trusted
            path.unlink(missing_ok=True)
    from ..backbones.onnx import export_onnx

    return _FlatEngine(OnnxEngine(export_onnx(front, path, spec.input_size)))


def front_activations(
    split: ImageFolder,
    front: nn.Module,
    spec: BackboneSpec,
    digest: str,
    stages: int,
    cfg: TrainConfig,
    device: str,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, str], int]:
    """(activations float16, labels, failures by index, how many were computed) of the frozen front.

    Through the one input pipeline and the on-disk cache (float16 entries under activations/).
    """
    with torch.inference_mode():
        size = spec.input_size
        shape = tuple(front.eval()(torch.zeros(1, 3, size, size)).shape[1:])
    namespace = front_namespace(spec, digest, stages)
    cut_spec = dataclasses.replace(spec, num_features=int(np.prod(shape)))
    ex = extract_features(
        split.paths,
        Backbone(cut_spec, digest, front_engine(front, spec, namespace, device, cfg.engine)),
        use_cache=cfg.use_cache,
        num_workers=cfg.num_workers,
        desc=f"{name} activations",
        dtype="float16",
        cache_namespace=namespace,
    )
    keep = np.flatnonzero(ex.ok)
    x = torch.from_numpy(ex.features[keep]).reshape(-1, *shape)
    y = torch.as_tensor(np.asarray(split.targets, dtype=np.int64)[keep])
    return x, y, ex.failures, ex.computed


def _freeze_batchnorm(tail: nn.Module) -> None:
    for m in tail.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.requires_grad_(False)


class _ConvFrozenBN(nn.Module):
    """A convolution and the frozen BatchNorm after it as one convolution, its weight still the one trained.

    The BatchNorm's scale goes into the kernel and its shift into the bias at each call, so the
    function and the gradient of the convolution's own weight are the same (to 1e-6) while no
    pass over the activations is spent on normalising them: a tuned step of Lite0's last stage
    on 2 cores took 82 ms instead of 103 (batch 64).
    """

    def __init__(self, conv: nn.Conv2d, bn: BatchNormAct2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        x = F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)
        return bn.act(bn.drop(x))


# timm's EfficientNet blocks: which convolution each BatchNorm follows.
_CONV_BN_PAIRS = {
    InvertedResidual: (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    DepthwiseSeparableConv: (("conv_dw", "bn1"), ("conv_pw", "bn2")),
}


def _fusable(conv: object, bn: object) -> bool:
    """A plain convolution (not timm's dynamically padded one) and a frozen BatchNorm with affine statistics."""
    return (
        type(conv) is nn.Conv2d
        and type(bn) is BatchNormAct2d
        and bn.weight is not None
        and bn.bias is not None
        and bn.running_mean is not None
        and bn.running_var is not None
        and not bn.training
    )


@contextmanager
def _fused_conv_bn(tail: nn.Module) -> Iterator[None]:
    """While the tail trains, each convolution + frozen BatchNorm pair runs as one convolution; put back after."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []

    def swap(parent: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if _fusable(conv, bn):
            swaps.extend([(parent, conv_name, conv), (parent, bn_name, bn)])
            setattr(parent, conv_name, _ConvFrozenBN(conv, bn))
            setattr(parent, bn_name, nn.Identity())

    for module in list(tail.modules()):
        for conv_name, bn_name in _CONV_BN_PAIRS.get(type(module), ()):
            swap(module, conv_name, bn_name)
    names = list(tail._modules)  # the tail's own conv_head, bn2
    for conv_name, bn_name in zip(names, names[1:], strict=False):
        swap(tail, conv_name, bn_name)
    try:
        yield
    finally:
        for parent, name, original in reversed(swaps):
            setattr(parent, name, original)


def fit_tail(
    tail: nn.Module,
    head_cfg: HeadConfig,
    train: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    device: str,
    log: Log = print,
    epoch_logits: list[torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]], int, torch.Tensor, torch.Tensor]:
    """Train tail + head with AdamW (warm-up epoch, cosine) for cfg.epochs; keep the last epoch
    (or, with cfg.keep_best_epoch, the one best on valid). `epoch_logits` collects every
    epoch's valid logits (an ensemble's history is its members' logits averaged, epoch by epoch).

    The tail is left holding the kept epoch's weights. Returns the kept head state, the
    history, the kept epoch (1-based) and its valid logits and labels (for calibration).
    Cross-validation (crossval.py) calls it with a held-out fold as `valid`. Under torchrun
    each process brings its share of the photos and trains on it with DistributedDataParallel,
    a batch split across the processes; valid is scored over the job and its logits gathered
    on the main process.
    """
    torch.manual_seed(cfg.seed)
    head = build_head(head_cfg).to(device)
    tail = tail.to(device)
    tail.requires_grad_(True)  # the registry hands out frozen backbones
    _freeze_batchnorm(tail)
    with _fused_conv_bn(tail):  # put back before the caller sees the tail
        (x_train, y_train), (x_valid, y_valid) = train, valid
        w = distributed.world()
        gen = torch.Generator().manual_seed(cfg.seed + w.rank)
        net = data_parallel(nn.Sequential(tail, head), device)
        n = len(y_train)
        length = distributed.all_max(n)  # the largest share: the others repeat a photo or so to match it
        if n == 0:
            raise UsageError(f"{w.label()} has no readable training photos: run with fewer processes")
        local = share_batch(cfg)
        backbone_params = [p for p in tail.parameters() if p.requires_grad]
        rates = [cfg.learning_rate * TAIL_LR_FACTOR, cfg.learning_rate]
        weight = class_weights(y_train, head_cfg.num_classes, cfg)
        stepper = Stepper([backbone_params, list(head.parameters())], rates, local, length, weight)
        amp = autocast(device)

        def forward(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
            with amp:
                return module(x.to(device).float().contiguous(memory_format=torch.channels_last)).float()

        def train_epoch(epoch: int) -> tuple[float, int, int]:
            tail.train()
            head.train()
            _freeze_batchnorm(tail)
            order = padded_order(n, length, gen)
            loss_sum, correct = 0.0, 0
            for i in range(0, length, local.batch_size):
                idx = order[i : i + local.batch_size]
                x = x_train[idx]
                mirror = torch.rand(len(idx), generator=gen) < 0.5
                x[mirror] = x[mirror].flip(-1)
                batch_loss, batch_correct = stepper(forward(x, net), y_train[idx].to(device))
                loss_sum += batch_loss
                correct += batch_correct
            loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, length])
            return loss_sum, int(correct), int(seen)

        def validate(epoch: int) -> tuple[float, float, bool]:
            tail.eval()
            head.eval()
            plain = nn.Sequential(tail, head)
            with torch.no_grad():
                parts = [forward(x_valid[i : i + 256], plain).cpu() for i in range(0, len(y_valid), 256)]
            logits = torch.cat(parts) if parts else torch.zeros(0, head_cfg.num_classes)
            loss, acc = score(logits, y_valid)
            labels = y_valid
            if best.keeps(loss, acc) or epoch_logits is not None:
                logits, labels = gather_shares(logits, y_valid)
            if epoch_logits is not None:
                epoch_logits.append(logits)
            return loss, acc, best.offer(epoch, loss, acc, logits, labels, tail=tail, head=head)

        best = Best(keep_last=not cfg.keep_best_epoch)
        history = run_epochs(cfg, stepper, [], train_epoch, validate, log)
        tail.load_state_dict(best.states["tail"])
        return best.states["head"], [dataclasses.asdict(h) for h in history], best.epoch, best.logits, best.labels


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
            out.append(tail(x[i : i + batch].to(device).float().contiguous(memory_format=torch.channels_last)))
    return torch.cat(out).float().cpu() if out else torch.empty(0)


def ensemble_history(
    member_histories: list[list[dict[str, float]]], logits: list[list[torch.Tensor]], labels: torch.Tensor
) -> list[dict[str, float]]:
    """Epoch e of an ensemble: its members after e epochs each, valid scored on their averaged logits
    (what the averaged head gives); train figures are the members' mean, seconds their sum."""
    history = []
    for e, rows in enumerate(zip(*member_histories, strict=True)):
        mean = torch.stack([m[e] for m in logits]).mean(0)
        valid_loss, valid_acc = score(mean, labels, over_job=False)  # gathered: the main process scores alone
        history.append({
            "epoch": e + 1,
            "train_loss": float(np.mean([r["train_loss"] for r in rows])),
            "train_acc": float(np.mean([r["train_acc"] for r in rows])),
            "valid_loss": valid_loss,
            "valid_acc": valid_acc,
            "lr": rows[-1]["lr"],
            "seconds": float(sum(r["seconds"] for r in rows)),
        })  # fmt: skip
    return history


def train_tuned(run: Run) -> TrainResult | None:
    """tune_stages N: the last N stages train with the head on cached front activations; an ensemble's
    members each in turn, their heads then averaged into one.

    Under torchrun each process runs the fronts over its share of the photos and trains on it.
    """
    cfg, data = run.cfg, run.data
    if cfg.views:
        raise UsageError("--tune-stages and --views do not combine: tuning mirrors activations instead; use --views 0")
    if cfg.resume:
        raise UsageError("--resume continues head training on frozen features; a --tune-stages run starts over")
    spec = get_spec(cfg.arch)
    ensemble = spec.family == "ensemble"
    check_ensemble_recipe(spec, cfg)
    module, parts = tuned_parts(spec, cfg.weights, cfg.tune_stages)
    w = distributed.world()
    train_split, valid_split = share_of(data.train), share_of(data.valid)
    t_feat = time.perf_counter()
    xs_tr, y_tr, failed_tr, computed_tr = part_activations(
        train_split, parts, cfg.tune_stages, cfg, run.device, "train"
    )
    xs_va, y_va, failed_va, computed_va = part_activations(
        valid_split, parts, cfg.tune_stages, cfg, run.device, "valid"
    )
    skipped: dict[str, str] = {}
    for split, failed in ((train_split, failed_tr), (valid_split, failed_va)):
        skipped.update({str(split.paths[i]): reason for i, reason in failed.items()})
    feat_seconds = time.perf_counter() - t_feat
    # What is left is checked over the whole job, by every process alike.
    skipped = {k: v for part in distributed.all_gather(skipped) for k, v in part.items()}
    all_tr, all_va = (torch.cat(distributed.all_gather(y)) for y in (y_tr, y_va))
    check_left(data.categories, all_tr, all_va, run.save_dir, skipped, run.log)
    computed = int(distributed.all_sum([computed_tr + computed_va])[0])
    run.log(
        f"activations before the last {cfg.tune_stages} stage(s) ready in {feat_seconds:.1f}s "
        f"({computed} computed, the rest cached): "
        + ", ".join(str(tuple(x.shape[1:])) for x in xs_tr)
        + (f" ({w.size} processes)" if w.distributed else "")
    )

    num_classes = len(data.categories)
    states, histories, epoch_logits, f_tr, f_va = [], [], [], [], []
    for i, (part, x_tr, x_va) in enumerate(zip(parts, xs_tr, xs_va, strict=True)):
        if ensemble:
            run.log(f"member {i + 1}/{len(parts)}: {part.name}")
        part_cfg = HeadConfig(part.num_features, num_classes, cfg.hidden_units, cfg.dropout)
        epoch_logits.append([])
        state, history, kept_epoch, logits_va, labels_va = fit_tail(
            part.tail,
            part_cfg,
            (x_tr, y_tr),
            (x_va, y_va),
            cfg,
            run.device,
            run.log,
            epoch_logits[-1] if ensemble else None,  # only an ensemble's history needs every epoch's logits
        )
        states.append(state)
        histories.append(history)
        # The head's inputs through the tuned tail, over the whole job in the order of all_tr / all_va:
        # the unknown-photo detector is fitted on what predict will see.
        f_tr.append(torch.cat(distributed.all_gather(head_inputs(part.tail, x_tr, run.device))))
        f_va.append(torch.cat(distributed.all_gather(head_inputs(part.tail, x_va, run.device))))
    if not w.is_main:
        return None  # the main process writes the checkpoint
    head_cfg = HeadConfig(spec.num_features, num_classes, cfg.hidden_units, cfg.dropout)
    if ensemble:
        head_state = average_heads(states)
        logits_va = torch.stack([e[-1] for e in epoch_logits]).mean(0)
        history = ensemble_history(histories, epoch_logits, labels_va)
        kept_epoch = len(history)
    else:
        head_state, history = states[0], histories[0]
    metrics = best_metrics(history, kept_epoch)
    if ensemble:
        metrics["members"] = [
            {"backbone": p.name, "valid_acc": h[-1]["valid_acc"], "valid_loss": h[-1]["valid_loss"]}
            for p, h in zip(parts, histories, strict=True)
        ]
        run.log(
            "members alone: "
            + ", ".join(f"{m['backbone']} {m['valid_acc']:.2%}" for m in metrics["members"])
            + f"; averaged: {metrics['valid_acc']:.2%}"
        )
    metrics["feature_seconds"] = feat_seconds
    metrics["features_computed"] = computed
    photos = {"train_images": len(all_tr), "train_rows": len(all_tr), "valid_images": len(all_va)}
    feats = (torch.cat(f_tr, 1), all_tr, torch.cat(f_va, 1))
    return finish_trained_backbone(
        run, module, head_cfg, head_state, logits_va, labels_va, metrics, skipped, photos, feats
    )
