"""Training configs: YAML files read into dataclasses and validated once, so the loop never sees a bad value.

A config is a file shipped in ``mseg_semantic/config/train/`` (named by its path there without ``.yaml``, e.g.
``camvid11`` or ``1080_release/mseg-relabeled-3m``) or a YAML path, read by :func:`mseg_semantic.configs.read_config`:
unknown keys, wrong types and impossible values raise :class:`~mseg_semantic.configs.ConfigError` naming the file
(or ``--set``) and the dotted key (``optim.base_lr``). ``key=value`` overrides (``--set``) use the same dotted
keys, list items by index (``datasets.0.root=/data``); values are YAML (``transform.crop=[473,473]``,
``model.backbone_weights=null``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mseg_semantic.configs import (
    ConfigError,
    check,
    check_choice,
    did_you_mean,
    parse_yaml,
    read_config,
    read_yaml,
    set_key,
    show,
    to_plain,
)
from mseg_semantic.data.sampling import LAYOUTS
from mseg_semantic.data.transforms import Augmentation
from mseg_semantic.errors import InputError, MsegError
from mseg_semantic.precision import TORCH_PRECISIONS
from mseg_semantic.training.taxonomies import DatasetConfig, TaxonomyConfig, resolve_taxonomies

TAXONOMY_MODES = ("universal", "naive", "own")
CLASS_WEIGHTINGS = ("none", "enet")


#: ``datasets: [camvid-11]``: a dataset given by name only; ``taxonomy: naive``: the mode only.
_SHORTHAND = {DatasetConfig: "name", TaxonomyConfig: "mode"}


@dataclass
class ModelConfig:
    arch: str = "hrnet_w48"  # see mseg_semantic.models.list_models()
    hrnet: dict[str, Any] | None = None  # stage config (original YAML layout) for arch "hrnet"
    backbone_weights: str | None = None  # ImageNet classification weights to initialise the backbone from
    weights: str | None = None  # a whole checkpoint (path or zoo name) to fine-tune from (the original `weight`)


#: The ``transform`` section: SPEC 4.6's augmentation and the options beyond it, declared once, by the transform.
TransformConfig = Augmentation


@dataclass
class OptimConfig:
    """SGD with per-iteration poly decay ``base_lr * (1 - iter / max_iters) ** power``."""

    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    head_lr_mult: float = 10.0  # PSPNet: LR factor of ppm/cls/aux (HRNet has one LR for everything)
    aux_weight: float = 0.4  # PSPNet: weight of the auxiliary loss
    multi_objective: str = "none"  # none | mgda: each dataset a task, steps along the min-norm gradient combination
    mgda_normalization: str = "none"  # none (the MSeg release) | l2 | loss | loss+: per-dataset gradient scaling


@dataclass
class CCSAConfig:
    """Contrastive semantic alignment of pixel embeddings across datasets (the paper's domain-generalisation
    baseline, see :mod:`mseg_semantic.training.ccsa`); off while ``weight`` is 0."""

    weight: float = 0.0  # alpha: loss = weight * ccsa + (1 - weight) * (CE + aux_weight * aux); the original: 0.25
    margin: float = 1.0  # different classes are pushed at least this far apart
    positive_pairs: int = 100  # same-class cross-dataset pairs per step and process (the paper's runs: 1000)
    negative_ratio: int = 3  # different-class pairs per positive pair


@dataclass
class OHEMConfig:
    """Online hard example mining: the loss counts only the hard pixels (see mseg_semantic.training.ohem)."""

    thresh: float | None = None  # off while null; keep pixels whose probability of their label is at most this (0.7)
    min_kept: float = 0.1  # and at least this share of each process's labelled pixels, the hardest ones


@dataclass
class LossConfig:
    ccsa: CCSAConfig = field(default_factory=CCSAConfig)
    ohem: OHEMConfig = field(default_factory=OHEMConfig)
    # none (the original) | enet: cross-entropy weights 1 / ln(1.02 + class share of the training labels), scaled to
    # a mean of 1 per pixel (see mseg_semantic.training.class_weights)
    class_weighting: str = "none"


@dataclass
class CheckpointConfig:
    every: int = 2000  # iterations between checkpoints (one is always written at the end)
    keep: int = 2  # most recent checkpoints kept


@dataclass
class ValConfig:
    every: int = 0  # iterations between validations (0: never); needs a val_list on some dataset
    short_size: int | None = None  # short side of validation images (default: transform.short_size)
    max_images: int | None = None  # validate on the first N images of each val list only


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data root and output folder."""

    datasets: list[DatasetConfig]
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    dataset_layout: str = "mixed"  # mixed | per_rank (see mseg_semantic.data.sampling)
    batch_size: int = 16  # crops per optimisation step over all processes (the original configs' batch_size)
    num_examples: int = 1_000_000  # crops per dataset over the run; max_iters follows from it
    max_iters: int | None = None  # overrides the count derived from num_examples
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler)
    channels_last: bool = False
    sync_bn: bool = True  # SyncBatchNorm when distributed on GPUs
    deterministic: bool = False  # deterministic kernels where the backend has them (slower on GPUs)
    device: str = "auto"  # auto (cuda:LOCAL_RANK when available, else cpu), cpu, cuda, ...
    workers: int = 4  # DataLoader worker processes per training process
    data_root: str | None = None  # usually given with --data-root
    log_every: int = 20
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    val: ValConfig = field(default_factory=ValConfig)

    @property
    def num_classes(self) -> int:
        """Outputs of the model: 194 (universal), the rows of ``taxonomy.master``, 316 (naive) or the dataset's
        class count (own)."""
        from mseg_semantic.taxonomy import get_taxonomy

        return get_taxonomy(self.model_taxonomy).num_classes

    @property
    def model_taxonomy(self) -> str:
        """The taxonomy of the model's outputs, as recorded in checkpoints."""
        return resolve_taxonomies(self.taxonomy, self.datasets).name

    def total_iters(self) -> int:
        """``max_iters`` if set, else ``floor(num_examples / crops per dataset per step)`` (SPEC 4.3)."""
        if self.max_iters is not None:
            return self.max_iters
        return iteration_count(self.num_examples, self.batch_size, len(self.datasets))


def iteration_count(num_examples: int, batch_size: int, num_datasets: int) -> int:
    """Steps for ``num_examples`` crops of each dataset when a step holds ``batch_size`` crops of all of them.

    The original's ``floor(num_examples / (batch_per_gpu * gpus_per_dataset))``; e.g. 3M crops, batch 35 over 7
    datasets -> 600,000 iterations.
    """
    return num_examples * num_datasets // batch_size


# ---------------------------------------------------------------------------------------------- files and names
def _config_folder():
    return resources.files("mseg_semantic").joinpath("config", "train")


def _walk_yaml(folder, prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for item in folder.iterdir():
        if item.is_dir():
            found += _walk_yaml(item, f"{prefix}{item.name}/")
        elif item.name.endswith(".yaml"):
            found.append((prefix + item.name.removesuffix(".yaml"), item))
    return found


def list_train_configs() -> list[tuple[str, str]]:
    """``(name, description)`` of every config shipped with the package; the description is its first comment."""
    result = []
    for name, item in sorted(_walk_yaml(_config_folder())):
        first = next((line for line in item.read_text(encoding="utf-8").splitlines() if line.startswith("#")), "")
        result.append((name, first.lstrip("# ").strip()))
    return result


def _read_config_data(name_or_path: str | Path) -> tuple[str, Any, str]:
    """(config name, YAML data, where it came from) for a YAML path or the name of a shipped config."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.is_file():
        return path.stem, read_yaml(path), str(path)
    shipped = dict(_walk_yaml(_config_folder()))
    key = text_name.removesuffix(".yaml")
    if key in shipped:
        return key, parse_yaml(shipped[key].read_text(encoding="utf-8"), f"config {key}"), f"config {key}"
    what = "no such config file" if path.suffix in (".yaml", ".yml") else "unknown config"
    hint = did_you_mean(key, list(shipped)).removeprefix(", ")
    hint += " " * bool(hint)
    raise InputError(f"{text_name}: {what}; {hint}'mseg train --list-configs' lists the shipped ones")


def load_train_config(
    name_or_path: str | Path,
    overrides: Sequence[str] = (),
    **values: Any,
) -> tuple[str, TrainConfig]:
    """Read, override and validate a config; returns ``(name, config)``.

    ``overrides``: ``"dotted.key=yaml value"`` strings (the command line's ``--set``); ``values``: top-level keys
    set directly (``data_root=...``, ``max_iters=...``; None values are ignored). Raises :class:`InputError`.
    """
    name, raw, source = _read_config_data(name_or_path)
    raw = apply_overrides({} if raw is None else raw, overrides, source)
    origins = {item.partition("=")[0].strip(): "--set" for item in overrides}
    for key, value in values.items():
        if value is not None:
            raw = set_key(raw, TrainConfig, key, value, source="arguments")
            origins[key] = "arguments"
    return name, config_from_dict(raw, source, origins)


def config_from_dict(
    raw: Mapping[str, Any], source: str = "config", origins: Mapping[str, str] | None = None
) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from plain data (the YAML layout)."""
    try:
        config = read_config(TrainConfig, raw, source=source, origins=origins, shorthand=_SHORTHAND)
        check_config(config)
    except ConfigError as exc:
        raise exc.located(source, origins) from None
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data in the YAML layout (tuples as lists), e.g. to save the resolved config next to the run."""
    return to_plain(config)


def apply_overrides(raw: Any, overrides: Sequence[str], source: str = "config") -> dict[str, Any]:
    """Apply ``key=value`` strings (values are YAML) to the raw config data; keys are checked against the schema."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping of keys to values at the top level, got {show(raw)}", source=source)
    raw = dict(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE (e.g. optim.base_lr=0.02), got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text  # not YAML (e.g. a path with a colon): take it as a string
        raw = set_key(raw, TrainConfig, key.strip(), value, source="--set", shorthand=_SHORTHAND)
    return raw


# ---------------------------------------------------------------------------------------------- validation
def check_config(config: TrainConfig) -> None:
    """Check the values that types cannot: names that must exist, ranges, and how keys fit together.

    Raises :class:`ConfigError` naming the dotted key (the first problem found, in the order of the sections).
    """
    _check_datasets(config)
    _check_numbers(config)
    _check_model(config)
    _check_transform(config)
    check(config.optim.base_lr > 0, "optim.base_lr", f"must be positive, got {config.optim.base_lr}")
    _check_baselines(config)
    _check_loss(config)
    check(
        config.val.every == 0 or any(d.val_list for d in config.datasets),
        "val.every",
        "validation is on but no dataset has a val_list",
    )


def _check_datasets(config: TrainConfig) -> None:
    """The modes, and datasets that exist, once each, and map to the taxonomy trained."""
    from mseg_semantic.taxonomy import TaxonomyConverter

    check(
        bool(config.datasets),
        "datasets",
        "no dataset given; this config expects them on the command line, e.g. --set datasets=[cityscapes-19-relabeled]",
    )
    choices = {"taxonomy.mode": TAXONOMY_MODES, "dataset_layout": LAYOUTS, "precision": TORCH_PRECISIONS}
    for key, allowed in choices.items():
        check_choice(_get(config, key), allowed, key)
    mode = config.taxonomy.mode
    names = [dataset.name for dataset in config.datasets]
    for i, name in enumerate(names):
        check(name not in names[:i], f"datasets.{i}.name", f"{name} is listed twice")
    check(
        mode != "own" or len(names) == 1,
        "taxonomy.mode",
        f"'own' trains one dataset in its own classes, but {len(names)} datasets are listed; "
        "use 'universal' to train them together",
    )
    target = resolve_taxonomies(config.taxonomy, config.datasets)  # unknown dataset names raise here
    if mode == "own":
        return  # the one dataset is trained in its own labels: no map to check
    converter = TaxonomyConverter()
    for i, name in enumerate(names):
        try:
            converter.lookup_table(name, target.name)
        except MsegError as exc:
            problem = f"cannot train {name} in the {target.name} taxonomy: {exc}"
            raise ConfigError(problem, f"datasets.{i}.name") from None


def _check_numbers(config: TrainConfig) -> None:
    """Lower bounds, and a batch that splits evenly over the datasets into at least one iteration."""
    count = len(config.datasets)
    for key, lowest in _MINIMUM.items():
        value = _get(config, key)
        check(value is None or value >= lowest, key, f"must be at least {lowest}, got {value}")
    check(
        config.batch_size % count == 0,
        "batch_size",
        f"{config.batch_size} is not a multiple of the {count} datasets (every step takes the same number of "
        f"crops from each); use {max(count, config.batch_size // count * count)}",
    )
    check(config.total_iters() >= 1, "num_examples", "gives less than one iteration for this batch_size")


def _check_model(config: TrainConfig) -> None:
    """A known architecture, HRNet's stage config where (and only where) it is needed, PSPNet's crop sizes."""
    from mseg_semantic.models import list_models, load_hrnet_config

    model, t = config.model, config.transform
    check_choice(model.arch, list_models(), "model.arch")
    if model.arch == "hrnet":
        check(model.hrnet is not None, "model.hrnet", "arch 'hrnet' needs its stage config (STAGE1..STAGE4)")
        try:
            load_hrnet_config(model.hrnet)
        except ConfigError as exc:
            raise exc.inside("model.hrnet") from None
    else:
        check(model.hrnet is None, "model.hrnet", f"is only for arch 'hrnet', not {model.arch!r}")
    if model.arch.startswith("pspnet"):
        check(
            all((c - 1) % 8 == 0 for c in t.crop),
            "transform.crop",
            f"PSPNet needs crop sizes of the form 8k+1 (473, 593, 713), got {list(t.crop)}",
        )


def _check_transform(config: TrainConfig) -> None:
    """The augmentation's ranges and probabilities."""
    t = config.transform
    scale, rotate = list(t.scale), list(t.rotate)
    check(0 < scale[0] <= scale[1], "transform.scale", f"must be [min, max] with 0 < min <= max, got {scale}")
    check(rotate[0] <= rotate[1], "transform.rotate", f"must be [min, max] degrees, got {rotate}")
    for name in ("rotate_prob", "blur_prob", "flip_prob", "grayscale_prob"):
        value = getattr(t, name)
        check(0.0 <= value <= 1.0, f"transform.{name}", f"must lie in [0, 1], got {value}")
    kernel = list(t.blur_kernel)
    check(
        3 <= kernel[0] <= kernel[1] and kernel[0] % 2 == kernel[1] % 2 == 1,
        "transform.blur_kernel",
        f"must be [min, max] odd kernel sizes with 3 <= min <= max, got {kernel}",
    )


def _check_loss(config: TrainConfig) -> None:
    """The pixel loss's options: class weighting and OHEM (``loss.ccsa`` is a baseline: :func:`_check_baselines`)."""
    check_choice(config.loss.class_weighting, CLASS_WEIGHTINGS, "loss.class_weighting")
    ohem = config.loss.ohem
    check(
        ohem.thresh is None or 0.0 <= ohem.thresh <= 1.0,
        "loss.ohem.thresh",
        f"must be a probability in [0, 1] (or null: off), got {ohem.thresh}",
    )
    check(0.0 < ohem.min_kept <= 1.0, "loss.ohem.min_kept", f"must be a share in (0, 1], got {ohem.min_kept}")


def _check_baselines(config: TrainConfig) -> None:
    """The paper's two baselines: MGDA (``optim.multi_objective``) and CCSA (``loss.ccsa``)."""
    from mseg_semantic.training.ccsa import EMBEDDING_POINTS, embedding_point
    from mseg_semantic.training.min_norm import NORMALIZATIONS

    optim, ccsa = config.optim, config.loss.ccsa
    count = len(config.datasets)
    check_choice(optim.multi_objective, MULTI_OBJECTIVE, "optim.multi_objective")
    check_choice(optim.mgda_normalization, NORMALIZATIONS, "optim.mgda_normalization")
    if optim.multi_objective == "mgda":
        check(
            count >= 2,
            "optim.multi_objective",
            f"MGDA treats each dataset as a task and needs at least 2 datasets, got {count}",
        )
        check(
            config.precision != "fp16",
            "precision",
            "fp16 is not supported with optim.multi_objective mgda (its loss scaling would enter the gradients "
            "MGDA compares); use fp32 (the original) or bf16",
        )
    check(0.0 <= ccsa.weight <= 1.0, "loss.ccsa.weight", f"must lie in [0, 1], got {ccsa.weight}")
    check(ccsa.margin > 0, "loss.ccsa.margin", f"must be positive, got {ccsa.margin}")
    if ccsa.weight == 0:
        return
    check(
        count >= 2,
        "loss.ccsa.weight",
        f"CCSA aligns embeddings across datasets and needs at least 2 datasets, got {count}",
    )
    check(
        config.dataset_layout == "mixed",
        "dataset_layout",
        "loss.ccsa pairs crops of different datasets within each process's batch: use dataset_layout mixed "
        "(per_rank gives a process crops of one dataset only)",
    )
    check(
        optim.multi_objective == "none",
        "loss.ccsa.weight",
        "CCSA cannot be combined with optim.multi_objective mgda: its loss ties datasets together, MGDA needs one "
        "loss per dataset",
    )
    check(
        embedding_point(config.model.arch) is not None,
        "model.arch",
        f"loss.ccsa reads the embedding of {' or '.join(EMBEDDING_POINTS)} models, not of {config.model.arch!r}",
    )


#: The values of ``optim.multi_objective``: plain summed losses, or MGDA's min-norm combination of dataset gradients.
MULTI_OBJECTIVE = ("none", "mgda")

#: The smallest allowed value of the numeric keys (None, where a key may be null, is always allowed).
_MINIMUM = {
    "batch_size": 1, "num_examples": 1, "max_iters": 1, "workers": 0, "log_every": 1,
    "transform.short_size": 1, "transform.crop.0": 1, "transform.crop.1": 1,
    "optim.momentum": 0, "optim.weight_decay": 0, "optim.power": 0, "optim.head_lr_mult": 0, "optim.aux_weight": 0,
    "loss.ccsa.positive_pairs": 1, "loss.ccsa.negative_ratio": 0,
    "checkpoint.every": 1, "checkpoint.keep": 1, "val.every": 0, "val.short_size": 1, "val.max_images": 1,
}  # fmt: skip


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = config[int(part)] if part.isdigit() else getattr(config, part)
    return config
