"""dstrain: sample-parallel training of deep structured models (Chen, Schwing, Yuille, Urtasun 2015).

    import dstrain
    config = dstrain.load_config("configs/words_debug.yaml", ["train.lr=0.1"])
    metrics = dstrain.train(config)          # the same run as `dstrain train --config ...`
"""
__version__ = "0.1.0"

_LAZY = {"Config": "dstrain.config", "load_config": "dstrain.config",
         "train": "dstrain.learning.trainer", "evaluate": "dstrain.learning.trainer",
         "StructuredModel": "dstrain.models", "Task": "dstrain.tasks"}


def __getattr__(name):   # torch and friends load on first use, not on `import dstrain`
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dstrain' has no attribute {name!r}")


__all__ = list(_LAZY)
