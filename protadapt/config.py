"""One run, one config: nested dataclasses, read from YAML, changed by `key=value` overrides.

Defaults live only here. A YAML file or an override may name only keys these dataclasses have;
anything else is a one-line error, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from protadapt.adapters import AdapterConfig, method_names
from protadapt.backbones import WEIGHT_DTYPES
from protadapt.embeddings.cache import CacheConfig
from protadapt.evaluation.conformal import SCORES
from protadapt.backbones.packing import PACKINGS
from protadapt.data.io import CONFLICT_POLICIES, DUPLICATE_ID_POLICIES, PROBLEM_TYPES
from protadapt.heads import POOLINGS, HeadConfig


SCHEDULES = ("cosine", "linear", "constant")
BF16_METHODS = ("lora", "dora", "bidora", "head", "probe")  # methods whose trained tensors stay fp32 over bf16 weights
# forward + backward passes per upper step beyond the lower step's own: 3, 2, 3 and 1 (results/train_step.md)
HYPERGRADIENTS = ("darts", "darts_one_sided", "darts_unrolled", "first_order")
LOGGERS = ("csv", "tensorboard", "none")


class ConfigError(ValueError):
    """A one-line problem with a config file or override."""


@dataclass
class DataConfig:
    task: str = "bbb"  # a registered task, or "custom" with `train_file`
    train_file: str | None = None  # custom task: CSV/TSV/FASTA with labels
    test_file: str | None = None  # custom task: optional held-out file
    problem_type: str | None = None  # custom task: classification | regression (inferred if None)
    val_fraction: float = 0.2  # inner validation split carved from train (BiDoRA's upper level)
    calibration_fraction: float = 0.0  # conformal calibration part carved from train first (0: none)
    identity_threshold: float | None = None  # group near-duplicates so they never straddle splits
    group_by: str | None = None  # a column (e.g. organism) whose equal values share a group, like identity groups
    truncate: bool = False  # truncate sequences longer than the backbone allows (else an error)
    sequence_column: str = "sequence"  # custom task: table column names
    label_column: str = "label"  # also the FASTA header key (>id label=1) and the labels_file column
    id_column: str = "id"  # absent: ids are FILESTEM_ROW
    labels_file: str | None = None  # custom task: CSV/TSV of id,label for an unlabelled train_file (FASTA)
    conflicts: str = "error"  # identical sequences with different labels: error | drop (every copy)
    duplicate_ids: str = "error"  # repeated ids: error | suffix (id_2, id_3, ...)
    embeddings_file: str | None = None  # --method probe: vectors by id (.npz/.h5/.parquet as `protadapt embed` writes)
    batch_size: int = 16
    num_workers: int = 0
    # ESM-2 layers padding-free (packed sequences, block-diagonal attention): off | on | auto (what
    # benchmarks/results/padding.md measured faster per device) | loop | nested | mask | flex (that attention)
    packing: str = "auto"


@dataclass
class OptimConfig:
    # warm-up 0.1, patience 5 and the 20-epoch ceiling held against warm-up 0 / 0.3 and patience 10 with a
    # 40-epoch ceiling on bbb's inner validation split, real AntiBERTy (benchmarks/defaults_sweep.py)
    lr: float | None = None  # lower level / single level; None: the method's own (METHOD_DEFAULTS below)
    weight_decay: float = 0.01
    schedule: str = "cosine"  # cosine | linear | constant, after a linear warm-up
    warmup_fraction: float = 0.1
    max_epochs: int = 20
    grad_clip: float = 1.0
    patience: int = 5  # early stopping: epochs without improvement of the monitored metric
    monitor: str | None = None  # default: the task's primary metric on the inner validation split
    # after early stopping picks the epoch count on inner_val, retrain from the initial weights on ALL
    # training rows for that many epochs; unset: no for `fit`/`cv`, yes for `compare` (equal rows)
    refit: bool | None = None


@dataclass(frozen=True)
class MethodDefaults:
    """A method's own optimiser settings: what a run gets where it leaves them unset (`optim.lr`)."""

    lr: float = 1e-3


# the best of benchmarks/defaults_sweep.py on bbb's inner validation split with the real AntiBERTy weights, each an
# interior point of its grid (results/defaults_sweep.md): lora/dora 1e-3 of 1e-4..3e-3 and full 1e-4 of 1e-5..3e-4
# (seed 0), wegeft 3e-4 of 1e-4..3e-3 and prompt 3e-2 of 1e-3..1e-1 (seeds 0-1). bidora takes dora's (not swept);
# head and unlisted methods the fallback MethodDefaults().
METHOD_DEFAULTS: dict[str, MethodDefaults] = {
    "lora": MethodDefaults(lr=1e-3), "dora": MethodDefaults(lr=1e-3), "bidora": MethodDefaults(lr=1e-3),
    "wegeft": MethodDefaults(lr=3e-4), "prompt": MethodDefaults(lr=3e-2), "full": MethodDefaults(lr=1e-4),
}


def method_defaults(method: str) -> MethodDefaults:
    return METHOD_DEFAULTS.get(method, MethodDefaults())


@dataclass
class BilevelConfig:
    """BiDoRA (methods.md): directions on inner_train, magnitudes on inner_val, then retraining.

    Both phases run fixed budgets, as the official code does: the search `optim.max_epochs` epochs
    with no early stopping and no best-checkpoint pick (inner_val trains the magnitudes, so it
    cannot also choose the epoch), the retrain `retrain_epochs`.
    """

    hypergradient: str = "darts"  # darts (Betty's) | darts_one_sided | darts_unrolled (DARTS paper) | first_order
    unroll_steps: int = 1  # lower steps per upper step
    unrolled_xi: float | None = None  # darts_unrolled: ξ of the virtual step (default: the lower lr)
    magnitude_lr: float = 1e-3  # upper-level (magnitude) learning rate (official arch_lr)
    magnitude_weight_decay: float = 0.0  # (official arch_weight_decay)
    orthogonality: float = 1e-5  # λ of the regulariser R (official reg_loss_d)
    retrain: bool = True  # retrain directions + head on all training data, magnitudes fixed
    retrain_epochs: int | None = None  # default: optim.max_epochs, the search budget
    retrain_lr: float | None = None  # default: optim.lr
    retrain_orthogonality: bool = True  # keep λ·R in the retrain loss, as the official code does


@dataclass
class TrainerConfig:
    """Passed through to `lightning.Trainer`."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    deterministic: bool = True
    log_every_n_steps: int = 10
    logger: str = "csv"  # csv | tensorboard | csv,tensorboard | none (files under RUN_DIR/logs/)
    compile: bool = False  # torch.compile the backbone (with adapters) before training; see README *Performance*
    checkpointing: bool = False  # recompute each transformer layer in backward: less activation memory, ~1 more forward


@dataclass
class UncertaintyConfig:
    """Conformal sets/intervals, calibration and the applicability domain (README: reading prediction sets)."""

    alpha: float = 0.1  # conformal miscoverage: sets/intervals hold the truth for 1 - alpha of new rows
    set_score: str = "lac"  # classification nonconformity: lac (smallest sets) | aps (adaptive)
    class_conditional: bool = False  # calibrate each class on its own rows (needs ~1/alpha rows per class)
    temperature: bool = False  # classification: fit a temperature on the inner validation split
    ece_bins: int = 15  # equal-width confidence bins of the ECE and the reliability diagram
    min_identity: float | None = 0.3  # in_domain is false below this nearest-training identity (None: no flag)
    identity_floor: float | None = None  # identities below it are left blank (None: 0 for peptides, 0.9 beyond)


@dataclass
class RunConfig:
    backbone: str = "esm2_t6_8M_UR50D"  # fair-esm name, .pt file, HF directory, or "tiny"
    random_init: bool = False  # the backbone's architecture with random weights (offline work)
    backbone_dtype: str = "float32"  # frozen weights stored as float32 | bfloat16 (half the bytes; adapters, head stay fp32)
    seed: int = 0
    out: str = "runs"  # parent directory of run directories
    quiet: bool = False
    progress: bool = False  # progress bars even when stderr is not a terminal (else a line per epoch)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    bilevel: BilevelConfig = field(default_factory=BilevelConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)  # frozen embeddings (probe, head), shared by runs

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: RunConfig | None = None) -> RunConfig:
    """Defaults ← YAML file ← `key=value` overrides (dotted keys, e.g. `optim.lr=1e-4`)."""
    config = base or RunConfig()
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read config ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
        _update(config, values, str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' is not key=value (e.g. optim.lr=1e-4)")
        nested: dict = {}
        cursor = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[leaf] = yaml.safe_load(raw) if raw.strip() else None
        _update(config, nested, f"override '{item}'")
    check_choices(config)
    return config


def with_method_defaults(config: RunConfig) -> tuple[RunConfig, dict]:
    """The config with its method's defaults where it left a setting unset, and which ones were filled in."""
    if config.optim.lr is not None:
        return config, {}
    lr = method_defaults(config.adapter.method).lr
    return dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=lr)), {"optim.lr": lr}


def check_choices(config: RunConfig) -> None:
    """Reject unknown choices before anything runs or is written: the one place they are checked."""
    choices = {"adapter.method": ([config.adapter.method], tuple(method_names())),
               "head.pooling": ([config.head.pooling], POOLINGS),
               "optim.schedule": ([config.optim.schedule], SCHEDULES),
               "bilevel.hypergradient": ([config.bilevel.hypergradient], HYPERGRADIENTS),
               "trainer.logger": (config.trainer.logger.split(","), LOGGERS),
               "uncertainty.set_score": ([config.uncertainty.set_score], SCORES["classification"]),
               "data.conflicts": ([config.data.conflicts], CONFLICT_POLICIES),
               "data.duplicate_ids": ([config.data.duplicate_ids], DUPLICATE_ID_POLICIES),
               "data.packing": ([config.data.packing], PACKINGS),
               "data.problem_type": ([config.data.problem_type or "classification"], PROBLEM_TYPES),
               "head.problem_type": ([config.head.problem_type], PROBLEM_TYPES),
               "backbone_dtype": ([config.backbone_dtype], tuple(WEIGHT_DTYPES))}
    for key, (values, allowed) in choices.items():
        for value in values:
            if value.strip() not in allowed:
                raise ConfigError(f"unknown {key} '{value}'; choose one of: {', '.join(allowed)}")
    for key, value in (("data.calibration_fraction", config.data.calibration_fraction),
                       ("uncertainty.alpha", config.uncertainty.alpha)):
        if not 0 <= value < 1 or (key == "uncertainty.alpha" and value == 0):
            raise ConfigError(f"{key} must be in [0, 1) (alpha above 0), not {value}")
    if config.backbone_dtype != "float32" and config.adapter.method not in BF16_METHODS:
        raise ConfigError(f"backbone_dtype={config.backbone_dtype} works with {', '.join(BF16_METHODS)}, not "
                          f"{config.adapter.method}; use backbone_dtype=float32 with trainer.precision=bf16-mixed")
    if config.data.embeddings_file and config.adapter.method != "probe":
        raise ConfigError(f"data.embeddings_file feeds only --method probe (a linear probe on its vectors), not "
                          f"'{config.adapter.method}'; use --method probe or unset data.embeddings_file")
    if config.uncertainty.ece_bins < 1:
        raise ConfigError(f"uncertainty.ece_bins must be at least 1, not {config.uncertainty.ece_bins}")
    for key, value in {"adapter.rank": config.adapter.rank, "optim.max_epochs": config.optim.max_epochs,
                       "data.batch_size": config.data.batch_size}.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, not {value}")
    for key, value in {"optim.lr": config.optim.lr, "bilevel.magnitude_lr": config.bilevel.magnitude_lr,
                       "bilevel.retrain_lr": config.bilevel.retrain_lr}.items():
        if value is not None and value < 0:
            raise ConfigError(f"{key} must be 0 or above, not {value}")
    if config.bilevel.unroll_steps < 1:
        raise ConfigError(f"bilevel.unroll_steps must be at least 1, not {config.bilevel.unroll_steps}")
    if config.trainer.strategy == "fsdp":
        from protadapt.training.fsdp import check_fsdp  # Lightning imported only when FSDP is asked for

        check_fsdp(config)


def _update(target: Any, values: dict, source: str, prefix: str = "") -> None:
    hints = get_type_hints(type(target))
    names = {f.name for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'; known here: {', '.join(sorted(names))}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{prefix}{key}' is a section; give it keys, e.g. {prefix}{key}.{next(iter(f.name for f in dataclasses.fields(current)))}=...")
            _update(current, value, source, f"{prefix}{key}.")
        else:
            setattr(target, key, _coerce(value, hints[key], f"{source}: '{prefix}{key}'"))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a scalar against its annotation; ints are accepted for floats, lists for tuples."""
    text = str(hint)
    if value is None:
        if "None" in text or hint is Any:
            return None
        raise ConfigError(f"{where} cannot be empty")
    if hint is Any:
        return value
    if "tuple" in text:
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    for name, kind in (("bool", bool), ("float", float), ("int", int), ("str", str)):
        if text.startswith(name) or text == f"<class '{name}'>":
            if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if kind is float:  # YAML 1.1 reads 1e-4 (no dot) as a string
                number = _parse_float(value)
                if number is None:
                    raise ConfigError(f"{where} must be a number, not {value!r}")
                return number
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, not {value!r}")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{where} must be an integer, not {value!r}")
            if kind is str and not isinstance(value, str):
                return str(value)
            return value
    return value


def _parse_float(value: Any) -> float | None:
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
