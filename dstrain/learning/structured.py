"""The structured loss and its gradient with respect to a model's outputs (docs/design.md).

    loss_s = D(lambda, w) - F(x_s, y_s; w)        (the log-loss when inference is exact)
    d loss / d f_r(yhat_r) = b_r(yhat_r) - 1[yhat_r == y_s restricted to r]

One entry point: ``structured_loss(potentials, labels, options, ...)`` dispatches on the kind of
potentials to its inference method and returns the loss per sample and the gradient with respect
to ``potentials.tensors``; ``backward(potentials, result)`` hands that to
``torch.autograd.backward``.  Nothing is differentiated through message passing.

``RegionPotentials`` (a source tensor and a ``RegionLayout``) go to the region-graph methods:
``exact`` (forward-backward on first-order chains, enumeration on small graphs), ``converge`` and
``blend`` (convex BP; blend keeps each sample's messages in a ``MessageStore``) and ``local``
(each region its own softmax: piecewise training).  On the CPU the engine starts from the source
vector: where many pairs share a table, it exponentiates, multiplies and sums each table once per
batch (``ConvexBP.sharing``) and the gradient of a table is its pairs' beliefs summed minus the
truth counted.  With a kernel set (``dstrain.gpu``) inference runs on the model's device
(on_device.py).  Other kinds of potentials register their own method with
``register_inference``.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from ..config import Algorithm as ConfigAlgorithm, InferenceConfig
from ..graph import GraphBatch
from ..inference import ConvexBP
from ..inference.exact import chain_marginals
from ..models import DenseCRFPotentials, RegionLayout, RegionPotentials
from ..models.layout import enumeration_tables, exact_kind
from .messages import MessageStore

# the config's algorithms, and local: each region its own classifier (unary and piecewise phases)
Algorithm = Literal[ConfigAlgorithm, "local"]
ALGORITHMS = typing.get_args(Algorithm)


@dataclass
class InferenceOptions(InferenceConfig):
    """The ``inference`` section of the config as the learner runs it, where the algorithm may
    also be ``local``; ``InferenceOptions.from_config(config.inference)``."""
    algorithm: Algorithm = "blend"

    @classmethod
    def from_config(cls, inference_config: InferenceConfig) -> "InferenceOptions":
        return cls(**dataclasses.asdict(inference_config))


@dataclass
class StructuredResult:
    loss: np.ndarray               # (B,) per-sample loss
    gradients: tuple               # d (summed loss) / d potentials.tensors, one per tensor
    sweeps: int                    # message-passing sweeps run (0 for exact and local)
    unary_beliefs: list            # per layout group: (S, V, C) each variable's beliefs, or None
    beliefs: object = None         # (N,) all beliefs where they were formed (flat and device paths)
    flat_gradient: object = None   # (N,) d loss / d potentials where formed


_METHODS: dict[type, Callable] = {}


def register_inference(kind: type):
    """Decorator: `method(potentials, labels, options, store, sample_ids, kernels)` computes the
    StructuredResult of potentials of type `kind`."""
    def register(method):
        _METHODS[kind] = method
        return method
    return register


def structured_loss(potentials, labels: np.ndarray, options: InferenceOptions,
                    store: MessageStore | None = None, sample_ids=None,
                    kernels=None) -> StructuredResult:
    """Per-sample loss and its gradient with respect to ``potentials.tensors``.

    `store`, `sample_ids`: blend's persistent messages and the batch's global ids.  `kernels`: a
    kernel set of ``dstrain.gpu`` (inference on the model's device); None: the CPU engine, or
    the GPU's kernels when the potentials live on a GPU."""
    check_algorithm(options)
    method = _METHODS.get(type(potentials))
    if method is None:
        raise TypeError(f"no inference method for potentials of type {type(potentials).__name__}")
    return method(potentials, labels, options, store, sample_ids, kernels)


def backward(potentials, result: StructuredResult) -> None:
    """The parameters' gradients: autograd from the model's outputs on."""
    gradients = [g if isinstance(g, torch.Tensor) else torch.from_numpy(g)
                 for g in result.gradients]
    torch.autograd.backward(potentials.tensors,
                            [g.to(t.dtype) for g, t in zip(gradients, potentials.tensors)])


def check_algorithm(options: InferenceOptions) -> None:
    # options are checked when built: this catches an algorithm assigned afterwards
    if options.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm = {options.algorithm!r}: expected one of {ALGORITHMS}")


# ------------------------------------------------------------------ mean-field (dense CRFs)

@register_inference(DenseCRFPotentials)
def meanfield_loss(potentials, labels, options, store=None, sample_ids=None, kernels=None):
    """Mean-field on a dense CRF (``potentials.crf``: kernels fixed for the batch), then the loss
    and its gradients with the marginals held fixed: unary Q - truth, and the kernel weights'
    and compatibility's from filtering Q and the truth (dstrain.inference.dense_crf)."""
    if options.algorithm == "local":
        from ..errors import InputError
        raise InputError("a dense CRF has no piecewise training: use train.variant unary, joint "
                         "or pretrain_joint")
    crf = potentials.crf
    crf.eps = float(options.eps)
    result = crf.loss_and_gradients(potentials.unary, np.asarray(labels), potentials.weights,
                                    potentials.compatibility)
    q = result.marginals.permute(0, 2, 3, 1).reshape(len(labels), -1, result.marginals.shape[1])
    return StructuredResult(result.loss.double().cpu().numpy(),
                            (result.grad_unary, result.grad_weights, result.grad_compatibility),
                            crf.iterations, [q.detach()])


# ------------------------------------------------------------------ region graphs

@register_inference(RegionPotentials)
def region_loss(potentials: RegionPotentials, labels, options, store=None, sample_ids=None,
                kernels=None) -> StructuredResult:
    layout, source = potentials.layout, potentials.source
    device = source.device
    if kernels is None and device.type == "cuda":
        from ..gpu import kernel_set
        kernels = kernel_set(device, str(source.dtype).removeprefix("torch."))
    if kernels is not None:
        from .on_device import device_structured_loss
        flat = source.detach()[layout.on(device).source_index]
        result = device_structured_loss(flat, layout, labels, options, kernels, store, sample_ids)
        result.gradients = (pull_back(layout, result.flat_gradient.to(source.dtype), source.numel()),)
        return result
    return source_structured_loss(source.detach().double().numpy(), layout, labels, options,
                                  store, sample_ids)


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


def layout_engine(layout: RegionLayout, options: InferenceOptions, kernels=None):
    """The batch's message-passing engine: the CPU one, or DeviceBP on `kernels`."""
    # local = each region its own softmax (piecewise training): zero messages, all c_r = 1
    counting = "convex" if options.algorithm == "local" else options.counting_numbers
    return _layout_engine(layout, counting, float(options.eps), kernels)


@functools.lru_cache(maxsize=16)
def _layout_engine(layout: RegionLayout, counting: str, eps: float, kernels):
    # layouts are cached objects (hashed by identity): a step looks its engine up without
    # rebuilding the tuple of its graphs
    return _engine(tuple(layout.graphs(counting, eps)), kernels)


@functools.lru_cache(maxsize=16)
def _sharing(engine: ConvexBP, layout: RegionLayout):
    # both are cached objects (hashed by identity): one PairSharing per batch composition
    sharing = engine.sharing(layout.source_index, layout.source_size)
    if sharing is None:
        return None
    # each variable's unary entries as positions in the engine's rest beliefs
    rest = [None if u is None else np.searchsorted(sharing.rest, u)
            for u in layout.unary_positions()]
    return sharing, rest


def exact_beliefs_and_dual(potentials: np.ndarray, layout: RegionLayout, eps: float):
    """Exact beliefs (N,) and eps * log Z per sample: forward-backward on first-order chains,
    enumeration of the joint states elsewhere (InputError for graphs too large for either)."""
    beliefs = np.zeros(layout.num_potentials)
    dual = np.zeros(layout.num_samples)
    for spec, samples in layout.groups:
        start = layout.offset[samples, None]
        if exact_kind(spec) == "chain":
            n, C = spec.args[0], spec.args[1]
            unary, pairwise = layout.chain_view(potentials, spec, samples)
            node, pair, log_z = chain_marginals(unary, pairwise, np.full(len(samples), n), eps=eps)
            beliefs[start + np.arange(n * C)] = node.reshape(len(samples), -1)
            if spec.args[2] >= 1 and n > 1:
                beliefs[start + n * C + np.arange((n - 1) * C * C)] = pair.reshape(len(samples), -1)
        else:
            states, entries = enumeration_tables(spec)
            f = potentials[start + np.arange(spec.num_potentials)]            # (S, P)
            scores = np.zeros((len(samples), len(states)))
            for r in range(entries.shape[1]):
                scores += f[:, entries[:, r]]
            scores /= eps
            peak = scores.max(axis=1, keepdims=True)
            log_z = peak[:, 0] + np.log(np.exp(scores - peak).sum(axis=1))
            p = np.exp(scores - log_z[:, None])
            out = np.zeros(f.size)
            rows = np.arange(len(samples))[:, None] * spec.num_potentials
            for r in range(entries.shape[1]):   # each region's marginal: sum p over its states
                out += np.bincount((rows + entries[:, r]).ravel(), p.ravel(), minlength=f.size)
            beliefs[start + np.arange(spec.num_potentials)] = out.reshape(f.shape)
        dual[samples] = eps * log_z
    return beliefs, dual


def beliefs_and_dual(potentials: np.ndarray, layout: RegionLayout, options: InferenceOptions,
                     store: MessageStore | None = None, sample_ids=None):
    """Beliefs (N,) and per-sample dual (B,) by the chosen algorithm; blend updates the store."""
    check_algorithm(options)
    if options.algorithm == "exact":
        beliefs, dual = exact_beliefs_and_dual(potentials, layout, options.eps)
        return beliefs, dual, 0
    result = message_passing(potentials, layout, options, store, sample_ids)
    return result.beliefs, result.dual, result.sweeps


def message_passing(potentials, layout: RegionLayout, options: InferenceOptions, store=None,
                    sample_ids=None, kernels=None, sharing=None):
    """The algorithm's message passing on the batch's engine (the CPU one, or DeviceBP on
    `kernels`): blend warm-starts from the store, runs `sweeps` sweeps and stores the messages
    back; converge starts from zero and runs to `tol`; local runs none.  With `sharing`,
    `potentials` is the source vector (ConvexBP.run)."""
    engine = layout_engine(layout, options, kernels)
    shared = {} if sharing is None else {"sharing": sharing}
    if options.algorithm == "blend" and not engine.batch.num_messages:   # nothing to keep
        return engine.run(potentials, None, max_sweeps=options.sweeps, tol=0.0, **shared)
    if options.algorithm == "blend":
        if store is None or sample_ids is None:
            raise ValueError("algorithm 'blend' needs a MessageStore and the batch's sample ids")
        result = engine.run(potentials, store.gather(sample_ids), max_sweeps=options.sweeps,
                            tol=0.0, **shared)
        store.scatter(sample_ids, result.messages)
        return result
    return engine.run(potentials, None, tol=options.tol, **shared,
                      max_sweeps=0 if options.algorithm == "local" else options.max_sweeps)


def flat_structured_loss(potentials: np.ndarray, layout: RegionLayout, labels: np.ndarray,
                         options: InferenceOptions, store: MessageStore | None = None,
                         sample_ids=None, ignored=None) -> StructuredResult:
    """The loss on the batch's flat potential vector (float64): the reference path, which
    on_device.py mirrors.  ``flat_gradient`` is d loss / d potentials; no source gradient.
    Regions with an unlabelled variable (label < 0) get no truth term and a zero gradient
    (`ignored`: their entries, ``layout.ignored(labels)``, if the caller has them)."""
    beliefs, dual, sweeps = beliefs_and_dual(potentials, layout, options, store, sample_ids)
    truth, owner = layout.truth(labels)
    gradient = beliefs.copy()
    gradient[truth] -= 1.0           # one truth entry per region: positions are distinct
    gradient[layout.ignored(labels) if ignored is None else ignored] = 0.0   # unlabelled: no signal
    score = np.bincount(owner, potentials[truth], layout.num_samples)
    unary = [None if u is None else beliefs[u] for u in layout.unary_positions()]
    return StructuredResult(dual - score, (), sweeps, unary, beliefs, gradient)


def source_structured_loss(source: np.ndarray, layout: RegionLayout, labels: np.ndarray,
                           options: InferenceOptions, store: MessageStore | None = None,
                           sample_ids=None) -> StructuredResult:
    """The loss from the source vector (float64), with the gradient w.r.t. the source.

    Where the engine shares the pair tables (e.g. a words batch with pairs, unless bethe
    counting numbers take unary beliefs from the pairs), neither the flat potentials nor the
    pairs' beliefs are formed; otherwise flat_source_loss runs."""
    check_algorithm(options)
    ignored = layout.ignored(labels)   # unlabelled variables: zeroed on the flat path
    shared = None if options.algorithm == "exact" or len(ignored) else \
        _sharing(layout_engine(layout, options), layout)
    if shared is None:
        return flat_source_loss(source, layout, labels, options, store, sample_ids, ignored)
    sharing, unary_rest = shared
    bp = message_passing(source, layout, options, store, sample_ids, sharing=sharing)
    truth, owner = layout.truth(labels)
    truth = layout.source_index[truth]
    gradient = np.bincount(sharing.rest_source, bp.rest_beliefs, len(source))
    for positions, summed in zip(sharing.tables, bp.table_beliefs):
        gradient[positions] += summed.reshape(positions.shape)   # distinct positions
    gradient -= np.bincount(truth, minlength=len(source))
    score = np.bincount(owner, source[truth], layout.num_samples)
    unary = [None if u is None else bp.rest_beliefs[u] for u in unary_rest]
    return StructuredResult(bp.dual - score, (gradient,), bp.sweeps, unary)


def flat_source_loss(source: np.ndarray, layout: RegionLayout, labels: np.ndarray,
                     options: InferenceOptions, store: MessageStore | None = None,
                     sample_ids=None, ignored=None) -> StructuredResult:
    """source_structured_loss by the flat path: the potentials gathered, flat_structured_loss,
    and its gradient pulled back onto the source."""
    result = flat_structured_loss(source[layout.source_index], layout, labels, options, store,
                                  sample_ids, ignored)
    result.gradients = (pull_back(layout, result.flat_gradient, len(source)),)
    return result


def pull_back(layout: RegionLayout, gradient, size: int):
    """d loss / d potentials -> d loss / d source: each entry's gradient summed onto its source
    entry (numpy, or torch on the gradient's device)."""
    if isinstance(gradient, torch.Tensor):
        pulled = torch.zeros(size, dtype=gradient.dtype, device=gradient.device)
        return pulled.index_add_(0, layout.on(gradient.device).source_index, gradient)
    return np.bincount(layout.source_index, gradient, minlength=size)
