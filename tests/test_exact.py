"""Tests of exact chain / forest inference against brute-force enumeration."""

import math

import numpy as np
import pytest

from dstrain.inference.brute_force import (
    enumerate_log_partition,
    enumerate_map,
    enumerate_marginals,
)
from dstrain.inference.exact import (
    chain_marginals,
    chain_viterbi,
    forest_map,
    is_pairwise_forest,
)

TOL = 1e-9


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def random_chain_batch(rng, batch=6, scale=1.0):
    """Random (unary, pairwise, lengths) with lengths covering 1 and L."""
    num_labels = int(rng.integers(2, 5))
    length = int(rng.integers(1, 8))
    unary = scale * rng.normal(size=(batch, length, num_labels))
    pairwise = scale * rng.normal(size=(batch, length - 1, num_labels, num_labels))
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[0], lengths[-1] = 1, length
    return unary, pairwise, lengths


def chain_as_regions(unary, pairwise, n):
    """The first n positions of one chain as (cardinalities, regions, potentials)."""
    num_labels = unary.shape[-1]
    regions = [(t,) for t in range(n)] + [(t, t + 1) for t in range(n - 1)]
    potentials = [unary[t] for t in range(n)] + [pairwise[t] for t in range(n - 1)]
    return [num_labels] * n, regions, potentials


def brute_force_chain(unary, pairwise, n, eps):
    """Brute-force (node marginals (n, C), pair marginals (n-1, C, C), log Z)."""
    marginals, log_z = enumerate_marginals(*chain_as_regions(unary, pairwise, n), eps=eps)
    node = np.array(marginals[:n])
    pair = np.array(marginals[n:]).reshape(n - 1, unary.shape[-1], unary.shape[-1])
    return node, pair, log_z


def score(regions, potentials, states):
    """F(states), summed term by term."""
    return sum(float(p[tuple(states[v] for v in r)]) for r, p in zip(regions, potentials))


def top_two_scores(cardinalities, regions, potentials):
    """Best and second-best F over all joint states (to tell if the MAP is unique)."""
    grids = np.indices(cardinalities).reshape(len(cardinalities), -1).T
    all_scores = np.sort([score(regions, potentials, s) for s in grids])
    second = all_scores[-2] if len(all_scores) > 1 else -np.inf
    return all_scores[-1], second


def assert_chain_matches_brute_force(unary, pairwise, lengths, eps, tol=TOL, log_z_rtol=0.0):
    node, pair, log_z = chain_marginals(unary, pairwise, lengths, eps=eps)
    length = unary.shape[1]
    for b, n in enumerate(lengths):
        ref_node, ref_pair, ref_log_z = brute_force_chain(unary[b], pairwise[b], n, eps)
        np.testing.assert_allclose(node[b, :n], ref_node, rtol=0, atol=tol)
        np.testing.assert_allclose(pair[b, : n - 1], ref_pair, rtol=0, atol=tol)
        assert abs(log_z[b] - ref_log_z) <= tol + log_z_rtol * abs(ref_log_z)
        # Outputs beyond the length are exactly zero.
        assert np.all(node[b, n:] == 0.0)
        assert np.all(pair[b, n - 1 :] == 0.0)
    assert node.shape == unary.shape
    assert pair.shape == (unary.shape[0], length - 1) + unary.shape[2:] * 2
    assert log_z.shape == (unary.shape[0],)


def random_forest(rng):
    """Random pairwise forest: cardinalities, shuffled regions (random pair
    orientation, some variables without unary, some with two) and potentials."""
    num_variables = int(rng.integers(1, 10))
    cardinalities = [int(c) for c in rng.integers(2, 4, size=num_variables)]
    labels = rng.permutation(num_variables)
    regions = []
    for position in range(1, num_variables):
        if rng.random() < 0.8:  # otherwise start a new tree
            i, j = labels[int(rng.integers(position))], labels[position]
            regions.append((int(i), int(j)) if rng.random() < 0.5 else (int(j), int(i)))
    for v in range(num_variables):
        for _ in range(int(rng.choice([0, 1, 1, 2]))):
            regions.append((v,))
    regions = [regions[k] for k in rng.permutation(len(regions))]
    potentials = [rng.normal(size=tuple(cardinalities[v] for v in r)) for r in regions]
    return cardinalities, regions, potentials


# --------------------------------------------------------------------------- #
# Brute force itself
# --------------------------------------------------------------------------- #


def test_brute_force_two_variables_by_hand():
    # Unary factor on y0: [1, 2]. Pair factor 3 on (y0=1, y1=0), else 1.
    # Weights exp(F): (0,0)=1, (0,1)=1, (1,0)=2*3=6, (1,1)=2, so Z = 10.
    # The pair is given as (1, 0) to exercise region order: table[y1, y0].
    cardinalities = [2, 2]
    regions = [(0,), (1, 0)]
    potentials = [np.log([1.0, 2.0]), np.log([[1.0, 3.0], [1.0, 1.0]])]

    marginals, log_z = enumerate_marginals(cardinalities, regions, potentials)
    assert log_z == pytest.approx(math.log(10.0), abs=1e-12)
    np.testing.assert_allclose(marginals[0], [0.2, 0.8], atol=1e-12)
    # marginals[1][y1, y0]
    np.testing.assert_allclose(marginals[1], [[0.1, 0.6], [0.1, 0.2]], atol=1e-12)
    assert enumerate_log_partition(cardinalities, regions, potentials) == pytest.approx(log_z)
    labels = enumerate_map(cardinalities, regions, potentials)
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0]

    # eps = 2 takes square roots of the weights: 1, 1, sqrt 6, sqrt 2.
    w00, w01, w10, w11 = 1.0, 1.0, math.sqrt(6.0), math.sqrt(2.0)
    total = w00 + w01 + w10 + w11
    marginals, log_z = enumerate_marginals(cardinalities, regions, potentials, eps=2.0)
    assert log_z == pytest.approx(math.log(total), abs=1e-12)
    np.testing.assert_allclose(marginals[0], [(w00 + w01) / total, (w10 + w11) / total], atol=1e-12)
    np.testing.assert_allclose(marginals[1], np.array([[w00, w10], [w01, w11]]) / total, atol=1e-12)


def test_brute_force_rejects_huge_state_space_and_bad_shapes():
    with pytest.raises(ValueError, match=str(2**23)):
        enumerate_marginals([2] * 23, [(0,)], [np.zeros(2)])
    with pytest.raises(ValueError, match="potentials\\[0\\]"):
        enumerate_map([2, 3], [(0, 1)], [np.zeros((3, 2))])


# --------------------------------------------------------------------------- #
# Chain marginals
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", range(12))
def test_chain_marginals_match_brute_force(seed):
    rng = np.random.default_rng(1000 + seed)
    unary, pairwise, lengths = random_chain_batch(rng)
    eps = float(rng.choice([0.5, 1.0, 2.0]))
    assert_chain_matches_brute_force(unary, pairwise, lengths, eps)


def test_chain_marginals_single_position():
    rng = np.random.default_rng(7)
    unary = rng.normal(size=(3, 1, 4))
    pairwise = np.zeros((3, 0, 4, 4))
    assert_chain_matches_brute_force(unary, pairwise, np.ones(3, dtype=int), 1.0)


def test_chain_marginals_ignore_garbage_beyond_lengths():
    rng = np.random.default_rng(11)
    unary, pairwise, _ = random_chain_batch(rng, batch=5)
    length = unary.shape[1]
    if length < 3:  # make sure there is padding to poison
        unary = rng.normal(size=(5, 6, 3))
        pairwise = rng.normal(size=(5, 5, 3, 3))
        length = 6
    lengths = np.array([1, 2, length // 2, length - 1, length])
    dirty_unary, dirty_pairwise = unary.copy(), pairwise.copy()
    for b, n in enumerate(lengths):
        dirty_unary[b, n:] = np.nan
        dirty_pairwise[b, n - 1 :] = np.nan
    dirty_unary[0, 1:, 0] = np.inf
    dirty_pairwise[1, 1:, 0, 0] = -np.inf

    clean = chain_marginals(unary, pairwise, lengths, eps=0.5)
    with np.errstate(over="raise", invalid="raise"):  # padding must not reach any arithmetic
        dirty = chain_marginals(dirty_unary, dirty_pairwise, lengths, eps=0.5)
    for clean_out, dirty_out in zip(clean, dirty):
        assert np.all(np.isfinite(dirty_out))
        np.testing.assert_array_equal(clean_out, dirty_out)
    assert_chain_matches_brute_force(unary, pairwise, lengths, 0.5)

    labels, scores = chain_viterbi(dirty_unary, dirty_pairwise, lengths)
    clean_labels, clean_scores = chain_viterbi(unary, pairwise, lengths)
    np.testing.assert_array_equal(labels, clean_labels)
    np.testing.assert_array_equal(scores, clean_scores)


@pytest.mark.parametrize("seed", range(4))
def test_chain_marginals_huge_potentials_stay_finite(seed):
    rng = np.random.default_rng(2000 + seed)
    unary, pairwise, lengths = random_chain_batch(rng, scale=1e4)
    eps = float(rng.choice([0.5, 1.0, 2.0]))
    node, pair, log_z = chain_marginals(unary, pairwise, lengths, eps=eps)
    assert np.all(np.isfinite(node)) and np.all(np.isfinite(pair)) and np.all(np.isfinite(log_z))
    # log Z is ~1e5 here and float64 rounds it at ~1e-11, so compare it relatively;
    # the marginals (exp of differences of such numbers) still meet the usual 1e-9.
    assert_chain_matches_brute_force(unary, pairwise, lengths, eps, log_z_rtol=1e-12)


# --------------------------------------------------------------------------- #
# Viterbi
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", range(12))
def test_chain_viterbi_matches_brute_force(seed):
    rng = np.random.default_rng(3000 + seed)
    scale = 1e4 if seed % 4 == 3 else 1.0
    unary, pairwise, lengths = random_chain_batch(rng, scale=scale)
    labels, scores = chain_viterbi(unary, pairwise, lengths)
    assert labels.dtype == np.int64 and labels.shape == unary.shape[:2]
    assert scores.dtype == np.float64 and scores.shape == lengths.shape
    for b, n in enumerate(lengths):
        model = chain_as_regions(unary[b], pairwise[b], n)
        assert np.all(labels[b, n:] == -1)
        assert np.all((labels[b, :n] >= 0) & (labels[b, :n] < unary.shape[2]))
        # The returned score is F of the returned labels...
        assert scores[b] == pytest.approx(score(model[1], model[2], labels[b, :n]), rel=1e-12, abs=TOL)
        # ...and that is the brute-force maximum.
        best, second = top_two_scores(*model)
        assert scores[b] == pytest.approx(best, rel=1e-12, abs=TOL)
        if best - second > 1e-6 * max(1.0, abs(best)):
            np.testing.assert_array_equal(labels[b, :n], enumerate_map(*model))


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "unary_shape, pairwise_shape, lengths, match",
    [
        ((2, 3), (2, 2, 3, 3), [1, 2], "unary"),
        ((2, 3, 4), (2, 3, 4, 4), [1, 2], r"pairwise .*\(2, 2, 4, 4\)"),
        ((2, 3, 4), (2, 2, 4, 3), [1, 2], "pairwise"),
        ((2, 3, 4), (1, 2, 4, 4), [1, 2], "pairwise"),
        ((2, 3, 4), (2, 2, 4, 4), [1, 2, 3], r"lengths .*\(2,\)"),
        ((2, 3, 4), (2, 2, 4, 4), [0, 2], "lengths"),
        ((2, 3, 4), (2, 2, 4, 4), [1, 4], "lengths"),
        ((2, 3, 4), (2, 2, 4, 4), [1.0, 2.5], "lengths"),
        ((2, 0, 4), (2, 0, 4, 4), [1, 1], "unary"),
    ],
)
def test_chain_functions_reject_bad_inputs(unary_shape, pairwise_shape, lengths, match):
    unary, pairwise = np.zeros(unary_shape), np.zeros(pairwise_shape)
    with pytest.raises(ValueError, match=match):
        chain_marginals(unary, pairwise, np.array(lengths))
    with pytest.raises(ValueError, match=match):
        chain_viterbi(unary, pairwise, np.array(lengths))


def test_chain_marginals_rejects_non_positive_eps():
    with pytest.raises(ValueError, match="eps"):
        chain_marginals(np.zeros((1, 2, 2)), np.zeros((1, 1, 2, 2)), [2], eps=0.0)


# --------------------------------------------------------------------------- #
# Forests
# --------------------------------------------------------------------------- #


def test_is_pairwise_forest_cases():
    cards = [2, 2, 2, 2]
    assert is_pairwise_forest(cards, [])
    assert is_pairwise_forest(cards, [(0,), (1, 0), (2, 1), (3,), (3,)])  # a path + repeated unary
    assert is_pairwise_forest(cards, [(2, 3), (0, 1)])  # two trees
    assert not is_pairwise_forest(cards, [(0, 1), (1, 2), (2, 0)])  # a cycle
    assert not is_pairwise_forest(cards, [(0, 1), (2, 3), (3, 1), (0, 2)])  # a longer cycle
    assert not is_pairwise_forest(cards, [(0, 1, 2)])  # a triple
    assert not is_pairwise_forest(cards, [(0, 1), (1, 0)])  # a repeated pair
    assert not is_pairwise_forest(cards, [(1, 1)])  # a self-loop
    assert not is_pairwise_forest(cards, [()])


@pytest.mark.parametrize("seed", range(40))
def test_forest_map_matches_brute_force(seed):
    rng = np.random.default_rng(4000 + seed)
    cardinalities, regions, potentials = random_forest(rng)
    assert is_pairwise_forest(cardinalities, regions)
    labels = forest_map(cardinalities, regions, potentials)
    assert labels.dtype == np.int64 and labels.shape == (len(cardinalities),)
    best, second = top_two_scores(cardinalities, regions, potentials)
    assert score(regions, potentials, labels) == pytest.approx(best, abs=TOL)
    if best - second > 1e-6:
        np.testing.assert_array_equal(labels, enumerate_map(cardinalities, regions, potentials))


def test_forest_map_isolated_variables_and_errors():
    # Variable 1 is in no region, so any state is optimal; it must come back as 0.
    labels = forest_map([3, 4, 2], [(0,), (2, 0)], [np.array([0.0, 0.0, 5.0]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])])
    assert labels.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="forest"):
        forest_map([2, 2, 2], [(0, 1), (1, 2), (0, 2)], [np.zeros((2, 2))] * 3)
    with pytest.raises(ValueError, match="forest"):
        forest_map([2, 2, 2], [(0, 1, 2)], [np.zeros((2, 2, 2))])
    with pytest.raises(ValueError, match=r"potentials\[0\]"):
        forest_map([2, 3], [(0, 1)], [np.zeros((3, 2))])
