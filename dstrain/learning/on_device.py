"""The structured loss with inference on a GPU: potentials, beliefs and gradient stay there.

    potentials (torch, on the rank's GPU) --DLPack, no copy--> DeviceBP kernels (CuPy, on torch's
    current stream) --DLPack--> beliefs (torch) --> gradient = beliefs - truth indicator (torch)

Only the per-sample loss (B numbers) comes to the host each step.  ``blend`` keeps its messages
in a device-resident MessageStore.  The same code runs on the CPU with the kernels emulated
(``dstrain.gpu.emulator``): that is how the tests check this path without a GPU.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..graph import GraphBatch
from ..gpu import DeviceBP
from ..models.word_model import ChainLayout
from .structured import (ALGORITHMS, InferenceOptions, StructuredResult, beliefs_and_dual,
                         run_algorithm)


@functools.lru_cache(maxsize=16)
def _engine(graphs: tuple, kernels) -> DeviceBP:
    return DeviceBP(GraphBatch(list(graphs)), kernels)


def device_structured_loss(potentials: torch.Tensor, layout: ChainLayout, labels: np.ndarray,
                           options: InferenceOptions, kernels, store=None,
                           sample_ids=None) -> StructuredResult:
    """structured_loss for potentials on a device; gradient and beliefs are torch tensors there."""
    if options.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm = {options.algorithm!r}: expected one of {ALGORITHMS}")
    potentials = potentials.detach()
    if options.algorithm == "exact":   # forward-backward is a host algorithm
        beliefs, dual, sweeps = beliefs_and_dual(potentials.double().cpu().numpy(), layout, options)
        beliefs = torch.from_numpy(beliefs).to(potentials)
        dual = torch.from_numpy(dual).to(potentials)
    else:
        local = options.algorithm == "local"
        graphs = layout.graphs("convex" if local else options.counting_numbers, options.eps)
        with kernels.stream():
            result = run_algorithm(_engine(tuple(graphs), kernels),
                                   kernels.xp.from_dlpack(potentials), options, store, sample_ids)
            beliefs, dual = torch.from_dlpack(result.beliefs), torch.from_dlpack(result.dual)
        sweeps = result.sweeps
    truth, owner = (torch.as_tensor(a, device=potentials.device) for a in layout.truth(labels))
    gradient = beliefs.clone()
    gradient[truth] -= 1.0            # one truth entry per region: positions are distinct
    score = torch.zeros(len(layout.lengths), dtype=potentials.dtype, device=potentials.device)
    score.index_add_(0, owner, potentials[truth])
    loss = (dual - score).double().cpu().numpy()
    return StructuredResult(gradient, loss, beliefs, sweeps)
