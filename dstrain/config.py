"""Typed configuration: one dataclass per section, read from YAML, checked by its annotations.

A config file has the sections ``data``, ``model``, ``inference``, ``train``, ``run`` and
``debug``; every key has a default, so an empty file (or ``Config()``) is a valid configuration::

    config = load_config("configs/words_debug.yaml", overrides=["train.lr=0.1", "model.hidden=[64, 32]"])
    save_config(config, "runs/words_debug/config.yaml")   # reloads to an equal Config

Each key is declared once: its type (``int``, ``float``, ``bool``, ``str``, ``list[int]``, or a
``Literal`` of the allowed choices) and, in the field's metadata, its range (``low``, ``high``,
``low_open``, ``high_open``, ``min_len``, ``max_len``).  ``check_fields`` checks any such
dataclass by those declarations (the sections, and the model classes' ``Options``).

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
from typing import Any, ClassVar, Iterable, Literal, Mapping

import yaml

from .errors import InputError
from .graph.region_graph import COUNTING_PRESETS

# the choices of the config's keys, each declared once
Algorithm = Literal["exact", "converge", "blend"]
CountingNumbers = Literal[COUNTING_PRESETS]     # the engine's presets (dstrain.graph)
Variant = Literal["unary", "piecewise", "joint", "pretrain_joint"]
Optimizer = Literal["sgd", "adam"]
Batching = Literal["local", "global"]
Dtype = Literal["float32", "float64"]
Communicator = Literal["auto", "mpi", "none"]
Device = Literal["auto", "cpu", "cuda"]
CudaAwareMpi = Literal["auto", "yes", "no"]


class ConfigError(InputError):
    """An invalid configuration.  ``detail`` is the message without its source, ``keys`` the key
    paths involved (used to tell which ``--set`` override caused it)."""

    def __init__(self, detail: str, keys: Iterable[str] = (), source: str | None = None):
        self.detail, self.keys, self.source = detail, tuple(keys), source
        super().__init__(f"{source}: {detail}" if source else detail)


# ---------------------------------------------------------------- the one check

def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _fail(key: str, expected: str, value) -> typing.NoReturn:
    raise ConfigError(f"{key} {expected}, got {_show(value)}", [key])


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{'<' if high_open else '<='} {high}"


def _check_range(key: str, value, meta: Mapping) -> None:
    low, high = meta.get("low"), meta.get("high")
    low_open, high_open = meta.get("low_open", False), meta.get("high_open", False)
    if ((low is not None and not (value > low if low_open else value >= low))
            or (high is not None and not (value < high if high_open else value <= high))):
        _fail(key, f"must be {_range_text(low, high, low_open, high_open)}", value)


def check_value(key: str, kind, value, meta: Mapping = {}):
    """``value`` checked against the annotation ``kind`` and the range in ``meta``; returns it
    normalised (ints taken for floats, a YAML 1.1 string such as '1e-4' taken as the number)."""
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            _fail(key, f"must be one of {', '.join(map(str, choices))}", value)
    elif kind is bool:
        if not isinstance(value, bool):
            _fail(key, "expects true or false", value)
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            _fail(key, "expects an integer", value)
        value = int(value)
        _check_range(key, value, meta)
    elif kind is float:
        if isinstance(value, str):   # YAML 1.1 reads exponents without a dot (1e-4) as strings
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            _fail(key, "expects a number", value)
        value = float(value)
        _check_range(key, value, meta)
    elif kind is str:
        if not isinstance(value, str) or not value:
            _fail(key, "expects a non-empty string", value)
    elif typing.get_origin(kind) is list and typing.get_args(kind) == (int,):
        if not isinstance(value, (list, tuple)) or any(
                isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value):
            _fail(key, "expects a list of integers", value)
        min_len, max_len = meta.get("min_len", 0), meta.get("max_len")
        if len(value) < min_len or (max_len is not None and len(value) > max_len):
            count = f"{min_len} to {max_len}" if max_len is not None else f"at least {min_len}"
            _fail(key, f"expects {count} entries", list(value))
        low = meta.get("low", 1)
        for i, v in enumerate(value):
            if v < low:
                raise ConfigError(f"{key}[{i}] must be >= {low}, got {v}", [key])
        value = [int(v) for v in value]
    return value


def check_fields(section, name: str):
    """Check (and normalise in place) every field of the dataclass ``section`` by its type
    annotation and metadata; ``name`` prefixes the key paths in messages.  Returns the section."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        key = f"{name}.{f.name}" if name else f.name
        setattr(section, f.name, check_value(key, hints[f.name], getattr(section, f.name), f.metadata))
    return section


# ---------------------------------------------------------------- the sections

POSITIVE = {"low": 0, "low_open": True}
AT_LEAST_0 = {"low": 0}
AT_LEAST_1 = {"low": 1}


@dataclass
class Section:
    """A config section: its keys are the dataclass fields, checked by ``check_fields``."""
    SECTION: ClassVar[str] = ""

    def __post_init__(self):
        check_fields(self, self.SECTION)


@dataclass
class DataConfig(Section):
    SECTION: ClassVar[str] = "data"
    path: str = "data/words.h5"
    # the task (application) of the data: a built-in name (words), package.module:Name of a
    # Task subclass, or auto: the data file's root attribute 'task' (words if the file is missing)
    task: str = "auto"
    generate: bool = True       # create the file (with the settings below) if it is missing
    num_train: int = field(default=10000, metadata=AT_LEAST_1)
    num_val: int = field(default=2000, metadata=AT_LEAST_1)
    num_test: int = field(default=2000, metadata=AT_LEAST_1)
    seed: int = field(default=0, metadata=AT_LEAST_0)


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
            _fail("model.class", "expects a model name", cls)

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


@dataclass
class InferenceConfig(Section):
    """The ``inference`` section; the learner runs it as ``dstrain.learning.InferenceOptions``."""
    SECTION: ClassVar[str] = "inference"
    algorithm: Algorithm = "blend"
    counting_numbers: CountingNumbers = "convex"
    eps: float = field(default=1.0, metadata=POSITIVE)
    sweeps: int = field(default=1, metadata=AT_LEAST_1)         # blend: sweeps per step
    max_sweeps: int = field(default=100, metadata=AT_LEAST_1)   # converge: sweep budget
    # converge: stop when the largest message change is below
    tol: float = field(default=1e-4, metadata=AT_LEAST_0)

    def but(self, **changes):
        """A checked copy with some keys changed."""
        return dataclasses.replace(self, **changes)


@dataclass
class TrainConfig(Section):
    SECTION: ClassVar[str] = "train"
    variant: Variant = "joint"
    epochs: int = field(default=20, metadata=AT_LEAST_1)
    # pretrain_joint: unary-only epochs before joint training
    pretrain_epochs: int = field(default=5, metadata=AT_LEAST_0)
    batch_size: int = field(default=50, metadata=AT_LEAST_1)
    optimizer: Optimizer = "sgd"
    lr: float = field(default=0.05, metadata=POSITIVE)
    momentum: float = field(default=0.9, metadata={"low": 0, "high": 1, "high_open": True})
    weight_decay: float = field(default=1e-4, metadata=AT_LEAST_0)
    # lr *= factor after `patience` epochs without a better val loss
    plateau_factor: float = field(default=0.5, metadata={"low": 0, "high": 1, "low_open": True,
                                                         "high_open": True})
    patience: int = field(default=2, metadata=AT_LEAST_0)
    max_steps: int = field(default=0, metadata=AT_LEAST_0)   # stop after this many steps; 0 = no limit
    # local: each rank shuffles its own shard (seed, epoch, rank); global: every step takes the
    # same global samples whatever the number of ranks (reproducible across rank counts: tests)
    batching: Batching = "local"

    def __post_init__(self):
        super().__post_init__()
        if self.variant == "pretrain_joint" and self.pretrain_epochs >= self.epochs:
            raise ConfigError(
                f"train.pretrain_epochs must be < train.epochs ({self.epochs}) when train.variant is "
                f"pretrain_joint, got {self.pretrain_epochs}",
                ["train.pretrain_epochs", "train.epochs", "train.variant"])


@dataclass
class RunConfig(Section):
    SECTION: ClassVar[str] = "run"
    dir: str = "runs/words"
    seed: int = field(default=0, metadata=AT_LEAST_0)
    # torch CPU threads; 0 = torch default.  1 by default: MPI runs one rank per core, and small
    # nets on 2 threads were many times slower once a core was busy (bench/results/choices.md)
    threads: int = field(default=1, metadata=AT_LEAST_0)
    dtype: Dtype = "float32"          # parameters and activations; float64 for exact parity checks
    communicator: Communicator = "auto"   # auto: MPI when a launcher started several processes
    bucket_mb: float = field(default=25.0, metadata=POSITIVE)   # gradient Allreduce bucket (MiB)
    # every N steps check that all ranks' parameters agree (0: never)
    check_sync_every: int = field(default=0, metadata=AT_LEAST_0)
    # write RUN_DIR/checkpoints/step-*.h5 every N steps and at the end (0: never)
    checkpoint_every: int = field(default=0, metadata=AT_LEAST_0)
    device: Device = "auto"   # cuda: one GPU per rank, by local rank (auto: if CuPy sees one)
    # hand device buffers to MPI (auto: when the MPI says it supports CUDA)
    cuda_aware_mpi: CudaAwareMpi = "auto"
    # blend's messages per rank: bytes (int) or a size (300MiB, 2GiB, 1.5GB); auto: half the
    # memory available at start (a GPU's own, or the node's shared by its ranks); unlimited
    message_memory: int | str = "auto"

    def __post_init__(self):
        if isinstance(self.cuda_aware_mpi, bool):   # YAML 1.1 reads a bare yes / no as a boolean
            self.cuda_aware_mpi = "yes" if self.cuda_aware_mpi else "no"
        super().__post_init__()
        if self.message_memory not in ("auto", "unlimited") \
                and byte_count(self.message_memory) is None:
            _fail("run.message_memory", "expects auto, unlimited, a number of bytes or a size "
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
class DebugConfig(Section):
    """Switches for testing dstrain itself; a normal run leaves them off."""
    SECTION: ClassVar[str] = "debug"
    # raise an error at this step (counted from 1) on rank fault_rank, so tests can check that
    # one failing rank ends the whole job; 0: off
    fault_step: int = field(default=0, metadata=AT_LEAST_0)
    fault_rank: int = field(default=0, metadata=AT_LEAST_0)
    # on the CPU, run inference through the CUDA kernels compiled for the host
    # (dstrain.gpu.emulator): the GPU code path, checked against the CPU path without a GPU
    emulate_kernels: bool = False


@dataclass
class Config:
    SECTION: ClassVar[str] = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def __post_init__(self):
        hints = typing.get_type_hints(Config)
        for f in dataclasses.fields(self):
            cls = hints[f.name]
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                setattr(self, f.name, _from_dict(cls, value))
            elif not isinstance(value, cls):
                _fail(f.name, f"expects a {cls.__name__}", type(value).__name__)
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
