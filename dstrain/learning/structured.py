"""Loss and gradient of a batch of deep structured models (DESIGN.md §3).

    loss_s = D(lambda, w) - F(x_s, y_s; w)        (the log-loss when inference is exact)
    d loss / d f_r(yhat_r) = b_r(yhat_r) - 1[yhat_r == y_s restricted to r]

The beliefs come from one of the paper's algorithms; nothing is differentiated through message
passing: the caller hands the gradient to ``torch.autograd.backward``.

``structured_loss`` takes the batch's flat potentials (the reference path, which on_device.py
mirrors for the GPU).  ``batch_loss`` on the CPU starts from the network's source vector
(unary scores, then the pair tables): where the pairs share tables, the engine exponentiates,
multiplies and sums each table once per batch (``ConvexBP.sharing``) and the gradient of a
table is its pairs' beliefs summed minus the truth counted, without the flat vectors.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ..graph import GraphBatch
from ..inference import ConvexBP
from ..inference.exact import chain_marginals
from ..models.word_model import ChainLayout, WordCRF
from .messages import MessageStore

ALGORITHMS = ("exact", "converge", "blend", "local")


@dataclass
class InferenceOptions:
    algorithm: str = "blend"        # exact | converge | blend | local (no message passing)
    counting_numbers: str = "convex"
    eps: float = 1.0
    sweeps: int = 1                 # blend: sweeps per step
    max_sweeps: int = 100           # converge: budget
    tol: float = 1e-4               # converge: largest message change to stop at

    @classmethod
    def from_config(cls, inference_config) -> "InferenceOptions":
        return cls(**{k: getattr(inference_config, k) for k in cls.__dataclass_fields__})


@dataclass
class StructuredResult:
    gradient: np.ndarray | None   # (N,) d loss_s / d f, summed over samples (not averaged);
                                  # None where only the source gradient was formed
    loss: np.ndarray       # (B,) per-sample loss
    beliefs: np.ndarray | None    # (N,); None where the pairs share tables (ConvexBP.sharing):
                                  # see character_beliefs
    sweeps: int            # message-passing sweeps run (0 for exact and local)
    source_gradient: object = None   # batch_loss: d loss / d source (numpy, or torch on a device)
    # where the pairs share tables: (B, max_length, C) each character's belief, 0 at padding
    character_beliefs: np.ndarray | None = None


@functools.lru_cache(maxsize=16)
def _engine(graphs: tuple, kernels=None):
    # batches of equal composition (fixed-length words: every batch) share the flattened graph;
    # the graphs are cached objects, so the tuple hashes by identity cheaply.  kernels: a kernel
    # set of dstrain.gpu (DeviceBP on it), or None (the CPU engine)
    batch = GraphBatch(list(graphs))
    if kernels is None:
        return ConvexBP(batch)
    from ..gpu import DeviceBP
    return DeviceBP(batch, kernels)


def check_algorithm(options: InferenceOptions) -> None:
    if options.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm = {options.algorithm!r}: expected one of {ALGORITHMS}")


def beliefs_and_dual(potentials: np.ndarray, layout: ChainLayout, options: InferenceOptions,
                     store: MessageStore | None = None, sample_ids=None):
    """Beliefs (N,) and per-sample dual (B,) by the chosen algorithm; blend updates the store."""
    check_algorithm(options)
    if options.algorithm == "exact":
        if layout.order > 1:
            raise ValueError("algorithm 'exact' (forward-backward) needs a first-order chain; "
                             "use 'converge' or 'blend' for order 2")
        unary, pairwise = layout.chain_arrays(potentials)
        node, pair, log_z = chain_marginals(unary, pairwise, layout.lengths, eps=options.eps)
        return layout.flat_from_chain(node, pair), options.eps * log_z, 0
    result = message_passing(potentials, layout, options, store, sample_ids)
    return result.beliefs, result.dual, result.sweeps


def layout_engine(layout: ChainLayout, options: InferenceOptions, kernels=None):
    """The batch's message-passing engine: the CPU one, or DeviceBP on `kernels`."""
    # local = each region its own softmax (piecewise training): zero messages, all c_r = 1
    counting = "convex" if options.algorithm == "local" else options.counting_numbers
    return _layout_engine(layout, counting, float(options.eps), kernels)


@functools.lru_cache(maxsize=16)
def _layout_engine(layout: ChainLayout, counting: str, eps: float, kernels):
    # layouts are cached objects (hashed by identity): a step looks its engine up without
    # rebuilding the tuple of its graphs
    return _engine(tuple(layout.graphs(counting, eps)), kernels)


@functools.lru_cache(maxsize=16)
def _sharing(engine: ConvexBP, layout: ChainLayout):
    # both are cached objects (hashed by identity): one PairSharing per batch composition
    return engine.sharing(layout.source_index, layout.source_size)


def message_passing(potentials, layout: ChainLayout, options: InferenceOptions, store=None,
                    sample_ids=None, kernels=None, sharing=None):
    """The algorithm's message passing on the batch's engine (the CPU one, or DeviceBP on
    `kernels`): blend warm-starts from the store, runs `sweeps` sweeps and stores the messages
    back; converge starts from zero and runs to `tol`; local runs none.  With `sharing`,
    `potentials` is the source vector (ConvexBP.run)."""
    engine = layout_engine(layout, options, kernels)
    shared = {} if sharing is None else {"sharing": sharing}
    if options.algorithm == "blend":
        if store is None or sample_ids is None:
            raise ValueError("algorithm 'blend' needs a MessageStore and the batch's sample ids")
        result = engine.run(potentials, store.gather(sample_ids), max_sweeps=options.sweeps,
                            tol=0.0, **shared)
        store.scatter(sample_ids, result.messages)
        return result
    return engine.run(potentials, None, tol=options.tol, **shared,
                      max_sweeps=0 if options.algorithm == "local" else options.max_sweeps)


def structured_loss(potentials: np.ndarray, layout: ChainLayout, labels: np.ndarray,
                    options: InferenceOptions, store: MessageStore | None = None,
                    sample_ids=None) -> StructuredResult:
    """Per-sample loss and the gradient (beliefs minus ground-truth indicator) of a batch."""
    beliefs, dual, sweeps = beliefs_and_dual(potentials, layout, options, store, sample_ids)
    truth, owner = layout.truth(labels)
    gradient = beliefs.copy()
    gradient[truth] -= 1.0           # one truth entry per region: positions are distinct
    score = np.bincount(owner, potentials[truth], len(layout.lengths))
    return StructuredResult(gradient, dual - score, beliefs, sweeps)


def source_structured_loss(source: np.ndarray, layout: ChainLayout, labels: np.ndarray,
                           options: InferenceOptions, store: MessageStore | None = None,
                           sample_ids=None) -> StructuredResult:
    """structured_loss from the source vector (float64), with the gradient w.r.t. the source.

    Where the engine shares the pair tables (WordCRF batches with pairs, unless bethe counting
    numbers take unary beliefs from the pairs), neither the flat potentials nor the pairs' beliefs
    are formed; otherwise flat_source_loss runs."""
    check_algorithm(options)
    sharing = None if options.algorithm == "exact" else \
        _sharing(layout_engine(layout, options), layout)
    if sharing is None:
        return flat_source_loss(source, layout, labels, options, store, sample_ids)
    bp = message_passing(source, layout, options, store, sample_ids, sharing=sharing)
    truth, owner = layout.truth(labels)
    truth = layout.source_index[truth]
    gradient = np.bincount(sharing.rest_source, bp.rest_beliefs, len(source))
    # the source opens with the unary scores (B, max_length, C): their beliefs, before the rest
    shape = (len(layout.lengths), layout.max_length, layout.num_classes)
    characters = gradient[:int(np.prod(shape))].reshape(shape).copy()
    for positions, summed in zip(sharing.tables, bp.table_beliefs):
        gradient[positions] += summed.reshape(positions.shape)   # distinct positions
    gradient -= np.bincount(truth, minlength=len(source))
    score = np.bincount(owner, source[truth], len(layout.lengths))
    return StructuredResult(None, bp.dual - score, None, bp.sweeps, gradient, characters)


def flat_source_loss(source: np.ndarray, layout: ChainLayout, labels: np.ndarray,
                     options: InferenceOptions, store: MessageStore | None = None,
                     sample_ids=None) -> StructuredResult:
    """source_structured_loss by the flat path: the potentials gathered, structured_loss, and
    its gradient pulled back onto the source."""
    result = structured_loss(source[layout.source_index], layout, labels, options, store,
                             sample_ids)
    result.source_gradient = pull_back(layout, result.gradient, len(source))
    return result


def message_sizes(lengths, num_classes: int, order: int) -> np.ndarray:
    """Length of each sample's message vector in a chain of that length and order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    pairs = sum(np.maximum(lengths - d, 0) for d in range(1, order + 1))
    return 2 * num_classes * pairs    # every pair receives one message from each of its 2 unaries


def batch_loss(model: WordCRF, images, labels: np.ndarray, lengths: np.ndarray,
               order: int, options: InferenceOptions, store=None, sample_ids=None, kernels=None):
    """Forward pass and structured loss of one batch: (source tensor, layout, result).

    ``backward(source, result)`` then fills the parameters' gradients.
    `images`: numpy or a torch tensor (moved to the model's device).  `kernels`: a kernel set
    (``dstrain.gpu``) runs inference on the model's device; None: the CPU engine (float64).
    """
    layout = model.layout(lengths, order)
    device = next(model.parameters()).device
    if kernels is None and device.type == "cuda":
        from ..gpu import kernel_set
        kernels = kernel_set(device, str(next(model.parameters()).dtype).removeprefix("torch."))
    images = images if isinstance(images, torch.Tensor) else torch.from_numpy(images)
    source = model.source(images.to(device, non_blocking=True), order)
    if kernels is not None:
        from .on_device import device_structured_loss
        potentials = source.detach()[layout.on(device).source_index]
        result = device_structured_loss(potentials, layout, labels, options, kernels, store, sample_ids)
        result.source_gradient = pull_back(layout, result.gradient.to(source.dtype), source.numel())
        return source, layout, result
    result = source_structured_loss(source.detach().double().numpy(), layout, labels, options,
                                    store, sample_ids)
    return source, layout, result


def pull_back(layout: ChainLayout, gradient, size: int):
    """d loss / d potentials -> d loss / d source: each entry's gradient summed onto its source
    entry (numpy, or torch on the gradient's device)."""
    if isinstance(gradient, torch.Tensor):
        pulled = torch.zeros(size, dtype=gradient.dtype, device=gradient.device)
        return pulled.index_add_(0, layout.on(gradient.device).source_index, gradient)
    return np.bincount(layout.source_index, gradient, minlength=size)


def backward(source: torch.Tensor, result: StructuredResult) -> None:
    """The nets' gradients from batch_loss's result: autograd from the source vector on."""
    gradient = result.source_gradient
    if not isinstance(gradient, torch.Tensor):
        gradient = torch.from_numpy(gradient)
    torch.autograd.backward(source, gradient.to(source.dtype))
