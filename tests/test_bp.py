"""Convex belief propagation: exactness on trees, descent and consistency on loopy graphs,
agreement with the loop-based reference and between batched and single-sample runs, stability."""
import warnings

import numpy as np
import pytest

from dstrain.graph import GraphBatch, RegionGraph, chain, fully_connected, grid
from dstrain.inference import ConvexBP, map_assignment, marginals
from dstrain.inference.brute_force import enumerate_map, enumerate_marginals
from dstrain.inference.exact import chain_marginals
from dstrain.inference.reference import ReferenceBP
from helpers import consistency_error, random_loopy, random_potentials, random_tree


def _run_batch(graphs, potentials, **run_options):
    batch = GraphBatch(graphs)
    result = ConvexBP(batch).run(batch.pack(potentials), **run_options)
    return batch.unpack(result.beliefs), result


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_bethe_on_random_trees_gives_exact_marginals_and_log_partition(eps):
    rng = np.random.default_rng(int(eps * 10))
    graphs = [random_tree(rng, int(n), counting_numbers="bethe", eps=eps)
              for n in rng.integers(2, 11, 12)]
    pots = [random_potentials(rng, g, scale=2.0) for g in graphs]
    beliefs, result = _run_batch(graphs, pots, max_sweeps=2000, tol=1e-11)
    assert result.converged
    for g, p, b, dual in zip(graphs, pots, beliefs, result.dual):   # every batch element
        exact, log_z = enumerate_marginals(g.cardinalities, g.regions, p, eps=eps)
        assert max(np.abs(x - y).max() for x, y in zip(b, exact)) <= 1e-6
        assert dual == pytest.approx(eps * log_z, abs=1e-8)


def test_bethe_on_chains_matches_forward_backward_with_variable_lengths():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 8, 10)
    num_states, longest = 4, 7
    unary = rng.normal(size=(10, longest, num_states))
    pairwise = rng.normal(size=(10, longest - 1, num_states, num_states))
    node_marg, _, log_z = chain_marginals(unary, pairwise, lengths)
    graphs = [chain(int(n), num_states, counting_numbers="bethe") for n in lengths]
    pots = [[unary[s, i] for i in range(n)] + [pairwise[s, i] for i in range(n - 1)]
            for s, n in enumerate(lengths)]
    beliefs, result = _run_batch(graphs, pots, tol=1e-12)
    for s, n in enumerate(lengths):
        np.testing.assert_allclose(np.stack(beliefs[s][:n]), node_marg[s, :n], atol=1e-8)
    np.testing.assert_allclose(result.dual, log_z, atol=1e-8)


def _check_descent(graph, pots):
    """Reference: dual after every single block update; engine: after every colour."""
    reference = ReferenceBP(graph, pots)
    batch = GraphBatch([graph])
    engine = ConvexBP(batch)
    state = engine.start(batch.pack([pots]))
    ref_dual, eng_dual = reference.dual(), engine.dual(state)[0]
    for _ in range(30):
        for k, colour in enumerate(graph.colours):
            for r in colour:
                reference.update_region(r)
                now = reference.dual()
                assert now <= ref_dual + 1e-9, f"region {r} raised the dual"
                ref_dual = now
            engine.update_colour(state, k)
            now = engine.dual(state)[0]
            assert now <= eng_dual + 1e-9, f"colour {k} raised the dual"
            eng_dual = now
    assert eng_dual == pytest.approx(ref_dual, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_no_block_update_raises_the_dual_on_loopy_graphs_with_triples(seed):
    rng = np.random.default_rng(seed)
    graph = random_loopy(rng)
    _check_descent(graph, random_potentials(rng, graph, scale=2.0))


def test_no_block_update_raises_the_dual_on_fully_connected_binary():
    rng = np.random.default_rng(7)
    graph = fully_connected(6)
    _check_descent(graph, random_potentials(rng, graph, scale=2.0))


@pytest.mark.parametrize("seed", range(4))
def test_converged_beliefs_are_locally_consistent(seed):
    rng = np.random.default_rng(100 + seed)
    graphs = [random_loopy(rng), grid(3, 3, 3), fully_connected(5, 3)]
    pots = [random_potentials(rng, g, scale=1.5) for g in graphs]
    beliefs, result = _run_batch(graphs, pots, max_sweeps=5000, tol=1e-10)
    assert result.converged
    for g, b in zip(graphs, beliefs):
        assert consistency_error(g, b) <= 1e-6
        assert all(np.all(x >= 0) and abs(x.sum() - 1) < 1e-9 for x in b)


def _mixed_graphs(rng):
    """Graphs that take every path: fast pairs, binary colours, generic parents, max parents."""
    hierarchy = random_loopy(rng)
    counts = np.where([len(r) == 2 and bool(hierarchy.parents[k])
                       for k, r in enumerate(hierarchy.regions)], 0.0, 1.0)
    return [
        random_loopy(rng),
        random_loopy(rng, counting_numbers="bethe"),
        RegionGraph(hierarchy.cardinalities, hierarchy.regions, counting_numbers=counts),
        RegionGraph(hierarchy.cardinalities, hierarchy.regions, eps=0.3,
                    counting_numbers=rng.uniform(0.5, 2.0, len(hierarchy.regions))),
        fully_connected(5, 2),
        grid(2, 3, 3),
        chain(6, 3, order=2),
        random_tree(rng, 6, counting_numbers="bethe"),
    ]


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_engine_equals_loop_reference_update_for_update(seed):
    rng = np.random.default_rng(200 + seed)
    for graph in _mixed_graphs(rng):
        pots = random_potentials(rng, graph, scale=2.0)
        reference = ReferenceBP(graph, pots)
        batch = GraphBatch([graph])
        engine = ConvexBP(batch)
        state = engine.start(batch.pack([pots]))
        for _ in range(5):
            reference.sweep()
            engine.sweep(state)
            flat = np.concatenate([reference.messages[e].ravel() for e in graph.edges])
            np.testing.assert_allclose(state.messages, flat, atol=1e-9, err_msg=repr(graph))
        assert engine.dual(state)[0] == pytest.approx(reference.dual(), abs=1e-9)
        mine = batch.unpack(engine.beliefs(state))[0]
        for x, y in zip(mine, reference.beliefs()):
            np.testing.assert_allclose(x, y, atol=1e-9)


def test_batched_results_equal_one_sample_at_a_time():
    rng = np.random.default_rng(11)
    graphs = _mixed_graphs(rng) + [chain(int(n), 4, order=2) for n in rng.integers(3, 15, 6)]
    pots = [random_potentials(rng, g) for g in graphs]
    beliefs, result = _run_batch(graphs, pots, max_sweeps=40, tol=0.0)
    for s, (g, p) in enumerate(zip(graphs, pots)):
        alone, alone_result = _run_batch([g], [p], max_sweeps=40, tol=0.0)
        assert result.dual[s] == pytest.approx(alone_result.dual[0], abs=1e-10)
        for x, y in zip(beliefs[s], alone[0]):
            np.testing.assert_allclose(x, y, atol=1e-10)


def test_warm_start_continues_where_it_stopped():
    rng = np.random.default_rng(5)
    graphs = [random_loopy(rng) for _ in range(3)] + [fully_connected(4)]
    pots = [random_potentials(rng, g) for g in graphs]
    batch = GraphBatch(graphs)
    engine = ConvexBP(batch)
    flat = batch.pack(pots)
    straight = engine.run(flat, max_sweeps=12, tol=0.0)
    first = engine.run(flat, max_sweeps=5, tol=0.0)
    # a constant added to a message changes nothing: the engine re-normalises warm starts
    # (a different constant per edge, so that each edge's shift has to be found on its own)
    starts = batch.message_edge_start
    per_edge = rng.uniform(-5.0, 5.0, size=len(starts))
    shifted = first.messages + np.repeat(per_edge, np.diff(starts, append=batch.num_messages))
    normalised = engine.start(flat, shifted).messages
    np.testing.assert_array_equal(np.maximum.reduceat(normalised, starts), 0.0)
    second = engine.run(flat, messages=shifted, max_sweeps=7, tol=0.0)
    np.testing.assert_allclose(second.messages, straight.messages, atol=1e-10)
    np.testing.assert_allclose(second.beliefs, straight.beliefs, atol=1e-10)
    np.testing.assert_allclose(second.dual, straight.dual, atol=1e-9)


@pytest.mark.parametrize("make", [lambda rng: random_loopy(rng), lambda rng: fully_connected(6),
                                  lambda rng: chain(5, 26, order=2)])
def test_potentials_of_magnitude_1e4_stay_finite_and_match_the_reference(make):
    rng = np.random.default_rng(9)
    graph = make(rng)
    pots = random_potentials(rng, graph, scale=1e4)
    beliefs, result = _run_batch([graph], [pots], max_sweeps=20, tol=0.0)
    assert np.all(np.isfinite(result.dual)) and np.all(np.isfinite(result.messages))
    assert all(np.all(np.isfinite(b)) for b in beliefs[0])
    reference = ReferenceBP(graph, pots)
    for _ in range(20):
        reference.sweep()
    assert result.dual[0] == pytest.approx(reference.dual(), rel=1e-12)
    for x, y in zip(beliefs[0], reference.beliefs()):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_extreme_tree_is_still_exact():
    rng = np.random.default_rng(4)
    graph = random_tree(rng, 8, counting_numbers="bethe")
    pots = random_potentials(rng, graph, scale=1e4)
    beliefs, result = _run_batch([graph], [pots], tol=1e-9)
    exact, log_z = enumerate_marginals(graph.cardinalities, graph.regions, pots)
    assert max(np.abs(x - y).max() for x, y in zip(beliefs[0], exact)) <= 1e-6
    assert result.dual[0] == pytest.approx(log_z, rel=1e-12)


def test_functional_api_returns_lists_of_arrays_and_a_float():
    cards, regions = [2, 3, 2], [(0,), (1,), (2,), (0, 1), (1, 2)]
    pots = [np.arange(np.prod(s), dtype=float).reshape(s) / 7 for s in
            [tuple(cards[v] for v in r) for r in regions]]
    beliefs, dual = marginals(cards, regions, pots, counting_numbers="bethe")
    assert isinstance(dual, float) and len(beliefs) == len(regions)
    exact, log_z = enumerate_marginals(cards, regions, pots)
    assert dual == pytest.approx(log_z, abs=1e-8)
    for b, p, e in zip(beliefs, pots, exact):
        assert b.shape == p.shape
        np.testing.assert_allclose(b, e, atol=1e-6)


def test_functional_api_rejects_bad_input():
    with pytest.raises(ValueError, match="needs shape"):
        marginals([2, 2], [(0,), (0, 1)], [np.zeros(2), np.zeros(2)])
    with pytest.raises(ValueError, match="unknown variable"):
        marginals([2], [(0,), (0, 1)], [np.zeros(2), np.zeros((2, 2))])
    with pytest.raises(ValueError, match="eps"):
        marginals([2], [(0,)], [np.zeros(2)], eps=0)


def test_map_assignment_is_exact_on_trees(rng):
    for _ in range(10):
        graph = random_tree(rng, int(rng.integers(2, 9)))
        pots = random_potentials(rng, graph)
        y = map_assignment(graph.cardinalities, graph.regions, pots)
        best = enumerate_map(graph.cardinalities, graph.regions, pots)
        assert _score(graph, pots, y) == pytest.approx(_score(graph, pots, best), abs=1e-9)


def test_map_assignment_on_loopy_graphs_finds_a_clear_optimum(rng):
    for _ in range(5):
        graph = random_loopy(rng)
        pots = random_potentials(rng, graph, scale=0.3)
        planted = rng.integers(0, 2, len(graph.cardinalities))
        for r, p in zip(graph.regions, pots):
            p[tuple(planted[list(r)])] += 3.0       # a unique, clearly best assignment
        y = map_assignment(graph.cardinalities, graph.regions, pots)
        np.testing.assert_array_equal(y, enumerate_map(graph.cardinalities, graph.regions, pots))


def _score(graph, pots, y):
    return sum(p[tuple(y[list(r)])] for r, p in zip(graph.regions, pots))


def test_warm_start_with_a_graph_without_edges_last_in_the_batch():
    # a one-letter word has no messages; last in a batch it once made the warm start index past
    # the end of the message vector
    rng = np.random.default_rng(3)
    batch = GraphBatch([chain(3, 2, order=1), chain(1, 2, order=1)])
    engine = ConvexBP(batch)
    potentials = rng.normal(size=batch.num_potentials)
    cold = engine.run(potentials, max_sweeps=50, tol=1e-10)
    warm = engine.run(potentials, rng.normal(size=batch.num_messages), max_sweeps=50, tol=1e-10)
    np.testing.assert_allclose(warm.beliefs, cold.beliefs, atol=1e-8)


@pytest.mark.parametrize("sweeps", [0, 1, 3])
def test_a_run_equals_start_sweeps_and_read_outs(sweeps, cpu_path):
    # run() reads out in one pass (pair sums and beliefs block by block, on reused arrays) and
    # skips all but the last sweep's change: the same numbers as the step-by-step interface
    rng = np.random.default_rng(40 + sweeps)
    batches = [_mixed_graphs(rng) + [fully_connected(4, 2)], [chain(5, 6, order=2)] * 4,
               [grid(3, 4, 3)] * 3, [fully_connected(5, 2)] * 3, [grid(2, 3, 2)] * 2]
    for graphs in batches:
        batch = GraphBatch(graphs)
        engine = ConvexBP(batch, threads=1)
        potentials = rng.normal(scale=2.0, size=batch.num_potentials)
        messages = rng.normal(size=batch.num_messages)
        for _ in range(2):   # the second run on the first one's arrays
            result = engine.run(potentials, messages, max_sweeps=sweeps, tol=0.0)
            state = engine.start(potentials, messages)
            change = float("inf")
            for _ in range(sweeps):
                change = engine.sweep(state)
            assert result.max_change == change and result.sweeps == sweeps
            np.testing.assert_array_equal(result.messages, state.messages)
            np.testing.assert_array_equal(result.beliefs, engine.beliefs(state))
            np.testing.assert_array_equal(result.dual, engine.dual(state))
            assert set(result.seconds) == {"start", "sweeps", "readout", "messages"}


def test_exp_and_log_give_an_entry_the_same_bits_wherever_it_sits():
    # ranges of a batch run separately (in threads), so an entry's exp and log must not depend on
    # its position in an array or the array's length (SIMD loops with scalar tails would)
    from dstrain.inference.flat import _exp, _log
    rng = np.random.default_rng(7)
    x = rng.normal(scale=30.0, size=4099)
    whole_exp, whole_log = _exp(x), _log(np.abs(x))
    for k in range(1, 18):
        for n in (1, 2, 3, 7, 8, 9, 15, 16, 17, 100):
            part = np.concatenate([np.zeros(k), x[:n]])
            assert np.array_equal(_exp(part)[k:], whole_exp[:n])
            assert np.array_equal(_log(np.abs(part[k:])), whole_log[:n])
    strided = np.repeat(x, 2)[::2]
    assert np.array_equal(_exp(strided), whole_exp)


def test_short_row_sums_equal_numpys_bit_for_bit():
    # region_softmax unrolls the sums of short rows (5-state grids): the same additions in order
    from dstrain.inference.flat import _row_sum
    rng = np.random.default_rng(3)
    for n in range(12):
        z = rng.choice([1e16, -1e16, 1.0, 3.0, 1e-16, 2.5e15], (500, n)) * rng.random((500, n))
        assert np.array_equal(_row_sum(z), z.sum(axis=1))


def _shared_problem(rng, shared: bool, scale: float, counting="convex", lengths=None):
    """Chains of order 2 whose pair tables are shared blocks of a source vector (a word batch)."""
    from dstrain.tasks.words.model import chain_layout
    C, L = 4, 5
    lengths = rng.integers(1, L + 1, 7) if lengths is None else lengths
    layout = chain_layout(np.asarray(lengths, dtype=np.int64).tobytes(), L, C, 2, shared)
    if counting == "varied":   # pairs of one table with different eps c_p: several variants
        graphs = [chain(int(n), C, 2, counting_numbers=[1.0] * int(n)
                        + list(rng.choice([0.5, 1.0, 2.0], max(2 * int(n) - 3, 0))))
                  for n in lengths]
    else:
        graphs = layout.graphs(counting)
    engine = ConvexBP(GraphBatch(graphs))
    source = scale * rng.normal(size=layout.source_size)
    return layout, engine, source


@pytest.mark.parametrize("shared, scale, counting", [
    (True, 1.0, "convex"), (False, 1.0, "convex"), (True, 2.0, "varied"),
    (False, 300.0, "convex"), (True, 300.0, "varied")])   # 300: sums underflow, exact fallback
def test_shared_pair_tables_give_the_flat_engines_results(shared, scale, counting):
    rng = np.random.default_rng(int(scale) + 7 * shared)
    layout, engine, source = _shared_problem(rng, shared, scale, counting)
    sharing = engine.sharing(layout.source_index, layout.source_size)
    assert sharing is not None
    if counting == "varied":
        assert max(len(rows) for rows in sharing.variant_rows) > (2 if shared else 7)
    messages = rng.normal(size=engine.batch.num_messages)
    for sweeps in (0, 1, 3):
        flat = engine.run(source[layout.source_index], messages, max_sweeps=sweeps, tol=0.0)
        mine = engine.run(source, messages, max_sweeps=sweeps, tol=0.0, sharing=sharing)
        np.testing.assert_allclose(mine.messages, flat.messages, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(mine.dual, flat.dual, rtol=1e-10, atol=1e-9)
        formed = ~np.isnan(mine.beliefs)
        np.testing.assert_array_equal(np.flatnonzero(formed), sharing.rest)
        np.testing.assert_allclose(mine.beliefs[formed], flat.beliefs[formed], atol=1e-10)
        # each table's summed beliefs: the flat beliefs pulled back onto the source
        expected = np.bincount(layout.source_index, flat.beliefs, layout.source_size)
        for positions, summed in zip(sharing.tables, mine.table_beliefs):
            np.testing.assert_allclose(summed.reshape(positions.shape), expected[positions],
                                       atol=1e-9)


def test_sharing_is_refused_where_it_cannot_be_used():
    rng = np.random.default_rng(3)
    layout, engine, _ = _shared_problem(rng, True, 1.0, "bethe")   # unary beliefs from pairs
    assert engine.sharing(layout.source_index, layout.source_size) is None
    layout, engine, _ = _shared_problem(rng, True, 1.0)
    n = engine.batch.num_potentials
    assert engine.sharing(np.arange(n), n) is None                  # no table used twice
    assert engine.sharing(np.arange(n)[::-1].copy(), n) is None     # not contiguous blocks
    with pytest.raises(ValueError, match="source_index"):
        engine.sharing(np.arange(3), 3)
    with pytest.raises(ValueError, match="source"):
        engine.start(np.zeros(n), sharing=engine.sharing(layout.source_index, layout.source_size))


@pytest.mark.parametrize("make", [lambda: fully_connected(6, 2, counting_numbers="trw"),
                                  lambda: fully_connected(4, 3, counting_numbers="trw"),
                                  lambda: grid(3, 3, 2, counting_numbers="trw")])
def test_trw_counting_numbers_bound_the_log_partition_from_above(make):
    """Tree-reweighted counting numbers give a convex free energy whose optimum is an upper bound
    on log Z (exact on trees); the all-ones convex one is looser."""
    graph = make()
    pairs = [r for r, region in enumerate(graph.regions) if len(region) == 2]
    rho = len(graph.cardinalities) - 1
    np.testing.assert_allclose(graph.counting_numbers[pairs], rho / len(pairs))
    for r, region in enumerate(graph.regions):
        if len(region) == 1:
            assert graph.counting_numbers[r] == pytest.approx(
                1 - sum(graph.counting_numbers[p] for p in graph.parents[r]))
    rng = np.random.default_rng(len(graph.regions))
    for _ in range(5):
        pots = random_potentials(rng, graph, scale=1.5)
        _, log_z = enumerate_marginals(graph.cardinalities, graph.regions, pots)
        _, trw = _run_batch([graph], [pots], max_sweeps=3000, tol=1e-10)
        convex = RegionGraph(graph.cardinalities, graph.regions, counting_numbers="convex")
        _, loose = _run_batch([convex], [pots], max_sweeps=3000, tol=1e-10)
        assert log_z - 1e-6 <= trw.dual[0] <= loose.dual[0] + 1e-6


def test_trw_counting_numbers_equal_bethe_on_trees_and_refuse_larger_regions():
    np.testing.assert_allclose(chain(5, 3, counting_numbers="trw").counting_numbers,
                               chain(5, 3, counting_numbers="bethe").counting_numbers)
    with pytest.raises(ValueError, match="pairwise graphs"):
        RegionGraph([2, 2, 2], [(0,), (1,), (2,), (0, 1, 2)], counting_numbers="trw")


def _against_reference(graphs, scale, sweeps=3, seed=0, eps_rel=1e-9, unary_factor=1.0):
    """The engine's messages after each of `sweeps` sweeps, and its dual and beliefs, against
    the loop reference's, from random warm-start messages (unaries' potentials times
    `unary_factor`); returns the engine."""
    rng = np.random.default_rng(seed)
    batch = GraphBatch(graphs)
    engine = ConvexBP(batch, threads=1)
    pots = [[p * unary_factor if len(g.regions[r]) == 1 else p
             for r, p in enumerate(random_potentials(rng, g, scale=scale))] for g in graphs]
    state = engine.start(batch.pack(pots), rng.normal(size=batch.num_messages))
    references = []
    for s, (g, p) in enumerate(zip(graphs, pots)):   # the same (normalised) warm start
        start = batch.message_offset[s]
        sizes = [g.sizes[r] for r, _ in g.edges]
        cuts = start + np.concatenate([[0], np.cumsum(sizes)])
        references.append(ReferenceBP(g, p, {edge: state.messages[a:b] for edge, a, b in
                                             zip(g.edges, cuts[:-1], cuts[1:])}))
    for _ in range(sweeps):
        change = engine.sweep(state)
        assert change == pytest.approx(max(ref.sweep() for ref in references), rel=1e-9, abs=1e-9)
        flat = np.concatenate([ref.messages[e].ravel() for ref in references for e in ref.graph.edges])
        np.testing.assert_allclose(state.messages, flat, rtol=eps_rel, atol=eps_rel * max(
            1.0, np.abs(flat).max()))
    dual = engine.dual(state)
    for d, ref in zip(dual, references):
        assert d == pytest.approx(ref.dual(), rel=1e-12, abs=1e-9)
    mine = batch.unpack(engine.beliefs(state))
    for b, ref in zip(mine, references):
        for x, y in zip(b, ref.beliefs()):
            np.testing.assert_allclose(x, y, atol=1e-9)
    return engine


@pytest.mark.parametrize("counting", ["convex", "trw", "bethe"])
@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_the_fully_connected_binary_path_equals_the_reference(counting, scale, cpu_path):
    # the tagging task's graph: DenseBP, also with extreme interactions (the log-space rows)
    engine = _against_reference([fully_connected(38, 2, counting_numbers=counting)], scale,
                                sweeps=2)
    assert engine._dense is not None
    engine = _against_reference([fully_connected(7, 2, counting_numbers=counting, eps=0.6)] * 4,
                                scale, sweeps=4, seed=1)
    assert engine._dense is not None


@pytest.mark.parametrize("counting, eps", [("convex", 1.0), ("trw", 0.6), ("bethe", 1.3)])
def test_the_dense_read_out_from_exponentiated_gaps_equals_the_peaked_one(counting, eps, cpu_path):
    # DenseBP._pairs (each pair's terms e^-w, e^h_v, e^h_u and their product) against
    # _peaked_pairs (log sum exp less each pair's largest entry) on the same state
    rng = np.random.default_rng(4)
    graph = fully_connected(12, 2, counting_numbers=counting, eps=eps)
    batch = GraphBatch([graph] * 5)
    engine = ConvexBP(batch, threads=1)
    state = engine.start(batch.pack([random_potentials(rng, graph, scale=3.0)] * 5),
                         rng.normal(size=batch.num_messages))
    engine.sweep(state)
    dense, mine = state.engines[0], state.states[0]
    fast, peaked = np.full((2, 5, len(dense.plan.pairs), 4), np.nan)
    dual = dense._pairs(mine, fast)
    assert dual is not None
    np.testing.assert_allclose(dual, dense._peaked_pairs(mine, peaked), rtol=1e-12)
    np.testing.assert_allclose(fast, peaked, rtol=1e-12, atol=1e-15)


def test_the_dense_path_with_overflowing_gaps_reads_out_by_peaks_and_equals_the_reference(cpu_path):
    # unaries 1e4 times the pairs: gaps far above 709 (e^h overflows) with ordinary interactions
    engine = _against_reference([fully_connected(9, 2)] * 3, 1.0, sweeps=2, unary_factor=1e4)
    rng = np.random.default_rng(0)
    pots = [[p * 1e4 if len(r) == 1 else p for r, p in zip(g.regions, random_potentials(rng, g))]
            for g in engine.batch.graphs]
    state = engine.start(engine.batch.pack(pots))
    engine.sweep(state)
    assert state.engines[0]._pairs(state.states[0]) is None


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_the_words_path_equals_the_reference(scale, cpu_path):
    # one template of 2nd-order chains over 26 states: pair tables through views, per slot
    engine = _against_reference([chain(5, 26, order=2)] * 3, scale)
    flat = engine._flat
    assert all(v is not None for v in flat._pair_views)
    assert all(s is not None for slots in flat._slots for s in slots)


@pytest.mark.parametrize("counting", ["convex", "trw"])
@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_the_grid_path_equals_the_reference(counting, scale, cpu_path):
    # the grid segmentation CRF's graph (5 states: stacked products; 3: the loop of
    # multiply-adds; 2: the binary gap form), one template, pair tables through views; a small
    # grid multiplies slot by slot, a larger one on per-edge copies
    for shape, slots in (((4, 5), True), ((7, 8), False)):
        for states in (5, 3, 2):
            engine = _against_reference([grid(*shape, states, counting_numbers=counting)] * 2,
                                        scale)
            flat = engine._flat
            assert all(v is not None for v in flat._pair_views) and engine._dense is None
            if states > 2:
                assert all((s is not None) == slots for c in flat._slots for s in c)


def test_read_outs_from_the_last_sweeps_products_equal_those_formed_afresh(cpu_path):
    # the pairs' sums come from the last whole sweep's products where it ran; any other update
    # drops them (then the read-outs form the products themselves)
    rng = np.random.default_rng(7)
    lengths = rng.integers(2, 9, 12)
    for graphs in ([chain(int(n), 5) for n in lengths], [chain(5, 6, order=2)] * 4,
                   [grid(7, 8, 4)] * 2, _mixed_graphs(rng)):
        batch = GraphBatch(graphs)
        engine = ConvexBP(batch, threads=1)
        potentials = rng.normal(scale=2.0, size=batch.num_potentials)
        state = engine.start(potentials)
        for _ in range(3):
            engine.sweep(state)
        flat = state.states[0]
        assert flat.products
        saved = engine.beliefs(state), engine.dual(state)
        flat.products = None
        np.testing.assert_allclose(engine.beliefs(state), saved[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(engine.dual(state), saved[1], rtol=1e-12)
        engine.sweep(state)
        engine.update_colour(state, 0)
        assert flat.products is None


@pytest.mark.parametrize("scale", [1.0, 300.0])
@pytest.mark.parametrize("options", [{}, {"eps": 0.6, "counting_numbers": "trw"}])
def test_chains_of_several_lengths_sweep_on_slices_of_their_exp_tables(scale, options,
                                                                       cpu_path):
    # 1st-order chains without views: each colour's edges on one side are consecutive rows of
    # the exp tables (FlatBP._storage), so start copies no tables (numpy's sweep multiplies
    # slices of them; the kernels read each edge's table where it lies); results as the
    # reference's, also with extreme potentials (pairs shifted by their max) and scales other
    # than 1
    engine = _against_reference([chain(int(n), 7, **options) for n in (3, 6, 2, 9, 4)], scale)
    assert all(s is not None for s in engine._flat._stored)
    state = engine.start(np.zeros(engine.batch.num_potentials))
    groups = [group for colour in state.states[0].oriented for group in colour]
    if cpu_path == "kernels":
        assert groups and all(group is None for group in groups)
    else:
        tables = [t for group in groups for t in group[1::2]]
        assert tables and all(t.base is not None for t in tables)


def test_a_run_reuses_its_beliefs_array_only_once_nothing_holds_it():
    batch = GraphBatch([chain(5, 4, order=2)] * 3)
    engine = ConvexBP(batch, threads=1)
    potentials = np.random.default_rng(3).normal(size=batch.num_potentials)
    first = engine.run(potentials, max_sweeps=3, tol=0.0)
    kept = first.beliefs.copy()
    second = engine.run(potentials * 2, max_sweeps=3, tol=0.0)
    assert second.beliefs is not first.beliefs
    np.testing.assert_array_equal(first.beliefs, kept)   # the held result is untouched
    address = id(second.beliefs)
    del first, second
    third = engine.run(potentials, max_sweeps=3, tol=0.0)
    assert id(third.beliefs) == address
    np.testing.assert_array_equal(third.beliefs, kept)


def test_a_run_reuses_its_messages_array_only_once_nothing_holds_it():
    # like the beliefs (a fresh array's pages are zeroed at their first write, inside the
    # read-out); on the reused array a cold run starts from zero messages, a warm one from those
    # given, on both engines
    rng = np.random.default_rng(5)
    for graph in (fully_connected(6, 2), chain(5, 4)):
        batch = GraphBatch([graph] * 4)
        engine = ConvexBP(batch, threads=1)
        potentials = rng.normal(size=batch.num_potentials)
        first = engine.run(potentials, max_sweeps=3, tol=0.0)
        cold = first.messages.copy()
        warm = engine.run(potentials, first.messages, max_sweeps=2, tol=0.0)
        assert warm.messages is not first.messages   # (first holds its array)
        np.testing.assert_array_equal(first.messages, cold)
        address, after_warm = id(warm.messages), warm.messages.copy()
        del first, warm
        again = engine.run(potentials, max_sweeps=3, tol=0.0)
        assert id(again.messages) == address
        np.testing.assert_array_equal(again.messages, cold)
        del again
        rewarmed = engine.run(potentials, cold, max_sweeps=2, tol=0.0)
        assert id(rewarmed.messages) == address
        np.testing.assert_array_equal(rewarmed.messages, after_warm)


def test_pair_beliefs_are_the_tables_times_the_outer_products():
    # _scale_tables: table * (rows * columns), with or without a work array, into a view too
    from dstrain.inference.flat import _scale_tables
    rng = np.random.default_rng(11)
    for shape in ((3, 50, 26, 26), (2, 3000, 5, 5), (1, 7, 3, 4)):
        table, out = rng.random(shape), np.empty(shape)
        rows, columns = rng.random(shape[:3]), rng.random((*shape[:2], shape[3]))
        expected = table * (rows[..., :, None] * columns[..., None, :])
        _scale_tables(table, rows, columns, out)
        np.testing.assert_array_equal(out, expected)
        wide = np.full((shape[0], shape[1] + 2, *shape[2:]), np.nan)
        _scale_tables(table, rows, columns, wide[:, 1:-1], np.empty(shape))
        np.testing.assert_array_equal(wide[:, 1:-1], expected)
        assert np.isnan(wide[:, [0, -1]]).all()


@pytest.mark.parametrize("scale", [1.0, 300.0])
@pytest.mark.parametrize("options", [{}, {"eps": 0.6, "counting_numbers": "trw"}])
def test_chains_read_out_in_the_order_of_their_exp_tables(scale, options, cpu_path):
    # 1st-order chains (lengths 1 and 2 among them): the read-outs take weights, sums and
    # beliefs in the tables' row order (FlatBP._storage); warm-started, against the reference,
    # with the sums from the last sweep's products and formed afresh; at scale 300 some sums
    # underflow (their beliefs and dual from fhat, placed by row)
    graphs = [chain(int(n), 7, **options) for n in (1, 2, 5, 3, 8, 2, 4)]
    engine = _against_reference(graphs, scale, seed=4)
    flat = engine._flat
    assert flat._stored[0] is not None and not np.array_equal(flat._stored[0][0],
                                                              np.arange(len(flat._stored[0][0])))
    rng = np.random.default_rng(5)
    batch = engine.batch
    potentials = batch.pack([random_potentials(rng, g, scale=scale) for g in graphs])
    state = engine.start(potentials, rng.normal(size=batch.num_messages))
    for _ in range(3):
        engine.sweep(state)
    [(_, _, total)] = flat.pair_sums(state.states[0])
    assert (total < 1e-250).any() == (scale > 1.0)
    saved = engine.beliefs(state), engine.dual(state)
    state.states[0].products = None
    np.testing.assert_allclose(engine.beliefs(state), saved[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(engine.dual(state), saved[1], rtol=1e-12)
    result = engine.run(potentials, state.messages, max_sweeps=2, tol=0.0)
    again = ConvexBP(batch, threads=1)
    state = again.start(potentials, state.messages)
    for _ in range(2):
        again.sweep(state)
    np.testing.assert_array_equal(result.beliefs, again.beliefs(state))
    np.testing.assert_array_equal(result.dual, again.dual(state))


@pytest.mark.parametrize("counting", ["convex", "trw"])
@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_the_dense_path_on_an_incomplete_graph_equals_the_reference(counting, scale, cpu_path):
    # DenseBP's shifted gaps (h = g - K) where some pairs are missing (K = 0 there), pairs stored
    # with their larger variable first, eps c_p != 1, and extreme interactions at scale 300
    rng = np.random.default_rng(3)
    V = 9
    pairs = [(j, i) if rng.random() < 0.5 else (i, j) for i in range(V) for j in range(i + 1, V)
             if rng.random() < 0.7]
    graph = RegionGraph([2] * V, [(i,) for i in range(V)] + pairs, counting_numbers=counting,
                        eps=0.7)
    engine = _against_reference([graph] * 3, scale, sweeps=3, seed=2)
    assert engine._dense is not None


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_slot_major_tables_of_one_template_equal_the_reference_block_by_block(scale, monkeypatch,
                                                                           cpu_path):
    # a one-template batch keeps each pair slot's exp tables of all samples contiguous (FlatBP.
    # _view_tables): pairs of unequal sides (3 x 5, 5 x 3), start and read-out in blocks of
    # 2 samples with a shorter last one, against the reference (at scale 300 some sums underflow)
    from dstrain.inference import flat
    monkeypatch.setattr(flat, "_BLOCK_ENTRIES", 60)
    monkeypatch.setattr(flat, "_SLOT_BLOCK_ENTRIES", 150)
    cards = [3, 5, 3, 5, 3]
    pairs = [(0, 1), (2, 3), (1, 2), (3, 4), (0, 2), (2, 4), (1, 3)]   # shapes side by side
    graph = RegionGraph(cards, [(i,) for i in range(len(cards))] + pairs)
    engine = _against_reference([graph] * 7, scale, seed=6)
    state = engine.start(np.zeros(engine.batch.num_potentials))
    tables = [t.table for t in state.states[0].pair_tables]
    assert [t.shape[1] for t in tables] == [2, 2, 2, 1]   # pairs per sample, per group
    assert all(t.ndim == 4 and t.flags.c_contiguous == (t.shape[1] == 1) for t in tables)
    rng = np.random.default_rng(7)
    potentials = engine.batch.pack([random_potentials(rng, graph, scale=scale)] * 7)
    one = engine.run(potentials, max_sweeps=3, tol=0.0)
    two = ConvexBP(engine.batch, threads=2).run(potentials, max_sweeps=3, tol=0.0)
    np.testing.assert_array_equal(one.beliefs, two.beliefs)
    np.testing.assert_array_equal(one.dual, two.dual)


def _kernel_batches(rng):
    """Batches of every layout the CPU kernels read and write: dense binary graphs (DenseBP:
    complete with unit scales; incomplete with trw's; unaries' counting numbers of every sign),
    slot-major views (words), sample-major
    views (a grid of more than 32 pairs), reordered rows (chains of several lengths), views with
    unequal scales (counting numbers given per region)."""
    counting = [1.0] * 5 + [0.5, 1.0, 2.0, 1.5]
    incomplete = RegionGraph([2] * 9, [(i,) for i in range(9)]
                             + [(i, j) for i in range(9) for j in range(i + 1, 9) if (i + j) % 4],
                             counting_numbers="trw", eps=0.6)
    mixed = RegionGraph([2] * 6, [(i,) for i in range(6)]   # unaries' c > 0, = 0 and < 0
                        + [(i, j) for i in range(6) for j in range(i + 1, 6)],
                        counting_numbers=[1.0, 0.0, -1.0, 2.0, 0.5, 0.0] + [1.0] * 15)
    return [[fully_connected(38, 2)] * 9, [incomplete] * 3, [mixed] * 4,
            [chain(5, 26, order=2)] * 6,
            [grid(7, 8, 4)] * 2,
            [chain(int(n), 7) for n in rng.integers(2, 9, 9)],
            [RegionGraph([4] * 5, [(i,) for i in range(5)] + [(i, i + 1) for i in range(4)],
                         counting_numbers=counting, eps=0.7)] * 5]


def test_the_compiled_kernels_equal_numpys_path_and_their_bits_do_not_depend_on_threads(
        monkeypatch):
    # the kernels' exp may differ from numpy's in the last bit; nothing else does.  Potentials of
    # scale 300 with some pairs 500 lower: pairs shifted by their max from above and from below
    from dstrain.inference import cpu_kernels

    rng = np.random.default_rng(12)
    compiled = cpu_kernels.library
    assert compiled() is not None, cpu_kernels.status()
    for graphs in _kernel_batches(rng):
        batch = GraphBatch(graphs)
        potentials = rng.normal(scale=300.0, size=batch.num_potentials)
        low = [e for g in batch.pair_groups for e in g.entries[::3].ravel()]
        potentials[low] -= 500.0
        lowest = [e for g in batch.pair_groups for e in g.entries[::6].ravel()]
        potentials[lowest] -= 5000.0   # (pairs whose max lies below -100 eps c_p)
        messages = rng.normal(size=batch.num_messages)
        starts = []
        for path in (compiled, lambda: None):
            monkeypatch.setattr(cpu_kernels, "library", path)
            starts.append(ConvexBP(batch, threads=1).start(potentials, messages).states[0])
        mine, numpys = starts
        if hasattr(mine, "pair_tables"):   # the exp tables and each pair's shift
            for table, other in zip(mine.pair_tables, numpys.pair_tables):
                assert table.table.shape == other.table.shape
                np.testing.assert_array_equal(table.top, other.top)
                np.testing.assert_allclose(table.table, other.table, rtol=1e-15, atol=0)
            assert any(t.top.max() > 0 for t in mine.pair_tables)
            assert any(t.top.min() < 0 for t in mine.pair_tables)
        else:   # DenseBP's per-run arrays, samples last (expm1's last bit may differ)
            samples = len(graphs)
            for name in ("f", "w", "pair_constant", "minus_k", "H", "inner"):
                np.testing.assert_array_equal(getattr(mine, name)[..., :samples],
                                              getattr(numpys, name)[..., :samples], name)
            np.testing.assert_allclose(mine.rows[1, ..., :samples], numpys.rows[1, ..., :samples],
                                       rtol=1e-15, atol=0)   # (E)
            assert not mine.rows[:, -1].any()   # (the zero row of positions without a pair)
            W, E, C = mine.spread   # (numpy's sweep's layout, for extreme samples)
            np.testing.assert_array_equal(W, numpys.spread[0])
            np.testing.assert_array_equal(C, numpys.spread[2])
            np.testing.assert_array_equal(mine.extreme, numpys.extreme)
            assert len(mine.extreme)   # (scale 300: some interactions beyond expm1's range)
        runs = {}
        for path, threads in (("kernels", 1), ("kernels", 2), ("kernels", 3), ("numpy", 1)):
            monkeypatch.setattr(cpu_kernels, "library", compiled if path == "kernels"
                                else lambda: None)
            runs[path, threads] = ConvexBP(batch, threads=threads).run(
                potentials, messages, max_sweeps=4, tol=0.0)
        one = runs["kernels", 1]
        for threads in (2, 3):
            np.testing.assert_array_equal(runs["kernels", threads].beliefs, one.beliefs)
            np.testing.assert_array_equal(runs["kernels", threads].dual, one.dual)
        numpy_run = runs["numpy", 1]
        np.testing.assert_allclose(one.beliefs, numpy_run.beliefs, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(one.dual, numpy_run.dual, rtol=1e-12)
        np.testing.assert_allclose(one.messages, numpy_run.messages, rtol=1e-9, atol=1e-9)


def test_the_fused_pair_read_out_equals_its_three_kernels_bit_for_bit(monkeypatch):
    # pair_readout forms the weights, the sums from the last sweep's products and the beliefs of
    # a group with views (words, grids) or in reordered rows (chains of several lengths) in one
    # pass, by the formulas of pair_weights, row_dots and pair_beliefs
    from dstrain.inference.flat import FlatBP

    rng = np.random.default_rng(5)
    counting = [1.0] * 5 + [0.5, 1.0, 2.0, 1.5]
    batches = [[chain(5, 26, order=2)] * 6, [grid(7, 8, 4)] * 3,
               [RegionGraph([4] * 5, [(i,) for i in range(5)] + [(i, i + 1) for i in range(4)],
                            counting_numbers=counting, eps=0.7)] * 5,
               [chain(int(n), 6) for n in rng.integers(2, 9, 12)]]
    _fused_pass_equals_its_calls(monkeypatch, FlatBP, "_fused_pair_readout", batches, rng)


def _fused_pass_equals_its_calls(monkeypatch, cls, name, batches, rng):
    """A run's beliefs and dual with cls.name (a fused read-out pass) equal, bit for bit, those
    with it returning None (the calls it replaces), on every batch, and the pass ran on each."""
    calls = []
    fused = getattr(cls, name)
    monkeypatch.setattr(cls, name, lambda self, *a: (
        lambda out: calls.append(out is not None) or out)(fused(self, *a)))
    for graphs in batches:
        batch = GraphBatch(graphs)
        potentials = rng.normal(scale=3.0, size=batch.num_potentials)
        messages = rng.normal(size=batch.num_messages)
        before = len(calls)
        one = ConvexBP(batch, threads=1).run(potentials, messages, max_sweeps=3, tol=0.0)
        assert any(calls[before:])   # (the fused pass ran)
        with monkeypatch.context() as m:
            m.setattr(cls, name, lambda self, *a: None)
            other = ConvexBP(batch, threads=1).run(potentials, messages, max_sweeps=3, tol=0.0)
        np.testing.assert_array_equal(one.beliefs, other.beliefs)
        np.testing.assert_array_equal(one.dual, other.dual)
        assert np.isfinite(one.beliefs).all()


def test_the_fused_region_read_out_equals_region_values_and_softmax_bit_for_bit(monkeypatch):
    # region_readout forms the read-out regions' fhat (from runs of child messages in
    # np.bincount's order), their softmax and beliefs in one pass, by the formulas of
    # region_values and row_softmax: words, a grid, chains of several lengths, unequal scales;
    # regions with parent messages (pairs under triples) are left to those two
    from dstrain.inference.flat import FlatBP

    rng = np.random.default_rng(8)
    triples = RegionGraph([3] * 5, [(i,) for i in range(5)] + [(i, i + 1) for i in range(4)]
                          + [(i, i + 1, i + 2) for i in range(3)], eps=0.8)
    assert FlatBP(GraphBatch([triples] * 2))._region_readout is None
    _fused_pass_equals_its_calls(monkeypatch, FlatBP, "_fused_region_readout",
                                 _kernel_batches(rng)[3:], rng)


def test_streamed_exp_tables_beliefs_and_zeros_give_the_same_bits(monkeypatch):
    # ranges with large tables write them, and the beliefs, with streaming stores, and so do
    # those with many zero messages: with the thresholds at 0 every range does; the runs'
    # numbers are those of plain stores, warm and cold (the cold run on the array the warm one
    # left: every entry is overwritten)
    from dstrain.inference import cpu_kernels, flat

    rng = np.random.default_rng(21)
    streamed = []
    for name in ("pair_tables", "pair_readout"):
        kernel = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, _k=kernel, **kw: (
            streamed.append(kw.get("streamed", False)), _k(*a, **kw))[1])
    zeros = cpu_kernels.zeros_streamed
    monkeypatch.setattr(cpu_kernels, "zeros_streamed", lambda *a: (
        streamed.append("zeros"), zeros(*a))[1])
    for graphs in _kernel_batches(rng)[3:]:   # (the flat engine's batches)
        batch = GraphBatch(graphs)
        potentials = rng.normal(scale=3.0, size=batch.num_potentials)
        messages = rng.normal(size=batch.num_messages)
        runs = []
        for threshold in (1 << 62, 0):
            monkeypatch.setattr(flat, "_STREAM_TABLE_BYTES", threshold)
            monkeypatch.setattr(flat, "_STREAM_FILL_BYTES", threshold)
            streamed.clear()
            engine = ConvexBP(batch, threads=2)
            warm = engine.run(potentials, messages, max_sweeps=3, tol=0.0)
            assert streamed and set(streamed) == {threshold == 0}
            runs.append([(warm.messages.copy(), warm.dual, warm.beliefs.copy())])
            del warm
            streamed.clear()
            cold = engine.run(potentials, max_sweeps=3, tol=0.0)
            assert ("zeros" in streamed) == (threshold == 0)
            runs[-1].append((cold.messages, cold.dual, cold.beliefs))
        for plain, fast in zip(*runs):
            for a, b in zip(plain, fast):
                np.testing.assert_array_equal(a, b)


def test_the_colour_update_kernel_equals_numpys_update_bit_for_bit(monkeypatch):
    # the same sums in the same order as np.bincount, the same products and max: the same bits,
    # the largest change included (NaN where a message is NaN; a NaN state's entry NaN and
    # with it the entries of its messages, as numpy's max spreads it)
    from dstrain.inference.flat import FlatBP

    rng = np.random.default_rng(3)
    taken = 0
    for graphs in _kernel_batches(rng)[3:]:   # (the flat engine's batches)
        batch = GraphBatch(graphs)
        potentials = rng.normal(scale=3.0, size=batch.num_potentials)
        messages = rng.normal(size=batch.num_messages)
        engine = FlatBP(batch)
        for k in range(len(batch.colours)):
            if engine._colour_update(k) is None:
                continue
            taken += 1
            for poison in (None, "message", "state"):
                lam, theta = messages.copy(), potentials.copy()
                if poison == "message":
                    lam[batch.colours[k].edge_entry_message[-1]] = np.nan
                if poison == "state":   # (a region's second state: not first in its messages)
                    theta[batch.colours[k].region_entries[1]] = np.nan
                out = []
                for kernel in (True, False):
                    state = engine.start(theta, np.empty_like(lam), lam)
                    if not kernel:
                        monkeypatch.setattr(engine, "_colour_update", lambda k: None)
                    change = engine.update_colour(state, k)
                    monkeypatch.undo()
                    out.append((change, state.messages))
                (change, mine), (expected, numpys) = out
                np.testing.assert_array_equal(mine, numpys)
                assert np.isnan(change) if poison else change == expected > 0
                assert np.isnan(mine).any() == (poison == "state")   # (the old NaN is replaced)
    assert taken >= 5


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("size", [3, 13, 676])
def test_a_pair_tables_bits_do_not_depend_on_where_it_sits(size, streamed):
    # the kernels' vector exp differs from a scalar one in the last bit: every entry takes the
    # vector function, whatever the pair's address, its length and the entry's place in it, and
    # whether the tables are written with streaming stores (heads, cache lines and tails)
    from dstrain.inference import cpu_kernels

    kernels = cpu_kernels.library()
    rng = np.random.default_rng(size)
    pair = rng.normal(scale=3.0, size=size)
    at = np.arange(11, dtype=np.int64) * (size + 1) + np.arange(11)   # all alignments
    potentials = np.zeros(at[-1] + size + 5)
    for a in at:
        potentials[a:a + size] = pair
    tables = np.full(len(at) * size + 3, np.nan)
    top = np.empty(len(at))
    cpu_kernels.pair_tables(kernels, potentials, at, tables[3:], np.arange(len(at)) * size,
                            size, np.ones(len(at)), True, top, 50.0, 100.0, streamed=streamed)
    made = tables[3:].reshape(len(at), size)
    assert not np.isnan(tables[3:]).any() and np.isnan(tables[:3]).all()   # (nothing outside)
    assert (made == made[0]).all()
    np.testing.assert_allclose(made[0], np.exp(pair), rtol=1e-15, atol=0)   # (a few ulps)
    plain = np.empty(size)
    cpu_kernels.pair_tables(kernels, potentials, at[:1], plain, np.zeros(1, np.int64), size,
                            np.ones(1), True, top[:1], 50.0, 100.0)
    np.testing.assert_array_equal(made[0], plain)
    for length in {n for n in (1, 2, 5, 8, 9, size - 1) if 0 < n < size}:   # shorter runs
        part = np.full(length + 9, np.nan)
        for shift in (0, 3):
            cpu_kernels.pair_tables(kernels, potentials, at[1:2], part[shift:shift + length],
                                    np.zeros(1, np.int64), length, np.ones(1), True, top[:1],
                                    50.0, 100.0, streamed=streamed)
            np.testing.assert_array_equal(part[shift:shift + length], made[0, :length])


def test_streamed_zeros_fill_every_entry_and_nothing_else():
    # heads before the first cache line, whole lines, tails, runs shorter than a line
    from dstrain.inference import cpu_kernels

    kernels = cpu_kernels.library()
    for length in (0, 1, 5, 7, 8, 9, 16, 63, 64, 1000):
        for shift in range(8):
            array = np.full(length + 16, np.nan)
            cpu_kernels.zeros_streamed(kernels, array[shift:shift + length])
            assert (array[shift:shift + length] == 0.0).all(), (length, shift)
            assert np.isnan(array[:shift]).all() and np.isnan(array[shift + length:]).all()


def test_the_kernels_refuse_offsets_outside_their_arrays():
    from dstrain.inference import cpu_kernels

    kernels = cpu_kernels.library()
    tables, beliefs = np.ones(8), np.zeros(8)
    weights, sums = np.ones((2, 2)), np.ones(2)
    at = np.array([0, 4])
    cpu_kernels.pair_beliefs(kernels, tables, at, beliefs, at, 2, 2, weights, weights, sums)
    np.testing.assert_array_equal(beliefs, 1.0)
    with pytest.raises(ValueError, match="belief_at: offsets outside"):
        cpu_kernels.pair_beliefs(kernels, tables, at, beliefs, at + 1, 2, 2, weights, weights,
                                 sums)
    with pytest.raises(ValueError, match="potential_at: offsets outside"):
        cpu_kernels.pair_tables(kernels, tables, at - 1, beliefs, at, 4, sums, True, sums,
                                50.0, 100.0)
    with pytest.raises(ValueError, match="order: positions outside"):
        cpu_kernels.pair_beliefs(kernels, tables, at, beliefs, at, 2, 2, weights, weights, sums,
                                 np.array([1, 2]))
    with pytest.raises(ValueError, match="w_a: expected 2 x 2"):
        cpu_kernels.pair_beliefs(kernels, tables, at, beliefs, at, 2, 2, np.ones(3), weights,
                                 sums)
    # offsets checked once (cpu_kernels.Indices) are held to the buffer of every call
    checked = cpu_kernels.Indices(at)
    assert checked.bounds == (0, 4) and not checked.flags.writeable
    cpu_kernels.pair_beliefs(kernels, tables, checked, beliefs, checked, 2, 2, weights, weights,
                             sums)
    with pytest.raises(ValueError, match="belief_at: offsets outside"):
        cpu_kernels.pair_beliefs(kernels, tables, at, beliefs[:7], checked, 2, 2, weights,
                                 weights, sums)
    # a view has other entries: its bounds are found anew, not taken from the whole
    reversed_view = cpu_kernels.Indices([4, 0, 5])[:2]
    assert reversed_view.bounds is None and type(checked + 1) is np.ndarray
    cpu_kernels.pair_beliefs(kernels, tables, at, beliefs, reversed_view, 2, 2, weights,
                             weights, sums)
    with pytest.raises(ValueError, match="belief_at: offsets outside"):
        cpu_kernels.pair_beliefs(kernels, tables, at, beliefs, cpu_kernels.Indices([0, 4, 5])[1:],
                                 2, 2, weights, weights, sums)


def test_without_a_c_compiler_the_engine_warns_once_and_runs_numpys_path(monkeypatch, tmp_path):
    from dstrain.inference import cpu_kernels

    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))   # (no library built before)
    cpu_kernels._load.cache_clear()
    cpu_kernels._warn_once.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="CPU kernels are not built.*no-such-compiler"):
            assert cpu_kernels.library() is None
        assert "numpy path" in cpu_kernels.status()
        with warnings.catch_warnings():   # once only: a second warning is an error here
            warnings.simplefilter("error")
            _against_reference([chain(5, 6, order=2)] * 3, 1.0)
        monkeypatch.setenv("DSTRAIN_CPU_KERNELS", "0")
        cpu_kernels._load.cache_clear()
        assert cpu_kernels.library() is None and "turned off" in cpu_kernels.status()
    finally:
        cpu_kernels._load.cache_clear()
        cpu_kernels._warn_once.cache_clear()
