"""The CPU engine on several threads: a batch split into ranges of samples gives bitwise the
results of one thread, on every path (fast pairs, the binary gap form, generic parents, shared
tables, extreme values), for fixed-sweep and tolerance runs and the step-by-step interface."""
import numpy as np
import pytest

from dstrain.graph import GraphBatch, chain, fully_connected, grid
from dstrain.inference import ConvexBP
from helpers import random_loopy, random_tree


@pytest.fixture(autouse=True)
def split_small_batches(monkeypatch):
    # the tests' batches are small: split them all the same
    monkeypatch.setattr("dstrain.inference.bp._MIN_PART_ENTRIES", 0)
    monkeypatch.setattr("dstrain.inference.bp._MIN_DENSE_KERNEL_PART_ENTRIES", 0)


def _batches(rng):
    return {
        "words order 2": [chain(5, 6, order=2)] * 7,
        "words of several lengths": [chain(int(n), 4, order=int(o))
                                     for n, o in zip(rng.integers(1, 9, 9), rng.integers(1, 3, 9))],
        "fully connected binary": [fully_connected(7, 2)] * 5,
        "fully connected binary, trw": [fully_connected(6, 2, counting_numbers="trw")] * 5,
        "fully connected binary, bethe": [fully_connected(5, 2, counting_numbers="bethe")] * 4,
        "fully connected, 3 states": [fully_connected(5, 3)] * 4,
        "grid": [grid(3, 4, 3)] * 5,
        "binary grid, trw": [grid(3, 3, 2, counting_numbers="trw")] * 4,
        "loopy with triples": [random_loopy(rng)] * 5,
        "loopy graphs, each its own": [random_loopy(rng) for _ in range(5)],
        "trees, bethe": [random_tree(rng, int(n), counting_numbers="bethe")
                         for n in rng.integers(2, 8, 5)],
        "mixed": [fully_connected(4, 2), chain(4, 3, order=2), random_loopy(rng), grid(2, 3, 2)],
    }


def _runs(engine, potentials, messages):
    return [engine.run(potentials, None, max_sweeps=4, tol=0.0),
            engine.run(potentials, messages, max_sweeps=300, tol=1e-7),
            engine.run(potentials, messages, max_sweeps=1, tol=0.0)]


def _same(a, b):
    assert a.sweeps == b.sweeps and a.max_change == b.max_change and a.converged == b.converged
    for name in ("dual", "messages", "beliefs"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_runs_are_bitwise_the_same_on_1_2_and_3_threads(scale, cpu_path):
    rng = np.random.default_rng(int(scale))
    for name, graphs in _batches(rng).items():
        batch = GraphBatch(graphs)
        potentials = rng.normal(scale=scale, size=batch.num_potentials)
        messages = rng.normal(size=batch.num_messages)
        one = _runs(ConvexBP(batch, threads=1), potentials, messages)
        for threads in (2, 3):
            engine = ConvexBP(batch, threads=threads)
            if name not in ("mixed", "loopy graphs, each its own"):
                # (ranges of those would update some colours differently: they are not split)
                assert len(engine._parts) == threads, name
            for a, b in zip(one, _runs(engine, potentials, messages)):
                _same(a, b)


def test_start_sweep_and_read_outs_are_bitwise_the_same_on_1_and_3_threads():
    rng = np.random.default_rng(5)
    for name, graphs in _batches(rng).items():
        batch = GraphBatch(graphs)
        potentials = rng.normal(scale=2.0, size=batch.num_potentials)
        messages = rng.normal(size=batch.num_messages)
        engines = [ConvexBP(batch, threads=1), ConvexBP(batch, threads=3)]
        states = [e.start(potentials, messages) for e in engines]
        for _ in range(2):
            changes = [e.sweep(s) for e, s in zip(engines, states)]
            assert changes[0] == changes[1], name
        for k in range(len(batch.colours)):
            changes = [e.update_colour(s, k) for e, s in zip(engines, states)]
            assert changes[0] == changes[1], name
        for read in ("messages",):
            assert np.array_equal(states[0].messages, states[1].messages), name
        assert np.array_equal(engines[0].dual(states[0]), engines[1].dual(states[1])), name
        assert np.array_equal(engines[0].beliefs(states[0]), engines[1].beliefs(states[1])), name


@pytest.mark.parametrize("scale, counting", [(1.0, "convex"), (300.0, "convex"), (2.0, "varied")])
def test_shared_tables_are_bitwise_the_same_on_1_2_and_3_threads(scale, counting):
    from dstrain.tasks.words.model import chain_layout
    rng = np.random.default_rng(int(scale))
    lengths = rng.integers(1, 6, 11)
    layout = chain_layout(np.asarray(lengths, dtype=np.int64).tobytes(), 5, 4, 2, True)
    graphs = layout.graphs() if counting == "convex" else [
        chain(int(n), 4, 2, counting_numbers=[1.0] * int(n)
              + list(rng.choice([0.5, 1.0, 2.0], max(2 * int(n) - 3, 0)))) for n in lengths]
    batch = GraphBatch(graphs)
    source = scale * rng.normal(size=layout.source_size)
    messages = rng.normal(size=batch.num_messages)
    results = []
    for threads in (1, 2, 3):
        engine = ConvexBP(batch, threads=threads)
        sharing = engine.sharing(layout.source_index, layout.source_size)
        assert sharing is not None and (threads == 1) == (sharing.parts is None)
        results.append([engine.run(source, messages, max_sweeps=sweeps, tol=0.0, sharing=sharing)
                        for sweeps in (0, 3)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            _same(a, b)
            assert np.array_equal(a.rest_beliefs, b.rest_beliefs)
            for x, y in zip(a.table_beliefs, b.table_beliefs):
                assert np.array_equal(x, y)


def test_the_thread_count_defaults_to_torchs():
    import torch
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert ConvexBP(GraphBatch([chain(3, 2)])).threads == 3
    finally:
        torch.set_num_threads(before)
    assert ConvexBP(GraphBatch([chain(3, 2)]), threads=2).threads == 2


def test_a_forked_child_runs_on_a_pool_of_its_own():
    # the pool's threads are not copied into a child process (a DataLoader's workers, say)
    import os
    batch = GraphBatch([chain(5, 4, order=2)] * 6)
    engine = ConvexBP(batch, threads=2)
    potentials = np.random.default_rng(0).normal(size=batch.num_potentials)
    before = engine.run(potentials, max_sweeps=3, tol=0.0)
    pid = os.fork()
    if pid == 0:   # (the child exits with the verdict; pytest never sees it)
        after = engine.run(potentials, max_sweeps=3, tol=0.0)
        os._exit(0 if np.array_equal(before.beliefs, after.beliefs) else 1)
    assert os.waitpid(pid, 0)[1] == 0


def test_numpys_blas_is_on_one_thread_inside_the_engine_and_restored_after(monkeypatch):
    # OpenBLAS's workers busy-wait on the cores the ranges run on (threads.py): every range and
    # the shared tables' sums run with it on one thread; blocks that overlap in several threads
    # restore the count once, at the last exit
    import threading

    from dstrain.inference import flat, threads
    from dstrain.tasks.words.model import chain_layout
    if not threads.blas_threads():
        pytest.skip("no OpenBLAS found in this process (numpy built on another BLAS)")
    (_, put), = threads._openblas()[:1]
    seen = []
    for name in ("sweep", "readout"):
        method = getattr(flat.FlatBP, name)
        monkeypatch.setattr(flat.FlatBP, name, lambda self, *a, _m=method, **k: (
            seen.append(threads.blas_threads()[0]), _m(self, *a, **k))[1])
    table_sums = ConvexBP._table_sums_of
    monkeypatch.setattr(ConvexBP, "_table_sums_of", lambda self, *a: (
        seen.append(threads.blas_threads()[0]), table_sums(self, *a))[1])
    graphs = [chain(5, 6, order=2)] * 6
    layout = chain_layout(np.full(6, 5, dtype=np.int64).tobytes(), 5, 6, 2, True)
    source = np.random.default_rng(0).normal(size=layout.source_size)
    before = threads.blas_threads()[0]
    put(3)
    try:
        for count in (1, 2):
            engine = ConvexBP(GraphBatch(graphs), threads=count)
            engine.run(source, max_sweeps=2, tol=0.0,
                       sharing=engine.sharing(layout.source_index, layout.source_size))
            assert threads.blas_threads()[0] == 3
        # 1 range: 2 sweeps, a read-out, the tables' sums; 2 ranges: each 2 sweeps and a read-out
        assert len(seen) == (2 + 1 + 1) + (2 * 3 + 1) and set(seen) == {1}
        inside, release = threading.Event(), threading.Event()

        def hold():
            with threads.blas_on_one_thread():
                inside.set()
                release.wait(10)
        other = threading.Thread(target=hold)
        other.start()
        inside.wait(10)
        with threads.blas_on_one_thread():
            assert threads.blas_threads()[0] == 1
        assert threads.blas_threads()[0] == 1   # (the other block still runs)
        release.set()
        other.join()
        assert threads.blas_threads()[0] == 3
    finally:
        put(before)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="Linux only")
def test_the_caller_stays_on_its_core_the_pool_on_the_others_and_its_affinity_is_restored(
        monkeypatch):
    # left to the scheduler, a woken pool thread may share the caller's core for ms (threads.py)
    import os

    from dstrain.inference import threads
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one core: nothing to spread the tasks over")
    seen = lambda: sorted(os.sched_getaffinity(0))  # noqa: E731
    for count in (2, 3):
        *pool, caller = threads.run_parallel([seen] * count)
        assert len(caller) == 1 and caller[0] in allowed
        assert all(mine == sorted(set(allowed) - set(caller)) for mine in pool)
        assert seen() == allowed
    with pytest.raises(ZeroDivisionError):   # (restored when a task raises, too)
        threads.run_parallel([seen, lambda: 1 / 0])
    assert seen() == allowed
    monkeypatch.setenv("DSTRAIN_PIN_THREADS", "0")   # off: every thread on all the cores
    assert threads.run_parallel([seen, seen]) == [allowed, allowed]
    monkeypatch.delenv("DSTRAIN_PIN_THREADS")
    os.sched_setaffinity(0, allowed[-1:])   # a caller held on one core: the tasks share it
    try:
        assert threads.run_parallel([seen, seen]) == [allowed[-1:]] * 2
    finally:
        os.sched_setaffinity(0, allowed)
