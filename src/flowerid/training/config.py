"""Training settings, apart from torch so the CLI can show defaults without importing it.

`TrainConfig` is what a run is asked for and what its checkpoint records; the functions that do the work
take the small records it hands out (`Fit` for the epoch loops, `Extraction` for the route into the cache).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class Preset:
    """A measured recipe: which backbone, how many augmented views, how long to train."""

    name: str
    arch: str
    views: int  # augmented views of each training photo, on top of the photo itself
    epochs: int
    summary: str
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    tune_stages: int = 0  # backbone stages fine-tuned with the head (training/tuned.py); 0 = frozen
    # Distillation (training/distill.py): the recipe whose model teaches (trained inside each fold by
    # cross-validation; `flowerid train` takes a finished run of it, --teacher CHECKPOINT), the
    # temperature of the teacher's and the student's probabilities, and the teacher's share of the loss.
    teacher: str | None = None
    distill_temperature: float = 1.0
    distill_alpha: float = 1.0
    cv_top1: float | None = None  # mean top-1 over the 5 folds of benchmarks/bench_cv.py (docs/presets.md)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "fast", "efficientnet_lite0", 0, 20, "one small frozen backbone: the quickest useful model", cv_top1=0.9554
        ),
        Preset(
            "default",
            "efficientnet_lite0",
            0,
            8,
            "one small backbone whose last stage fine-tunes with the head on cached activations",
            tune_stages=1,
            cv_top1=0.9788,
        ),
        Preset(
            "best",
            "efficientnet_lite012",
            0,
            12,
            "three backbones (Lite0, Lite1, Lite2), each one's last stage fine-tuned with a head, heads averaged",
            tune_stages=1,
            cv_top1=0.9881,
        ),
        # Views x epochs by 5-fold CV (docs/presets.md): 1 x 8 98.14%, 1 x 12 98.20%, 2 x 12 98.39% (above 1 x 8
        # on every fold); 3 x 12 matched 2 x 12 on the 3 folds measured (98.44 / 98.42%), folds 4-5 not run,
        # so no 5-fold figure. T and mixing: T 2 no better on fold 1; the teacher alone (alpha 1).
        Preset(
            "distilled",
            "efficientnet_lite0",
            3,
            12,
            "default's network learning a trained `best` model's probabilities (--teacher CHECKPOINT) on the "
            "photos and three augmented views of each; predicts at default's cost",
            tune_stages=1,
            teacher="best",
            distill_temperature=1.0,
            distill_alpha=1.0,
        ),
    )
}
DEFAULT_PRESET = "default"


@dataclass(frozen=True)
class Fit:
    """What the epoch loops read: how long and how fast to train, on what batches, and which epoch to keep."""

    epochs: int
    learning_rate: float
    batch_size: int
    seed: int
    weight_decay: float
    label_smoothing: float
    keep_best_epoch: bool = False
    distill_temperature: float = 1.0  # with a teacher's logits (training/distill.py)
    distill_alpha: float = 1.0

    balance_classes: bool = False  # weight the loss by inverse category frequency (loop.Stepper.class_weights)


@dataclass(frozen=True)
class Extraction:
    """How photos reach the cache: the engine that runs the network, decode workers, whether to use the cache."""

    engine: str = "auto"
    num_workers: int | None = None
    use_cache: bool = True


@dataclass(frozen=True)
class UnknownSettings:
    """What fitting the unknown-photo detector reads: the share of valid photos to accept, photos of other things."""

    accept_rate: float = 0.95
    negatives: str | None = None


@dataclass
class TrainConfig:
    """Everything that decides a training run; stored in the checkpoint."""

    arch: str = PRESETS[DEFAULT_PRESET].arch
    epochs: int = PRESETS[DEFAULT_PRESET].epochs
    learning_rate: float = PRESETS[DEFAULT_PRESET].learning_rate
    hidden_units: int = 0
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    engine: str = "auto"
    weights: str | None = None
    category_names: str | None = None
    weight_decay: float = PRESETS[DEFAULT_PRESET].weight_decay
    label_smoothing: float = 0.1
    dropout: float = 0.0
    num_workers: int | None = None
    use_cache: bool = True
    resume: bool = False  # continue head training from save_dir's train_state.pt
    preset: str | None = DEFAULT_PRESET  # what the settings came from; None when set by hand
    views: int = PRESETS[DEFAULT_PRESET].views
    calibrate: bool = True  # fit a temperature on valid so that probabilities mean what they say
    # Fine-tune the backbone's last N stages with the head (0 = frozen backbone). A plain TrainConfig()
    # trains frozen, so it suits any backbone; TrainConfig.from_preset() gives a preset's own recipe.
    tune_stages: int = 0
    full_finetune: bool = False  # train every layer on augmented photos (for a GPU)
    exclude: str | None = None  # a file listing photos to leave out (one path a line, or check --deep's issues.csv)
    # Keep the epoch best on valid instead of the last one. Off: presets train a fixed number of
    # epochs chosen by cross-validation, so valid chooses nothing and stays fit to report and calibrate.
    keep_best_epoch: bool = False
    accept_rate: float = 0.95  # share of valid photos the unknown-photo threshold accepts as known
    negatives: str | None = None  # folder of photos of other things: sharpens the unknown-photo score
    # Distillation (training/distill.py): a checkpoint whose probabilities the network learns (`flowerid
    # train`), or a preset's name, whose recipe cross-validation trains inside each fold as the teacher.
    teacher: str | None = None
    distill_temperature: float = 1.0  # both sides' logits divided by it before they are compared
    distill_alpha: float = 1.0  # the teacher's share of the loss; the rest is the labels' cross-entropy

    # A data folder with no valid split: this share of each category is held out as valid (data/layout.py).
    valid_fraction: float = 0.2
    split_seed: int = 0
    # Weight the loss by inverse category frequency, so a rare category counts as much as a common one.
    balance_classes: bool = False
    # Fit a preset's recipe to a small or unbalanced set (adapt_to_data; docs/presets.md) before training.
    # Off for settings made by hand; from_preset turns it on.
    adapt: bool = False

    @classmethod
    def from_preset(cls, name: str = DEFAULT_PRESET, **overrides: Any) -> TrainConfig:
        """A preset's settings, with any field overridden (None values are ignored).

        `adapt` is on (the recipe is fitted to a small set, adapt_to_data) unless `epochs` or `tune_stages`
        are given: settings chosen by hand are kept.

        A preset's tuned stages belong to its backbone: with another `arch` the backbone
        stays frozen unless `tune_stages` is given too (any backbone works frozen; only
        EfficientNets can be tuned). With `full_finetune` every layer trains, so the preset's
        tuned stages and cached views are dropped (given by hand, they are refused by the mode).
        """
        try:
            preset = PRESETS[name]
        except KeyError:
            raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise UsageError(f"unknown training settings: {', '.join(sorted(unknown))}")
        values = {
            "arch": preset.arch,
            "views": preset.views,
            "epochs": preset.epochs,
            "learning_rate": preset.learning_rate,
            "weight_decay": preset.weight_decay,
            "tune_stages": preset.tune_stages,
            "teacher": preset.teacher,
            "distill_temperature": preset.distill_temperature,
            "distill_alpha": preset.distill_alpha,
            "preset": name,
            "adapt": True,
        }
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("arch", preset.arch) != preset.arch and "tune_stages" not in given:
            values["tune_stages"] = 0
        if given.get("full_finetune"):  # every layer trains on fresh views: the preset's tuned stages and cached
            values.update(tune_stages=0, views=0)  # views are part of that, not extra settings to refuse
        if {"epochs", "tune_stages"} & set(given) and "adapt" not in given:
            values["adapt"] = False  # epochs or a mode given by hand are not adapted away
        values.update(given)
        return cls(**values)

    @property
    def fit(self) -> Fit:
        """The settings the epoch loops read."""
        return Fit(
            self.epochs,
            self.learning_rate,
            self.batch_size,
            self.seed,
            self.weight_decay,
            self.label_smoothing,
            self.keep_best_epoch,
            self.distill_temperature,
            self.distill_alpha,
            self.balance_classes,
        )

    @property
    def extraction(self) -> Extraction:
        """The settings feature and activation extraction read."""
        return Extraction(self.engine, self.num_workers, self.use_cache)

    @property
    def unknown_settings(self) -> UnknownSettings:
        """The settings the unknown-photo detector's fit reads."""
        return UnknownSettings(self.accept_rate, self.negatives)

    @property
    def mode(self) -> str:
        """The training mode these settings ask for: full (full_finetune), distilled (a teacher),
        tuned (tune_stages > 0) or frozen."""
        if self.full_finetune:
            return "full"
        if self.teacher:
            return "distilled"
        return "tuned" if self.tune_stages else "frozen"

    def check(self) -> None:
        """UsageError naming the first setting that cannot work (the CLI shows it as its flag)."""
        from ..backbones import get_spec

        get_spec(self.arch, setting="arch")  # an unknown name is the user's to fix: exit 2, the names listed
        if self.epochs < 1:
            raise UsageError("epochs must be at least 1", setting="epochs")
        if not (0 < self.learning_rate <= 10 and math.isfinite(self.learning_rate)):
            # past 10 every optimiser here diverges at once, and past 3e38 float32 cannot hold it
            raise UsageError("learning_rate must be a positive number of at most 10", setting="learning_rate")
        if not 0 <= self.hidden_units <= 65536:
            raise UsageError("hidden_units must be 0 (a linear head) to 65536", setting="hidden_units")
        if not 0 <= self.seed < 2**32:
            raise UsageError("seed must be a whole number from 0 to 4294967295", setting="seed")
        if self.batch_size < 1:
            raise UsageError("batch_size must be at least 1", setting="batch_size")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError("dropout must be in [0, 1)")
        if self.views < 0:
            raise UsageError("views must be 0 (the photos only) or more", setting="views")
        if self.tune_stages < 0:
            raise UsageError("tune_stages must be 0 (a frozen backbone) or more", setting="tune_stages")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise UsageError("distill_temperature must be a positive number", setting="distill_temperature")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise UsageError(
                "distill_alpha must be between 0 (labels only) and 1 (teacher only)", setting="distill_alpha"
            )
        if not 0.0 < self.valid_fraction <= 0.5:
            raise UsageError(
                "valid_fraction must be above 0 and at most 0.5 (0.2 holds out a fifth of each category)",
                setting="valid_fraction",
            )
        if not 0.5 <= self.accept_rate <= 1.0:
            raise UsageError(
                "accept_rate must be a fraction between 0.5 and 1 (0.95 keeps 95% of valid photos)",
                setting="accept_rate",
            )


# What adapt_to_data does, as measured by benchmarks/bench_small.py (docs/presets.md, "Small sets").
MIN_STEPS = 100  # optimiser steps a frozen backbone's head takes at the least: 8 epochs of 16 photos are 8
MIN_BATCH = 16  # smallest batch adapting goes down to before it adds epochs
TUNE_FROM = 200  # training photos from which a preset's tuned stages train; below, the backbone stays frozen


def adapt_to_data(
    cfg: TrainConfig,
    counts: list[int],
    *,
    min_steps: int | None = None,
    min_batch: int | None = None,
    tune_from: int | None = None,
) -> tuple[TrainConfig, list[str]]:
    """A preset's settings fitted to a data set of `counts` train photos per category, and what changed.

    The loss stays plain on unbalanced sets: weighting it (`balance_classes`) cost top-1 where measured and
    bought mean per-class accuracy (docs/presets.md), a trade the user chooses with --balance-classes.
    Returns the settings and what changed
    (one line each, for the log). Settings made by hand (`cfg.preset` None) or `cfg.adapt` off stay as they are,
    and so does a distilled recipe (its student must be the tuned network its teacher's logits were made for).
    The keywords default to this module's MIN_STEPS, MIN_BATCH and TUNE_FROM (read at the call).
    """
    if not cfg.adapt or cfg.preset is None or not counts or cfg.teacher:
        return cfg, []
    min_steps = MIN_STEPS if min_steps is None else min_steps
    min_batch = MIN_BATCH if min_batch is None else min_batch
    tune_from = TUNE_FROM if tune_from is None else tune_from
    changes: list[str] = []
    n = sum(counts)
    tune_stages, batch, epochs = cfg.tune_stages, cfg.batch_size, cfg.epochs
    if tune_stages and n < tune_from:
        tune_stages = 0
        changes.append(
            f"the backbone stays frozen (a head on its features): {n} training photos, and tuning its last "
            f"stage pays from about {tune_from}"
        )
    if not tune_stages and not cfg.full_finetune:  # a head on frozen features: measured to need the steps
        # Smaller batches first (more steps for the same work), then more epochs.
        batch = min(cfg.batch_size, max(min_batch, (n * cfg.epochs) // max(1, min_steps)))
        epochs = max(cfg.epochs, math.ceil(min_steps / max(1, math.ceil(n / batch))))
    if (epochs, batch) != (cfg.epochs, cfg.batch_size):
        changes.append(
            f"{epochs} epochs of batches of {batch} instead of {cfg.epochs} of {cfg.batch_size}: {n} training "
            f"photos would make {cfg.epochs * math.ceil(n / cfg.batch_size)} steps, and a run needs about {min_steps}"
        )
    adapted = dataclasses.replace(cfg, epochs=epochs, batch_size=batch, tune_stages=tune_stages)
    return adapted, changes
