"""Training configs: YAML files read into dataclasses and validated once, so the loop never sees a bad value.

A config is a file shipped in ``mseg_semantic/config/train/`` (named by its path there without ``.yaml``, e.g.
``camvid11`` or ``1080_release/mseg-relabeled-3m``) or a YAML path. Unknown keys, wrong types and impossible
values raise :class:`InputError` naming the dotted key (``optim.base_lr``). ``key=value`` overrides
(``--set``) use the same dotted keys, list items by index (``datasets.0.root=/data``); values are YAML
(``transform.crop=[473,473]``, ``model.backbone_weights=null``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from mseg_semantic.data.sampling import LAYOUTS
from mseg_semantic.errors import InputError, MsegError
from mseg_semantic.precision import PRECISIONS

TAXONOMY_MODES = ("universal", "naive", "own")


@dataclass
class DatasetConfig:
    """One training dataset: its label taxonomy and where its images and split lists are."""

    name: str  # the taxonomy of its label files, e.g. "cityscapes-19-relabeled" or "camvid-11"
    root: str | None = None  # its folder; default: the run's data_root (or data_root/<MSeg folder of the dataset>)
    train_list: str | None = None  # "image label" lines relative to root; default: the list shipped for `name`
    val_list: str | None = None  # for periodic validation; none by default


@dataclass
class ModelConfig:
    arch: str = "hrnet_w48"  # see mseg_semantic.models.list_models()
    hrnet: dict[str, Any] | None = None  # stage config (original YAML layout) for arch "hrnet"
    backbone_weights: str | None = None  # ImageNet classification weights to initialise the backbone from
    weights: str | None = None  # a whole checkpoint (path or zoo name) to fine-tune from (the original `weight`)


@dataclass
class TransformConfig:
    """The augmentation of SPEC 4.6 (see :class:`mseg_semantic.data.TrainTransform`)."""

    short_size: int = 1080
    crop: tuple[int, int] = (713, 713)  # (height, width); one number means a square
    scale: tuple[float, float] = (0.5, 2.0)
    rotate: tuple[float, float] = (-10.0, 10.0)
    rotate_prob: float = 0.5
    blur_prob: float = 0.5
    flip_prob: float = 0.5


@dataclass
class OptimConfig:
    """SGD with per-iteration poly decay ``base_lr * (1 - iter / max_iters) ** power``."""

    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    head_lr_mult: float = 10.0  # PSPNet: LR factor of ppm/cls/aux (HRNet has one LR for everything)
    aux_weight: float = 0.4  # PSPNet: weight of the auxiliary loss


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
    taxonomy: str = "universal"  # universal | naive | own (own: one dataset, trained in its own classes)
    dataset_layout: str = "mixed"  # mixed | per_rank (see mseg_semantic.data.sampling)
    batch_size: int = 16  # crops per optimisation step over all processes (the original configs' batch_size)
    num_examples: int = 1_000_000  # crops per dataset over the run; max_iters follows from it
    max_iters: int | None = None  # overrides the count derived from num_examples
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
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
        """Outputs of the model: 194 (universal), 316 (naive) or the dataset's class count (own)."""
        from mseg_semantic.taxonomy import NUM_NAIVE_CLASSES, NUM_UNIVERSAL_CLASSES, get_taxonomy

        if self.taxonomy == "universal":
            return NUM_UNIVERSAL_CLASSES
        if self.taxonomy == "naive":
            return NUM_NAIVE_CLASSES
        return get_taxonomy(self.datasets[0].name).num_classes

    @property
    def model_taxonomy(self) -> str:
        """The taxonomy of the model's outputs, as recorded in checkpoints."""
        return self.datasets[0].name if self.taxonomy == "own" else self.taxonomy

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


def _read_config_text(name_or_path: str | Path) -> tuple[str, str, str]:
    """(config name, YAML text, where it came from) for a YAML path or the name of a shipped config."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.is_file():
        try:
            return path.stem, path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the config ({exc})") from None
    shipped = dict(_walk_yaml(_config_folder()))
    key = text_name.removesuffix(".yaml")
    if key in shipped:
        return key, shipped[key].read_text(encoding="utf-8"), f"config {key}"
    close = difflib.get_close_matches(key, shipped, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    what = "no such config file" if path.suffix in (".yaml", ".yml") else "unknown config"
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
    name, text, source = _read_config_text(name_or_path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{source} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InputError(f"{source}: expected a mapping of keys to values at the top level")
    raw = apply_overrides(dict(raw), overrides)
    for key, value in values.items():
        if value is not None:
            raw = set_value(raw, key, value, origin=key)
    try:
        config = config_from_dict(raw)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    return name, config


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from plain data (the YAML layout)."""
    config = _from_mapping(TrainConfig, raw, "")
    validate(config)
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data in the YAML layout (tuples as lists), e.g. to save the resolved config next to the run."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


# ---------------------------------------------------------------------------------------------- overrides
def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings to the raw config data; keys are checked against the schema first."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--set expects KEY=VALUE (e.g. optim.base_lr=0.02), got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text  # not YAML (e.g. a path with a colon): take it as a string
        raw = set_value(raw, key, value, origin=f"--set {key}")
    return raw


def set_value(raw: dict[str, Any], key: str, value: Any, origin: str) -> dict[str, Any]:
    """A copy of ``raw`` with the dotted ``key`` set to ``value``; unknown keys raise naming ``origin``."""
    parts = key.split(".")
    _check_path(parts, origin)
    result = copy.deepcopy(raw)
    node: Any = result
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: depth + 1], origin)]
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and parts[depth + 1] in ("name", "root", "train_list", "val_list"):
            child = node[part] = {"name": child}  # a dataset given by name only
        node = child
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts, origin)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise InputError(f"{origin}: {'.'.join(parts[:-1])} is not a section")
    return result


def _list_index(node: list, part: str, path: list[str], origin: str) -> int:
    if not part.isdigit():
        raise InputError(f"{origin}: {'.'.join(path)}: a list is indexed by a number")
    index = int(part)
    if index >= len(node):
        raise InputError(f"{origin}: {'.'.join(path)}: index out of range (the list has {len(node)} item(s))")
    return index


def _check_path(parts: list[str], origin: str) -> None:
    tp: Any = TrainConfig
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        tp = _strip_optional(tp)
        if is_dataclass(tp):
            names = [f.name for f in fields(tp)]
            if part not in names:
                raise InputError(f"{origin}: unknown key {here!r}{_did_you_mean(part, names)}; {_known(tp)}")
            tp = typing.get_type_hints(tp)[part]
        elif typing.get_origin(tp) is list:
            if not part.isdigit():
                raise InputError(f"{origin}: {here}: a list is indexed by a number")
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict or tp is Any:
            return  # free-form (the HRNet stage config is checked when the model is built)
        else:
            raise InputError(f"{origin}: {'.'.join(parts[:depth])} is a value, not a section")


# ---------------------------------------------------------------------------------------------- conversion
def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known(tp: type) -> str:
    return f"known keys{' of ' + tp.__name__ if tp is not TrainConfig else ''}: {', '.join(f.name for f in fields(tp))}"


def _join(where: str, key: str | int) -> str:
    return f"{where}.{key}" if where else str(key)


def _from_mapping(cls: type, data: Any, where: str) -> Any:
    if cls is DatasetConfig and isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping):
        raise InputError(f"{where or 'config'}: expected a mapping of keys, got {data!r}")
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise InputError(f"unknown key {_join(where, key)!r}{_did_you_mean(str(key), names)}; {_known(cls)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        key = _join(where, f.name)
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name], key)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise InputError(f"missing key {key!r}")
    return cls(**values)


def _convert(tp: Any, value: Any, key: str) -> Any:
    optional = typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)
    tp = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise InputError(f"{key}: a value is required (got null)")
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        return _from_mapping(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{key}: expected a list, got {value!r}")
        return [_convert(typing.get_args(tp)[0], v, _join(key, i)) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            value = [value] * len(args)  # one number for both: crop 713 = (713, 713), scale 1.0 = no scaling
        if len(value) != len(args):
            raise InputError(f"{key}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise InputError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        number = _number(value, key)
        if not float(number).is_integer():
            raise InputError(f"{key}: expected an integer, got {value!r}")
        return int(number)
    if tp is float:
        return float(_number(value, key))
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _number(value: Any, key: str) -> int | float:
    if isinstance(value, bool):
        raise InputError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    raise InputError(f"{key}: expected a number, got {value!r}")


# ---------------------------------------------------------------------------------------------- validation
def validate(config: TrainConfig) -> None:
    """Check the values that types cannot: names that must exist, ranges, and how keys fit together."""
    from mseg_semantic.models import list_models, load_hrnet_config
    from mseg_semantic.taxonomy import TaxonomyConverter, get_taxonomy

    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise InputError(f"{key}: {message}")

    require(
        bool(config.datasets),
        "datasets",
        "no dataset given; this config expects them on the command line, e.g. --set datasets=[cityscapes-19-relabeled]",
    )
    require(config.taxonomy in TAXONOMY_MODES, "taxonomy", f"must be one of {TAXONOMY_MODES}, got {config.taxonomy!r}")
    converter = TaxonomyConverter()
    seen: set[str] = set()
    for i, dataset in enumerate(config.datasets):
        key = f"datasets.{i}.name"
        try:
            get_taxonomy(dataset.name)
        except MsegError as exc:
            raise InputError(f"{key}: {exc}") from None
        require(dataset.name not in seen, key, f"{dataset.name} is listed twice")
        seen.add(dataset.name)
        if config.taxonomy in ("universal", "naive"):
            try:
                converter.lookup_table(dataset.name, config.taxonomy)
            except MsegError as exc:
                raise InputError(
                    f"{key}: cannot train {dataset.name} in the {config.taxonomy} taxonomy: {exc}"
                ) from None
    require(
        config.taxonomy != "own" or len(config.datasets) == 1,
        "taxonomy",
        f"'own' trains one dataset in its own classes, but {len(config.datasets)} datasets are listed; "
        "use 'universal' to train them together",
    )
    require(
        config.dataset_layout in LAYOUTS, "dataset_layout", f"must be one of {LAYOUTS}, got {config.dataset_layout!r}"
    )
    num = len(config.datasets)
    require(config.batch_size >= 1, "batch_size", f"must be at least 1, got {config.batch_size}")
    require(
        config.batch_size % num == 0,
        "batch_size",
        f"{config.batch_size} is not a multiple of the {num} datasets (every step takes the same number of crops "
        f"from each); use {max(num, config.batch_size // num * num)}",
    )
    require(config.num_examples >= 1, "num_examples", f"must be positive, got {config.num_examples}")
    require(config.max_iters is None or config.max_iters >= 1, "max_iters", f"must be positive, got {config.max_iters}")
    require(config.total_iters() >= 1, "num_examples", "gives less than one iteration for this batch_size")

    model = config.model
    require(
        model.arch in list_models(), "model.arch", f"unknown arch {model.arch!r}; known: {', '.join(list_models())}"
    )
    if model.arch == "hrnet":
        require(model.hrnet is not None, "model.hrnet", "arch 'hrnet' needs its stage config (STAGE1..STAGE4)")
        try:
            load_hrnet_config(model.hrnet)
        except MsegError as exc:
            raise InputError(f"model.hrnet: {exc}") from None
    else:
        require(model.hrnet is None, "model.hrnet", f"is only for arch 'hrnet', not {model.arch!r}")

    t = config.transform
    require(t.short_size >= 1, "transform.short_size", f"must be positive, got {t.short_size}")
    require(min(t.crop) >= 1, "transform.crop", f"must be positive, got {list(t.crop)}")
    if model.arch.startswith("pspnet"):
        require(
            all((c - 1) % 8 == 0 for c in t.crop),
            "transform.crop",
            f"PSPNet needs crop sizes of the form 8k+1 (473, 593, 713), got {list(t.crop)}",
        )
    require(
        0 < t.scale[0] <= t.scale[1], "transform.scale", f"must be [min, max] with 0 < min <= max, got {list(t.scale)}"
    )
    require(t.rotate[0] <= t.rotate[1], "transform.rotate", f"must be [min, max] degrees, got {list(t.rotate)}")
    for name in ("rotate_prob", "blur_prob", "flip_prob"):
        value = getattr(t, name)
        require(0.0 <= value <= 1.0, f"transform.{name}", f"must lie in [0, 1], got {value}")

    o = config.optim
    require(o.base_lr > 0, "optim.base_lr", f"must be positive, got {o.base_lr}")
    for name in ("momentum", "weight_decay", "power", "head_lr_mult", "aux_weight"):
        require(getattr(o, name) >= 0, f"optim.{name}", f"must not be negative, got {getattr(o, name)}")

    require(config.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}, got {config.precision!r}")
    require(config.workers >= 0, "workers", f"must not be negative, got {config.workers}")
    require(config.log_every >= 1, "log_every", f"must be at least 1, got {config.log_every}")
    require(config.checkpoint.every >= 1, "checkpoint.every", f"must be at least 1, got {config.checkpoint.every}")
    require(config.checkpoint.keep >= 1, "checkpoint.keep", f"must be at least 1, got {config.checkpoint.keep}")
    require(config.val.every >= 0, "val.every", f"must not be negative, got {config.val.every}")
    require(
        config.val.every == 0 or any(d.val_list for d in config.datasets),
        "val.every",
        "validation is on but no dataset has a val_list",
    )
    for name in ("short_size", "max_images"):
        value = getattr(config.val, name)
        require(value is None or value >= 1, f"val.{name}", f"must be positive, got {value}")
