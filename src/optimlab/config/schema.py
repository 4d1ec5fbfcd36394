"""optimlab's config schema: types, ranges and docs of every key, checked before any training.

Each section is a dataclass. The composed config is *not* merged into these dataclasses
at composition time: keys that other parts of optimlab add stay legal, and a mistake gets
optimlab's own message (:mod:`optimlab.config.checks`), which names the key, the value and
what is allowed, instead of OmegaConf's validation wall.

A field's ``metadata["rule"]`` is ``(allowed, predicate)``: the value is valid when
``predicate(value)`` is true; ``allowed`` completes "is not valid: must be ...".
Defaults live in the YAML (conf/) only: a field here has a type and a rule, no default.
This module must stay light (no torch): it runs before anything heavy is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from optimlab import objective
from optimlab.engine.metrics import VAL_ACC, VAL_LOSS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INTERVALS = ("epoch", "batch", "metric")
OBJECTIVE_METRICS = tuple(objective.EPOCH_METRICS)  # objective.metric
ALL_OBJECTIVE_METRICS = tuple(objective.METRICS)  # objective.metrics
DIRECTIONS = objective.DIRECTIONS
DEVICES = ("auto", "cpu", "cuda", "mps")
MONITORS = (VAL_LOSS, VAL_ACC)
PLACEMENTS = ("auto", "device", "host")
TEST_ON = ("best", "last", "both")  # which weights the test split is evaluated on


def _finite(v) -> bool:
    return math.isfinite(v)


def rule(allowed: str, ok) -> dict[str, Any]:
    return {"rule": (allowed, ok)}


def one_of(*options: str) -> dict[str, Any]:
    return rule(f"one of {', '.join(options)}", lambda v: v in options)


POSITIVE = rule("a finite number > 0", lambda v: _finite(v) and v > 0)
NON_NEGATIVE = rule("a finite number >= 0", lambda v: _finite(v) and v >= 0)
AT_LEAST_1 = rule(">= 1", lambda v: v >= 1)
AT_LEAST_0 = rule(">= 0", lambda v: v >= 0)
UNIT_OPEN = rule("in (0, 1)", lambda v: 0 < v < 1)
UNIT_RIGHT_OPEN = rule("in [0, 1)", lambda v: 0 <= v < 1)


# --------------------------------------------------------------------------- top level


@dataclass
class ObjectiveSchema:
    metric: str = field(metadata=one_of(*OBJECTIVE_METRICS))
    direction: str = field(metadata=one_of(*DIRECTIONS))
    # several objectives (a multi-objective sweep): null, or two or more metric names
    metrics: Optional[list[str]] = field(
        metadata=rule(
            f"null or two or more different names of {', '.join(ALL_OBJECTIVE_METRICS)} (one objective: objective.metric)",
            lambda v: len(v) >= 2 and len(set(v)) == len(v) and all(m in ALL_OBJECTIVE_METRICS for m in v),
        ),
    )
    # null: each metric's own direction
    directions: Optional[list[str]] = field(
        metadata=rule(f"null or a list of {' / '.join(DIRECTIONS)}", lambda v: all(d in DIRECTIONS for d in v))
    )


@dataclass
class CheckpointSchema:
    every: int = field(metadata=rule(">= 0 (0: only at the end)", lambda v: v >= 0))


# Keys of the built-in trackers (``conf/logger/``), by class name: key -> (allowed, predicate)
WANDB_MODES = ("offline", "online", "disabled", "shared")
LOGGER_RULES = {
    "WandbLogger": {
        # null (the default): W&B's own WANDB_MODE / WANDB_PROJECT, else offline / optimlab
        "mode": (f"one of {', '.join(WANDB_MODES)}", lambda v: v is None or v in WANDB_MODES),
        "project": ("a non-empty string", lambda v: v is None or isinstance(v, str) and bool(v)),
    },
    "MLflowLogger": {
        "tracking_uri": (
            "a tracking URI: sqlite:///<file>, file:<folder>, http(s)://<host>",  # null: $MLFLOW_TRACKING_URI
            lambda v: v is None or isinstance(v, str) and bool(v),
        ),
        "experiment": ("a non-empty string", lambda v: isinstance(v, str) and bool(v)),
        "http_retries": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
        "http_timeout": ("a number > 0", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
    },
}


@dataclass
class ProfileSchema:
    steps: int = field(metadata=rule(">= 0 (0: no profiler)", lambda v: v >= 0))
    warmup: int = field(metadata=AT_LEAST_0)
    memory: bool
    shapes: bool


@dataclass
class DeviceSchema:
    type: str = field(metadata=one_of(*DEVICES))


@dataclass
class AugmentSchema:
    crop_padding: int = field(metadata=AT_LEAST_0)
    flip: bool


SPLIT_SIZE = rule("a count >= 1 or a fraction in (0, 1)", lambda v: (v >= 1 and v == int(v)) or 0 < v < 1)


@dataclass
class DataSchema:
    """Keys shared by the dataset entries (conf/data/); each loader takes the ones it declares.
    Facts of a dataset (its image shape, its size) live on its loader (optimlab.engine.data.Facts)."""

    _target_: str
    name: str
    channels: int = field(metadata=AT_LEAST_1)
    image_size: int = field(metadata=AT_LEAST_1)
    num_classes: int = field(metadata=rule(">= 2", lambda v: v >= 2))
    val_size: float = field(metadata=SPLIT_SIZE)
    train_size: Optional[int] = field(metadata=AT_LEAST_1)  # synthetic
    test_size: Optional[float] = field(metadata=SPLIT_SIZE)  # synthetic, digits, image_folder
    noise: Optional[float] = field(metadata=NON_NEGATIVE)  # synthetic
    root: Optional[str]
    download: Optional[bool]
    limit: Optional[int] = field(metadata=AT_LEAST_1)  # at most this many images per split (debug=fast)
    mixed_modes: Optional[str] = field(metadata=one_of("error", "convert"))  # image_folder
    split_seed: int = field(metadata=AT_LEAST_0)
    shuffle: bool
    normalize: bool
    mean: Optional[list[float]]
    std: Optional[list[float]]
    augment: AugmentSchema


@dataclass
class OptimizerSchema:
    """Keys shared by the optimizer options (each option uses a subset)."""

    _target_: str
    lr: Optional[float] = field(metadata=POSITIVE)
    momentum: Optional[float] = field(metadata=UNIT_RIGHT_OPEN)
    weight_decay: Optional[float] = field(metadata=NON_NEGATIVE)
    betas: Optional[list[float]] = field(
        metadata=rule("two numbers in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v))
    )
    alpha: Optional[float] = field(metadata=UNIT_RIGHT_OPEN)
    eps: Optional[float] = field(metadata=POSITIVE)
    dampening: Optional[float] = field(metadata=rule("in [0, 1]", lambda v: 0 <= v <= 1))
    nesterov: Optional[bool]


@dataclass
class SchedulerSchema:
    """Keys shared by the scheduler options (each option uses a subset)."""

    _target_: str
    interval: str = field(metadata=one_of(*INTERVALS))
    monitor: Optional[str] = field(metadata=one_of(*MONITORS))
    # StepLR, MultiStepLR, ExponentialLR
    step_size: Optional[int] = field(metadata=AT_LEAST_1)
    gamma: Optional[float] = field(metadata=POSITIVE)
    milestones: Optional[list[int]] = field(
        metadata=rule(
            "a list of strictly increasing epochs >= 1",
            lambda v: all(m >= 1 for m in v) and all(a < b for a, b in zip(v, v[1:])),
        ),
    )
    # ConstantLR
    factor: Optional[float]
    total_iters: Optional[int] = field(metadata=AT_LEAST_0)
    # CosineAnnealingLR
    T_max: Optional[int] = field(metadata=AT_LEAST_1)
    eta_min: Optional[float] = field(metadata=NON_NEGATIVE)
    # OneCycleLR
    max_lr: Optional[float] = field(metadata=POSITIVE)
    epochs: Optional[int] = field(metadata=AT_LEAST_1)
    steps_per_epoch: Optional[int] = field(metadata=AT_LEAST_1)
    pct_start: Optional[float] = field(metadata=UNIT_OPEN)
    anneal_strategy: Optional[str] = field(metadata=one_of("cos", "linear"))
    # ReduceLROnPlateau
    mode: Optional[str] = field(metadata=one_of("min", "max"))
    patience: Optional[int] = field(metadata=AT_LEAST_0)


@dataclass
class ConfigSchema:
    lr: float = field(metadata=POSITIVE)
    momentum: float = field(metadata=UNIT_RIGHT_OPEN)
    weight_decay: float = field(metadata=NON_NEGATIVE)
    epochs: int = field(metadata=AT_LEAST_1)
    batch_size: int = field(metadata=AT_LEAST_1)
    seed: int = field(metadata=AT_LEAST_0)
    deterministic: bool
    precision: str = field(metadata=one_of(*PRECISIONS))
    channels_last: bool
    compile: bool
    eval_batch_size: int = field(metadata=AT_LEAST_1)
    data_placement: str = field(metadata=one_of(*PLACEMENTS))
    objective: ObjectiveSchema
    # best: the best validation epoch's weights (best.pt); last: the last epoch's; both: both, best reported
    test_on: str = field(metadata=one_of(*TEST_ON))
    checkpoint: CheckpointSchema
    resume: Optional[str]
    quiet: bool
    tensorboard: bool
    plots: bool
    profile: ProfileSchema
    device: DeviceSchema
    data: DataSchema
    optimizer: OptimizerSchema
    scheduler: SchedulerSchema
