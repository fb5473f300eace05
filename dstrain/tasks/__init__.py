"""Tasks (applications) and models, found by name: one registry for the built-in ones and for a
user's own.

A *task* is an application's data: its HDF5 contract (a reader), a generator of paper-like data
and its default model.  A *model* is a ``StructuredModel`` subclass.  Both are named in the
config: ``data.task`` (or the data file's root attribute ``task``) and ``model.class``; a name is
a built-in one (``words``, ...) or a reference to a user's code, ``package.module:Name`` or
``path/to/file.py:Name``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from ..errors import InputError

# built-in names -> where they live (imported on first use)
TASKS = {"words": "dstrain.tasks.words:WordsTask", "tagging": "dstrain.tasks.tagging:TaggingTask",
         "segmentation": "dstrain.tasks.segmentation:SegmentationTask"}
MODELS = {"words": "dstrain.tasks.words.model:WordCRF",
          "tagging": "dstrain.tasks.tagging.model:TaggingCRF",
          "segmentation_grid": "dstrain.tasks.segmentation.model:GridCRF",
          "segmentation_dense": "dstrain.tasks.segmentation.model:DenseCRFModel"}


class Task:
    """An application's data.  Subclasses set ``name`` (the files' root attribute ``task``) and
    ``default_model`` (a model name), and implement ``open`` and ``generate``."""

    name: str = ""
    default_model: str = ""

    def open(self, path, split: str):
        """One split of a data file, validated: an object with ``num_samples``, the attributes
        its models read in ``from_data``, ``read(rows) -> (x, y)`` (numpy, only those rows) and
        ``close()`` (and a context manager)."""
        raise NotImplementedError

    def generate(self, path, data_config, progress: bool = True) -> Path:
        """Write a data set of this task (sizes and seed from the config's ``data`` section)."""
        raise InputError(f"task {self.name!r} has no data generator: give data.path of an "
                         f"existing file and data.generate: false")

    def show(self, model, x, y, options, out: Path) -> Path:
        """Draw some samples with their truth and predictions as a PNG (``dstrain show``)."""
        raise InputError(f"task {self.name!r} has nothing to show; `dstrain plot` draws any "
                         f"run's training curves")


def load_reference(reference: str, what: str):
    """The object a ``module:Name`` or ``file.py:Name`` reference names."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise InputError(f"{what} {reference!r}: expected a built-in name or "
                         f"package.module:Name or path/to/file.py:Name")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise InputError(f"{what} {reference!r}: no such file {path}")
        key = f"dstrain_user_{abs(hash(str(path)))}"   # one module object per file
        module = sys.modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[key]
                raise
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):
                raise InputError(f"{what} {reference!r}: no module named {error.name!r} "
                                 f"(is it installed or on PYTHONPATH?)") from None
            raise
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise InputError(f"{what} {reference!r}: {module_name} has no {attribute!r}") from None


def get_task(name: str) -> Task:
    """The task a name refers to (a built-in name or a reference to a Task subclass)."""
    reference = TASKS.get(name, name)
    if ":" not in reference:
        raise InputError(f"data.task {name!r}: unknown task; built-in: {', '.join(TASKS)}, or "
                         f"package.module:Name of your own Task subclass")
    task = load_reference(reference, "data.task")
    task = task() if isinstance(task, type) else task
    if not isinstance(task, Task):
        raise InputError(f"data.task {name!r}: {reference} is not a dstrain.tasks.Task")
    return task


def get_model_class(name: str, task: str | None = None) -> type:
    """The StructuredModel subclass a ``model.class`` name refers to ("auto": the task's)."""
    from ..models import StructuredModel

    if name == "auto":
        if task is None:
            raise InputError("model.class is auto but no task is known: set data.task or "
                             "model.class")
        name = get_task(task).default_model
    reference = MODELS.get(name, name)
    if ":" not in reference:
        raise InputError(f"model.class {name!r}: unknown model; built-in: {', '.join(MODELS)}, "
                         f"or package.module:Name / path/to/file.py:Name of your own")
    cls = load_reference(reference, "model.class")
    if not (isinstance(cls, type) and issubclass(cls, StructuredModel)):
        raise InputError(f"model.class {name!r}: {reference} is not a StructuredModel subclass")
    return cls


__all__ = ["Task", "TASKS", "MODELS", "get_task", "get_model_class", "load_reference"]
