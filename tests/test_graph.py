"""Region graphs: parents, counting numbers, colouring, builders, batching and input checks."""
import numpy as np
import pytest

from dstrain.graph import GraphBatch, RegionGraph, chain, fully_connected, grid
from helpers import random_loopy, random_tree


def test_parents_are_direct_supersets_only():
    g = RegionGraph([2, 2, 2], [(0, 1, 2), (2, 1), (1,), (0,)])
    # (1,) lies in (2, 1) which lies in the triple: the triple is not a direct parent of (1,)
    assert g.parents == ((), (0,), (1,), (0,))
    assert g.children[0] == (1, 3)


def test_bethe_counting_numbers_on_a_chain():
    g = chain(4, 3, counting_numbers="bethe")
    # unaries: 1 - degree; pairs: 1
    assert g.counting_numbers.tolist() == [0, -1, -1, 0, 1, 1, 1]


@pytest.mark.parametrize("graph, colours", [
    (chain(9, 3), 2), (chain(9, 3, order=2), 3), (fully_connected(6), 6), (grid(4, 5, 2), 2)])
def test_colour_counts_of_the_application_graphs(graph, colours):
    assert len(graph.colours) == colours


def _conflict(g, a, b):
    return a in g.parents[b] or b in g.parents[a] or bool(set(g.parents[a]) & set(g.parents[b]))


@pytest.mark.parametrize("seed", range(5))
def test_colouring_separates_conflicting_regions_and_covers_all_senders(seed):
    rng = np.random.default_rng(seed)
    for g in (random_loopy(rng), random_tree(rng, 9), fully_connected(5)):
        coloured = [r for colour in g.colours for r in colour]
        assert sorted(coloured) == [r for r in range(len(g.regions)) if g.parents[r]]
        for colour in g.colours:
            for i, a in enumerate(colour):
                for b in colour[i + 1:]:
                    assert not _conflict(g, a, b), (a, b)


def test_structure_is_computed_once_per_structure():
    assert chain(6, 4, order=2).structure is chain(6, 4, order=2).structure
    assert chain(6, 4).structure is not chain(7, 4).structure


def test_builders_region_order_and_sizes():
    g = chain(5, 26, order=2)
    assert g.regions[:5] == tuple((i,) for i in range(5))
    assert g.regions[5:] == ((0, 1), (1, 2), (2, 3), (3, 4), (0, 2), (1, 3), (2, 4))
    assert len(fully_connected(38).regions) == 38 + 703
    assert len(grid(3, 4, 5).regions) == 12 + 3 * 3 + 2 * 4


def test_batch_of_variable_length_words_packs_and_unpacks(rng):
    graphs = [chain(int(n), 26, order=2) for n in rng.integers(3, 15, 40)]
    batch = GraphBatch(graphs)
    pots = [[rng.normal(size=s) for s in g.shapes] for g in graphs]
    flat = batch.pack(pots)
    assert flat.shape == (batch.num_potentials,)
    assert batch.num_potentials == sum(sum(g.sizes) for g in graphs)
    assert batch.num_messages == sum(g.sizes[r] for g in graphs for r, _ in g.edges)
    back = batch.unpack(flat)
    for sample, sample_back in zip(pots, back):
        for a, b in zip(sample, sample_back):
            np.testing.assert_array_equal(a, b)
    assert len(batch.colours) == 3


@pytest.mark.parametrize("cards, regions, options, message", [
    ([2, 2], [(0,), (2,)], {}, "unknown variable 2"),
    ([2, 2], [(0, 1), (1, 0)], {}, "duplicates regions[0]"),
    ([2, 2], [(0, 0)], {}, "repeats a variable"),
    ([2, 2], [], {}, "empty graph"),
    ([2, 2], [()], {}, "is empty"),
    ([2, 0], [(0,)], {}, "cardinalities[1]"),
    ([2, 2], [(0,), (0, 1)], {"eps": 0}, "eps"),
    ([2, 2], [(0,), (0, 1)], {"eps": -1.0}, "eps"),
    ([2, 2], [(0,), (0, 1)], {"counting_numbers": [-1.0, 1.0]}, "zero for region 0"),
    ([2, 2], [(0,), (0, 1)], {"counting_numbers": [1.0]}, "expected 2 finite numbers"),
    ([2, 2], [(0,), (0, 1)], {"counting_numbers": "kikuchi"}, "expected one of"),
    ([2, 2], [(0,), (0, 1)], {"counting_numbers": [1.0, 0.0]}, "no parent"),
])
def test_bad_graphs_raise_value_errors_that_name_the_problem(cards, regions, options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RegionGraph(cards, regions, **options)


def test_potential_shape_must_match_its_region():
    g = RegionGraph([2, 3], [(0,), (1, 0)])
    with pytest.raises(ValueError, match=r"potentials\[1\] has shape \(2, 3\).*needs shape \(3, 2\)"):
        g.check_potentials([np.zeros(2), np.zeros((2, 3))])
    with pytest.raises(ValueError, match="expected 2 arrays"):
        g.check_potentials([np.zeros(2)])
