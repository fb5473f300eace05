"""Typed configuration: one dataclass per section, validated in ``__post_init__``, read from YAML.

A config file has the sections ``data``, ``model``, ``inference``, ``train`` and ``run``; every key
has a default, so an empty file (or ``Config()``) is a valid configuration::

    config = load_config("configs/words_debug.yaml", overrides=["train.lr=0.1", "model.hidden=[64, 32]"])
    save_config(config, "runs/words_debug/config.yaml")   # reloads to an equal Config

Every problem raises :class:`ConfigError`, one line that starts with where the value came from
(the file, or the ``--set`` override) and names the key path, e.g.
``--set train.lr=abc: train.lr expects a number, got 'abc'``.
"""
from __future__ import annotations

import dataclasses
import numbers
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import yaml

from .errors import InputError

ALGORITHMS = ("exact", "converge", "blend")
COUNTING_NUMBERS = ("convex", "bethe", "trw")
VARIANTS = ("unary", "piecewise", "joint", "pretrain_joint")
OPTIMIZERS = ("sgd", "adam")


class ConfigError(InputError):
    """An invalid configuration.  ``detail`` is the message without its source, ``keys`` the key
    paths involved (used to tell which ``--set`` override caused it)."""

    def __init__(self, detail: str, keys: Iterable[str] = (), source: str | None = None):
        self.detail, self.keys, self.source = detail, tuple(keys), source
        super().__init__(f"{source}: {detail}" if source else detail)


# ---------------------------------------------------------------- checks used by __post_init__
# Each takes the section object and a field name, checks (and normalises) the value in place.

def _key(section, name: str) -> str:
    return f"{section.SECTION}.{name}" if section.SECTION else name


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _fail(section, name: str, expected: str, value, hint: str = "") -> typing.NoReturn:
    raise ConfigError(f"{_key(section, name)} {expected}, got {_show(value)}{hint}", [_key(section, name)])


def _choice(section, name: str, options: tuple[str, ...]) -> None:
    value = getattr(section, name)
    if not isinstance(value, str) or value not in options:
        _fail(section, name, f"must be one of {', '.join(options)}", value)


def _bool(section, name: str) -> None:
    value = getattr(section, name)
    if not isinstance(value, bool):
        _fail(section, name, "expects true or false", value)


def _str(section, name: str) -> None:
    value = getattr(section, name)
    if not isinstance(value, str) or not value:
        _fail(section, name, "expects a non-empty string", value)


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{'<' if high_open else '<='} {high}"


def _in_range(value, low, high, low_open: bool, high_open: bool) -> bool:
    return ((low is None or (value > low if low_open else value >= low))
            and (high is None or (value < high if high_open else value <= high)))


def _int(section, name: str, low=None, high=None) -> None:
    value = getattr(section, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(section, name, "expects an integer", value)
    if not _in_range(value, low, high, False, False):
        _fail(section, name, f"must be {_range_text(low, high, False, False)}", value)
    setattr(section, name, int(value))


def _number(section, name: str, low=None, high=None, low_open=False, high_open=False) -> None:
    """A float field; ints are accepted and converted."""
    value = getattr(section, name)
    if isinstance(value, str):
        # YAML 1.1 reads exponents without a dot (1e-4) as strings; take them as the number meant
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(section, name, "expects a number", value)
    if not _in_range(value, low, high, low_open, high_open):
        _fail(section, name, f"must be {_range_text(low, high, low_open, high_open)}", value)
    setattr(section, name, float(value))


def _int_list(section, name: str, min_len: int = 1, max_len: int | None = None, low: int = 1) -> None:
    value = getattr(section, name)
    if not isinstance(value, (list, tuple)) or any(
            isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value):
        _fail(section, name, "expects a list of integers", value)
    if len(value) < min_len or (max_len is not None and len(value) > max_len):
        count = f"{min_len} to {max_len}" if max_len is not None else f"at least {min_len}"
        _fail(section, name, f"expects {count} entries", list(value))
    for i, v in enumerate(value):
        if v < low:
            raise ConfigError(f"{_key(section, name)}[{i}] must be >= {low}, got {v}", [_key(section, name)])
    setattr(section, name, [int(v) for v in value])


# ---------------------------------------------------------------- the sections

@dataclass
class DataConfig:
    SECTION: ClassVar[str] = "data"
    path: str = "data/words.h5"
    # the task (application) of the data: a built-in name (words), package.module:Name of a
    # Task subclass, or auto: the data file's root attribute 'task' (words if the file is missing)
    task: str = "auto"
    generate: bool = True       # create the file (with the settings below) if it is missing
    num_train: int = 10000
    num_val: int = 2000
    num_test: int = 2000
    seed: int = 0

    def __post_init__(self):
        _str(self, "path")
        _str(self, "task")
        _bool(self, "generate")
        for name in ("num_train", "num_val", "num_test"):
            _int(self, name, low=1)
        _int(self, "seed", low=0)


class ModelConfig:
    """The ``model`` section: ``class`` names the model (``auto``: the task's default model; a
    built-in name; ``package.module:Name`` or ``path/to/file.py:Name`` of a user's
    StructuredModel), every other key is an option of that model, declared by its ``Options``
    dataclass and checked by type (and by the ranges in the fields' metadata).  Until the config
    knows its task, the keys wait in ``values``; ``options`` is the checked dataclass."""

    SECTION: ClassVar[str] = "model"

    def __init__(self, cls: str = "auto", options=None, **values):
        self.cls, self.options, self.values = cls, options, values
        if not isinstance(cls, str) or not cls:
            _fail(self, "class", "expects a model name", cls)

    def resolve(self, task: str | None) -> None:
        """Check the option keys against the model class's Options (found through the task)."""
        from .tasks import get_model_class

        if self.options is not None:
            return
        try:
            options_class = get_model_class(self.cls, task).Options
        except ConfigError:
            raise
        except InputError as error:
            raise ConfigError(str(error), ["model.class"]) from None
        names = [f.name for f in dataclasses.fields(options_class)]
        for key in self.values:
            if key not in names:
                raise ConfigError(f"unknown key 'model.{key}'; known keys of model: class, "
                                  f"{', '.join(names)}", [f"model.{key}"])
        self.options = check_fields(options_class(**self.values), "model")
        self.values = {}

    def __getattr__(self, name):   # config.model.order: the option's value
        options = self.__dict__.get("options")
        if options is not None and name in {f.name for f in dataclasses.fields(options)}:
            return getattr(options, name)
        raise AttributeError(f"model has no option {name!r}")

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self.options) if self.options is not None else self.values
        return {"class": self.cls, **values}

    def __eq__(self, other):
        return isinstance(other, ModelConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"ModelConfig({self.to_dict()})"


def check_fields(section, name: str):
    """Check a dataclass's values by their type annotations (int, float, bool, str, Literal
    choices, list[int]) and the ranges in each field's metadata (low, high, min_len, max_len);
    ints are accepted for floats.  Returns the section."""
    hints = typing.get_type_hints(type(section))
    section.SECTION = name
    try:
        for f in dataclasses.fields(section):
            kind, meta = hints[f.name], f.metadata
            if typing.get_origin(kind) is typing.Literal:
                _choice(section, f.name, typing.get_args(kind))
            elif kind is bool:
                _bool(section, f.name)
            elif kind is int:
                _int(section, f.name, meta.get("low"), meta.get("high"))
            elif kind is float:
                _number(section, f.name, meta.get("low"), meta.get("high"))
            elif kind is str:
                _str(section, f.name)
            elif typing.get_origin(kind) is list and typing.get_args(kind) == (int,):
                _int_list(section, f.name, meta.get("min_len", 0), meta.get("max_len"),
                          meta.get("low", 1))
    finally:
        del section.SECTION
    return section


@dataclass
class InferenceConfig:
    SECTION: ClassVar[str] = "inference"
    algorithm: str = "blend"
    counting_numbers: str = "convex"
    eps: float = 1.0
    sweeps: int = 1                 # blend: sweeps per step
    max_sweeps: int = 100           # converge: sweep budget
    tol: float = 1e-4               # converge: stop when the largest message change is below

    def __post_init__(self):
        _choice(self, "algorithm", ALGORITHMS)
        _choice(self, "counting_numbers", COUNTING_NUMBERS)
        _number(self, "eps", low=0, low_open=True)
        _int(self, "sweeps", low=1)
        _int(self, "max_sweeps", low=1)
        _number(self, "tol", low=0)


@dataclass
class TrainConfig:
    SECTION: ClassVar[str] = "train"
    variant: str = "joint"
    epochs: int = 20
    pretrain_epochs: int = 5        # pretrain_joint: unary-only epochs before joint training
    batch_size: int = 50
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    plateau_factor: float = 0.5     # lr *= factor after `patience` epochs without a better val loss
    patience: int = 2
    max_steps: int = 0              # stop after this many steps; 0 = no limit
    # local: each rank shuffles its own shard (seed, epoch, rank); global: every step takes the
    # same global samples whatever the number of ranks (reproducible across rank counts: tests)
    batching: str = "local"

    def __post_init__(self):
        _choice(self, "variant", VARIANTS)
        _choice(self, "batching", ("local", "global"))
        _int(self, "epochs", low=1)
        _int(self, "pretrain_epochs", low=0)
        if self.variant == "pretrain_joint" and self.pretrain_epochs >= self.epochs:
            raise ConfigError(
                f"train.pretrain_epochs must be < train.epochs ({self.epochs}) when train.variant is "
                f"pretrain_joint, got {self.pretrain_epochs}",
                ["train.pretrain_epochs", "train.epochs", "train.variant"])
        _int(self, "batch_size", low=1)
        _choice(self, "optimizer", OPTIMIZERS)
        _number(self, "lr", low=0, low_open=True)
        _number(self, "momentum", low=0, high=1, high_open=True)
        _number(self, "weight_decay", low=0)
        _number(self, "plateau_factor", low=0, high=1, low_open=True, high_open=True)
        _int(self, "patience", low=0)
        _int(self, "max_steps", low=0)


@dataclass
class RunConfig:
    SECTION: ClassVar[str] = "run"
    dir: str = "runs/words"
    seed: int = 0
    # torch CPU threads; 0 = torch default.  1 by default: MPI runs one rank per core, and small
    # nets on 2 threads were many times slower once a core was busy (bench/results/choices.md)
    threads: int = 1
    dtype: str = "float32"          # parameters and activations; float64 for exact parity checks
    communicator: str = "auto"      # auto: MPI when a launcher started several processes; mpi; none
    bucket_mb: float = 25.0         # gradient Allreduce bucket size (MiB)
    check_sync_every: int = 0       # debug: every N steps check that all ranks' parameters agree
    checkpoint_every: int = 0       # write RUN_DIR/checkpoints/step-*.h5 every N steps and at the end
    device: str = "auto"            # auto | cpu | cuda: one GPU per rank, by local rank (auto: if CuPy sees one)
    # auto | yes | no: hand device buffers to MPI (auto: when the MPI says it supports CUDA)
    cuda_aware_mpi: str = "auto"
    # blend's messages per rank: bytes (int) or a size (300MiB, 2GiB, 1.5GB); auto: half the
    # memory available at start (a GPU's own, or the node's shared by its ranks); unlimited
    message_memory: int | str = "auto"

    def __post_init__(self):
        _str(self, "dir")
        _int(self, "seed", low=0)
        _int(self, "threads", low=0)
        _choice(self, "dtype", ("float32", "float64"))
        _choice(self, "communicator", ("auto", "mpi", "none"))
        _number(self, "bucket_mb", low=0, low_open=True)
        _int(self, "check_sync_every", low=0)
        _int(self, "checkpoint_every", low=0)
        _choice(self, "device", ("auto", "cpu", "cuda"))
        if isinstance(self.cuda_aware_mpi, bool):   # YAML 1.1 reads a bare yes / no as a boolean
            self.cuda_aware_mpi = "yes" if self.cuda_aware_mpi else "no"
        _choice(self, "cuda_aware_mpi", ("auto", "yes", "no"))
        if self.message_memory not in ("auto", "unlimited") \
                and byte_count(self.message_memory) is None:
            _fail(self, "message_memory", "expects auto, unlimited, a number of bytes or a size "
                  "such as 300MiB or 2GiB", self.message_memory)


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def byte_count(value) -> int | None:
    """Bytes of a size: a positive int, or text like '300MiB', '2 GiB', '1.5GB' (decimal and
    binary units); None when `value` is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):   # a YAML float such as 2.5e+9 too, if whole
        return int(value) if 1 <= value < 2**63 and float(value).is_integer() else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    unit = text[len(number):].strip() if number else ""
    try:
        count = float(number) * _BYTE_UNITS[unit]
    except (KeyError, ValueError):
        return None
    return int(count) if count >= 1 and count < 2**63 else None


@dataclass
class Config:
    SECTION: ClassVar[str] = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        hints = typing.get_type_hints(Config)
        for f in dataclasses.fields(self):
            cls = hints[f.name]
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                setattr(self, f.name, _from_dict(cls, value))
            elif not isinstance(value, cls):
                _fail(self, f.name, f"expects a {cls.__name__}", type(value).__name__)
        self.model.resolve(self.task)

    def but(self, **sections) -> "Config":
        """A copy with some keys changed: ``config.but(train={"lr": 0.1}, run={"seed": 2})``."""
        data = config_to_dict(self)
        for name, changes in sections.items():
            data[name] = {**data[name], **changes}
        return config_from_dict(data)

    @property
    def task(self) -> str:
        """The task name: data.task, or (auto) the data file's 'task' attribute, else words."""
        if self.data.task != "auto":
            return self.data.task
        from .data import file_task
        return file_task(self.data.path) or "words"


# ---------------------------------------------------------------- dicts and files

_SECTIONS = [f.name for f in dataclasses.fields(Config)]


def _from_dict(cls, data: Mapping):
    """Build the dataclass ``cls`` from a mapping, recursing into nested dataclasses by their type
    annotations.  Unknown keys are errors; missing keys take their defaults."""
    if cls is ModelConfig:
        values = dict(data)
        return ModelConfig(values.pop("class", "auto"), **values)
    prefix = f"{cls.SECTION}." if cls.SECTION else ""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            known = f"known keys of {cls.SECTION}" if cls.SECTION else "known keys"
            raise ConfigError(f"unknown key '{prefix}{key}'; {known}: {', '.join(names)}", [f"{prefix}{key}"])
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]) or hints[name] is ModelConfig:
            if value is None:
                value = {}      # an empty section ("train:") keeps its defaults
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{name} expects a mapping of keys, got {_show(value)}",
                                  [f"{prefix}{name}"])
            value = _from_dict(hints[name], value)
        values[name] = value
    return cls(**values)


def config_from_dict(data: Mapping | None, source: str | None = None) -> Config:
    """A validated Config from nested dicts (as read from YAML, or stored with a checkpoint).
    ``source`` (a file name, say) starts the message of any ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping with the sections {', '.join(_SECTIONS)}, "
                          f"got {type(data).__name__}", source=source)
    try:
        return _from_dict(Config, data)
    except ConfigError as error:
        raise ConfigError(error.detail, error.keys, source) from None


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dicts, keys in field order (ClassVars such as SECTION are not fields)."""
    return {f.name: getattr(config, f.name).to_dict() if f.name == "model"
            else dataclasses.asdict(getattr(config, f.name)) for f in dataclasses.fields(config)}


class _Dumper(yaml.SafeDumper):
    """Block-style sections with one-line lists (``hidden: [64, 32]``), as in configs/."""


_Dumper.add_representer(list, lambda dumper, value: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", value, flow_style=True))


def config_to_yaml(config: Config) -> str:
    """The YAML text of ``config`` (keys in field order); load_config reads it back equal."""
    return yaml.dump(config_to_dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def save_config(config: Config, path) -> None:
    """Write ``config`` as YAML (creating the parent folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_yaml(config))


def _parse_override(item: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` -> (section, key, value parsed as YAML)."""
    where = f"--set {item}"
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError("expected section.key=value, e.g. train.lr=0.1", source=where)
    path, text = (part.strip() for part in item.split("=", 1))
    section, _, name = path.partition(".")
    if section not in _SECTIONS:
        raise ConfigError(f"unknown key '{section}'; known keys: {', '.join(_SECTIONS)}", source=where)
    names = [f.name for f in dataclasses.fields(typing.get_type_hints(Config)[section])] \
        if section != "model" else [name]   # the model's keys are checked once its class is known
    if name not in names or not name:
        what = f"unknown key '{path}'" if name else "expected section.key=value"
        raise ConfigError(f"{what}; known keys of {section}: {', '.join(names)}", source=where)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML value {text!r} ({getattr(error, 'problem', None) or error})",
                          [path], where) from None
    return section, name, value


def load_config(path, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config file, apply ``--set`` style overrides ("section.key=value", the value
    read as YAML), and validate.  Any problem raises a one-line ConfigError naming the file or
    the override and the key path."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError("no such config file", source=source) from None
    except OSError as error:
        raise ConfigError(f"cannot read the config file ({error.strerror or error})", source=source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        if mark is not None:
            source = f"{source}:{mark.line + 1}:{mark.column + 1}"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", source=source) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        return config_from_dict(data, source)    # raises: not a mapping

    if isinstance(overrides, str):
        overrides = [overrides]
    data = {key: dict(value) if isinstance(value, Mapping) else value for key, value in data.items()}
    applied = {}
    for item in overrides:
        section, name, value = _parse_override(item)
        if data.get(section) is None:
            data[section] = {}
        if isinstance(data[section], Mapping):    # otherwise the file's own error is reported
            data[section][name] = value
            applied[f"{section}.{name}"] = item
    try:
        return config_from_dict(data)
    except ConfigError as error:
        culprits = [applied[key] for key in error.keys if key in applied]
        raise ConfigError(error.detail, error.keys,
                          f"--set {culprits[0]}" if culprits else source) from None
