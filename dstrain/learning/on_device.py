"""The structured loss with inference on a GPU: potentials, beliefs and gradient stay there.

    potentials (torch, on the rank's GPU) --DLPack, no copy--> DeviceBP kernels (CuPy, on torch's
    current stream) --DLPack--> beliefs (torch) --> gradient = beliefs - truth indicator (torch)

What crosses between host and device per step is small: the truth positions of the labels go
up, the per-sample loss (B numbers) comes down (and the trainer's running score brings the
argmax characters down).  ``blend`` keeps its messages in a device-resident MessageStore.  The
same code runs on the CPU with the kernels emulated (``dstrain.gpu.emulator``): that is how the
tests check this path without a GPU.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models import RegionLayout
from .structured import (InferenceOptions, StructuredResult, beliefs_and_dual, check_algorithm,
                         message_passing)


def device_structured_loss(potentials: torch.Tensor, layout: RegionLayout, labels: np.ndarray,
                           options: InferenceOptions, kernels, store=None,
                           sample_ids=None) -> StructuredResult:
    """flat_structured_loss for potentials on a device; gradient and beliefs are torch tensors
    there (``flat_gradient``; the caller pulls it back onto the source)."""
    check_algorithm(options)
    potentials = potentials.detach()
    if options.algorithm == "exact":   # forward-backward is a host algorithm
        beliefs, dual, sweeps = beliefs_and_dual(potentials.double().cpu().numpy(), layout, options)
        beliefs = torch.from_numpy(beliefs).to(potentials)
        dual = torch.from_numpy(dual).to(potentials)
    else:
        with kernels.stream():
            result = message_passing(kernels.xp.from_dlpack(potentials), layout, options, store,
                                     sample_ids, kernels)
            beliefs, dual = torch.from_dlpack(result.beliefs), torch.from_dlpack(result.dual)
        sweeps = result.sweeps
    truth, owner = (torch.as_tensor(a, device=potentials.device) for a in layout.truth(labels))
    gradient = beliefs.clone()
    gradient[truth] -= 1.0            # one truth entry per region: positions are distinct
    ignored = layout.ignored(labels)
    if len(ignored):                  # regions with an unlabelled variable: no signal
        gradient[torch.as_tensor(ignored, device=potentials.device)] = 0.0
    score = torch.zeros(layout.num_samples, dtype=potentials.dtype, device=potentials.device)
    score.index_add_(0, owner, potentials[truth])
    loss = (dual - score).double().cpu().numpy()
    unary = [None if u is None else beliefs[u] for u in layout.on(potentials.device).unary_positions]
    return StructuredResult(loss, (), sweeps, unary, beliefs, gradient)
