"""The structured loss and gradient, the algorithms, persistent messages and the words layout."""
import numpy as np
import pytest
import torch

from dstrain.errors import InputError
from dstrain.graph import GraphBatch, chain
from dstrain.inference import ConvexBP
from dstrain.inference.brute_force import enumerate_map, enumerate_marginals
from dstrain.learning import InferenceOptions, MessageStore
from dstrain.learning.structured import backward, flat_structured_loss, pull_back, structured_loss
from dstrain.models import Batch, RegionPotentials
from dstrain.tasks.words import WordCRF
from helpers import assert_groups_close, unary_beliefs

C, L, IMAGE = 3, 5, (4, 3)


def tiny_problem(seed=0, order=2, batch=4, shared=True):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = WordCRF(IMAGE, C, L, hidden=[5], order=order, pairwise_shared=shared).double()
    for table in model.pairwise.tables:      # start away from zero so pairs matter
        torch.nn.init.normal_(table, std=0.7)
    lengths = rng.integers(1, L + 1, batch)
    lengths[0] = L
    images = rng.normal(size=(batch, L, *IMAGE))
    labels = np.where(np.arange(L) < lengths[:, None], rng.integers(0, C, (batch, L)), -1)
    return model, images, labels, lengths


def batch_loss(model, images, labels, lengths, order, options, store=None, ids=None, kernels=None):
    """The words model's potentials with pairs up to `order` and the structured loss:
    (potentials, result)."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(images)
    potentials = RegionPotentials(model.source(x, order), model.layout(lengths, order))
    return potentials, structured_loss(potentials, labels, options, store, ids, kernels)


def flat_potentials(model, images, layout):
    """The batch's flat potential vector (numpy), gathered from the source."""
    source = model.source(torch.from_numpy(images), layout.specs[0].args[2])
    return source[torch.from_numpy(layout.source_index)].detach().numpy()


def message_sizes(model, lengths):
    return model.layout(lengths).message_sizes()


def total_loss(model, images, labels, lengths, options, order=None):
    order = model.order if order is None else order
    return batch_loss(model, images, labels, lengths, order, options)


@pytest.mark.parametrize("algorithm, order, counting", [
    ("converge", 2, "convex"), ("converge", 1, "bethe"), ("exact", 1, "convex"),
    ("local", 2, "convex")])
def test_gradient_matches_finite_differences(algorithm, order, counting):
    model, images, labels, lengths = tiny_problem(order=order)
    options = InferenceOptions(algorithm=algorithm, counting_numbers=counting, eps=1.0,
                               max_sweeps=20000, tol=1e-13)
    potentials, result = total_loss(model, images, labels, lengths, options)
    model.zero_grad()
    backward(potentials, result)
    rng = np.random.default_rng(1)
    for name, param in model.named_parameters():
        flat = param.data.view(-1)
        for k in rng.choice(flat.numel(), size=min(3, flat.numel()), replace=False):
            saved = flat[k].item()
            values = []
            for delta in (1e-5, -1e-5):
                flat[k] = saved + delta
                values.append(total_loss(model, images, labels, lengths, options)[1].loss.sum())
            flat[k] = saved
            numeric = (values[0] - values[1]) / 2e-5
            analytic = param.grad.view(-1)[k].item()
            assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-6), (name, k)


def test_exact_and_converge_with_bethe_give_the_same_gradient_on_chains():
    model, images, labels, lengths = tiny_problem(order=1, batch=6)
    exact = total_loss(model, images, labels, lengths, InferenceOptions(algorithm="exact"))[1]
    converge = total_loss(model, images, labels, lengths, InferenceOptions(
        algorithm="converge", counting_numbers="bethe", max_sweeps=5000, tol=1e-12))[1]
    np.testing.assert_allclose(converge.gradients[0], exact.gradients[0], atol=1e-7)
    np.testing.assert_allclose(converge.loss, exact.loss, atol=1e-7)


def test_blend_keeps_each_samples_messages_across_steps():
    model, images, labels, lengths = tiny_problem(batch=6)
    ids = np.array([10, 11, 12, 13, 14, 15])
    store = MessageStore(ids, message_sizes(model, lengths))
    blend = InferenceOptions(algorithm="blend", sweeps=1)
    first = ids[[4, 1, 2]]                  # a batch in shuffled order
    rows = [4, 1, 2]
    batch_loss(model, images[rows], labels[rows], lengths[rows], 2, blend, store, first)
    assert np.all(store.gather(ids[[0, 3, 5]]) == 0)   # samples not in the batch: untouched
    assert np.any(store.gather(first) != 0)
    _, second = batch_loss(model, images[rows], labels[rows], lengths[rows], 2, blend, store, first)
    # two blend steps with unchanged potentials = two sweeps from zero messages
    layout = model.layout(lengths[rows])
    f = flat_potentials(model, images[rows], layout)
    twice = ConvexBP(GraphBatch(layout.graphs())).run(f, max_sweeps=2, tol=0.0)
    np.testing.assert_allclose(store.gather(first), twice.messages, atol=1e-12)
    # the pairs' beliefs are summed per shared table instead of formed: the characters' are
    assert second.beliefs is None
    assert_groups_close(second.unary_beliefs, unary_beliefs(layout, twice.beliefs), atol=1e-12)
    expected = twice.beliefs.copy()
    expected[layout.truth(labels[rows])[0]] -= 1.0
    np.testing.assert_allclose(second.gradients[0],
                               pull_back(layout, expected, layout.source_size), atol=1e-12)


def test_layout_places_unaries_and_tables_and_scores_the_truth():
    for shared in (True, False):
        model, images, labels, lengths = tiny_problem(batch=5, shared=shared)
        layout = model.layout(lengths)
        f = flat_potentials(model, images, layout)
        unary = model.unary_scores(torch.from_numpy(images)).detach().numpy()
        tables = [t.detach().numpy() for t in model.pairwise.tables]
        truth, owner = layout.truth(labels)
        score = np.bincount(owner, f[truth], len(lengths))
        for s, n in enumerate(lengths):
            g = chain(int(n), C, order=2)
            expected = [unary[s, i] for i in range(n)]
            expected += [tables[d - 1] if shared else tables[d - 1][i]
                         for d in (1, 2) for i in range(n - d)]
            chunk = f[layout.offset[s]:layout.offset[s + 1]]
            np.testing.assert_allclose(chunk, np.concatenate([e.ravel() for e in expected]))
            y = labels[s, :n]
            manual = sum(p[tuple(y[list(r)])] for r, p in zip(g.regions, expected))
            assert score[s] == pytest.approx(manual)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_decode_is_the_exact_map(order):
    model, images, labels, lengths = tiny_problem(order=2, batch=6)
    potentials, result = batch_loss(model, images, labels, lengths, order,
                                    InferenceOptions(algorithm="local"))
    predicted = model.decode(Batch(torch.from_numpy(images), labels), potentials,
                             result.unary_beliefs)
    layout = model.layout(lengths, order)
    f = flat_potentials(model, images, layout)
    for s, n in enumerate(lengths):
        g = chain(int(n), C, order=order)
        pots = [p for p in _split(f[layout.offset[s]:layout.offset[s + 1]], g)]
        best = enumerate_map(g.cardinalities, g.regions, pots)
        score = lambda y: sum(p[tuple(y[list(r)])] for r, p in zip(g.regions, pots))  # noqa: E731
        assert score(predicted[s, :n]) == pytest.approx(score(best), abs=1e-9)
        assert np.all(predicted[s, n:] == -1)


def _split(chunk, graph):
    out, pos = [], 0
    for shape, size in zip(graph.shapes, graph.sizes):
        out.append(chunk[pos:pos + size].reshape(shape))
        pos += size
    return out


def test_local_algorithm_is_a_softmax_per_region():
    model, images, labels, lengths = tiny_problem(batch=3)
    layout = model.layout(lengths)
    f = flat_potentials(model, images, layout)
    result = flat_structured_loss(f, layout, labels, InferenceOptions(algorithm="local"))
    g = chain(int(lengths[0]), C, order=2)
    chunk = _split(f[:layout.offset[1]], g)
    beliefs = _split(result.beliefs[:layout.offset[1]], g)
    for p, b in zip(chunk, beliefs):
        np.testing.assert_allclose(b, np.exp(p - p.max()) / np.exp(p - p.max()).sum(), atol=1e-12)


def test_exact_enumerates_small_graphs_and_refuses_large_ones():
    """A 2nd-order chain of 3 classes is small enough to enumerate: the beliefs and the loss are
    brute force's marginals and log Z - F(y); 26 classes over 5 letters are refused."""
    model, images, labels, lengths = tiny_problem(order=2)
    potentials, result = total_loss(model, images, labels, lengths, InferenceOptions(algorithm="exact"))
    layout = potentials.layout
    f = flat_potentials(model, images, layout)
    for s, n in enumerate(lengths):
        g = chain(int(n), C, order=2)
        pots = _split(f[layout.offset[s]:layout.offset[s + 1]], g)
        marginals, log_z = enumerate_marginals(g.cardinalities, g.regions, pots)
        np.testing.assert_allclose(result.beliefs[layout.offset[s]:layout.offset[s + 1]],
                                   np.concatenate([m.ravel() for m in marginals]), atol=1e-12)
        score = sum(p[tuple(labels[s, list(r)])] for r, p in zip(g.regions, pots))
        assert result.loss[s] == pytest.approx(log_z - score, abs=1e-10)
    big = WordCRF(IMAGE, 26, 5, hidden=[5], order=2).double()
    words = np.zeros((2, 5), dtype=np.int64)
    with pytest.raises(InputError, match="first-order"):
        batch_loss(big, np.zeros((2, 5, *IMAGE)), words, np.full(2, 5), 2,
                   InferenceOptions(algorithm="exact"))


def test_pull_back_equals_autograd_through_the_gather():
    for shared in (True, False):
        model, images, labels, lengths = tiny_problem(batch=5, shared=shared)
        layout = model.layout(lengths)
        gradient = np.random.default_rng(2).normal(size=layout.num_potentials)
        model.zero_grad()
        source = model.source(torch.from_numpy(images), model.order)
        torch.autograd.backward(source[torch.from_numpy(layout.source_index)],
                                torch.from_numpy(gradient))
        expected = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        source = model.source(torch.from_numpy(images), model.order)
        torch.autograd.backward(source, torch.from_numpy(pull_back(layout, gradient, source.numel())))
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.grad, expected[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algorithm, counting", [
    ("converge", "convex"), ("blend", "convex"), ("local", "convex"), ("converge", "bethe")])
def test_source_path_gives_the_flat_paths_loss_and_gradient(algorithm, counting):
    """structured_loss on the CPU (shared tables where the engine can share them) against
    flat_structured_loss on the flat potentials, pulled back by hand."""
    for shared in (True, False):
        model, images, labels, lengths = tiny_problem(batch=6, shared=shared)
        options = InferenceOptions(algorithm=algorithm, counting_numbers=counting, sweeps=2,
                                   max_sweeps=60, tol=1e-9)
        sizes = message_sizes(model, lengths)
        stores = [MessageStore(np.arange(6), sizes) for _ in range(2)]
        ids = np.arange(6)
        layout = model.layout(lengths)
        f = flat_potentials(model, images, layout)
        for _ in range(2):   # blend: the second step starts from the stored messages
            _, mine = batch_loss(model, images, labels, lengths, 2, options, stores[0], ids)
            flat = flat_structured_loss(f, layout, labels, options, stores[1], ids)
            np.testing.assert_allclose(mine.loss, flat.loss, rtol=1e-10)
            np.testing.assert_allclose(mine.gradients[0],
                                       pull_back(layout, flat.flat_gradient, layout.source_size),
                                       atol=1e-10)
            assert mine.sweeps == flat.sweeps
            # shared tables (convex counting numbers): the characters' beliefs, not the flat ones
            assert (mine.beliefs is None) == (counting == "convex")
            assert_groups_close(mine.unary_beliefs, flat.unary_beliefs, atol=1e-10)
            assert layout.correct_variables(mine.unary_beliefs, labels) == \
                layout.correct_variables(flat.unary_beliefs, labels)
            assert layout.correct_variables(flat.unary_beliefs, labels)[0] > 0
        np.testing.assert_allclose(stores[0].values, stores[1].values, atol=1e-10)


@pytest.mark.parametrize("sizes", [[6, 6, 6, 6, 6], [6, 0, 10, 4, 6]])
def test_message_store_gathers_and_scatters_like_a_dict(sizes):
    rng = np.random.default_rng(1)
    ids = np.array([7, 3, 9, 1, 4])
    store = MessageStore(ids, sizes)
    reference = {int(i): np.zeros(n) for i, n in zip(ids, sizes)}
    for _ in range(5):
        batch = rng.permutation(ids)[:3]
        np.testing.assert_array_equal(store.gather(batch),
                                      np.concatenate([reference[int(i)] for i in batch]))
        new = rng.normal(size=sum(len(reference[int(i)]) for i in batch))
        store.scatter(batch, new)
        for i, part in zip(batch, np.split(new, np.cumsum([len(reference[int(i)]) for i in batch])[:-1])):
            reference[int(i)] = part
    for i in ids:
        np.testing.assert_array_equal(store.of(int(i)), reference[int(i)])
    with pytest.raises(KeyError, match="not held here"):
        store.gather([5])
