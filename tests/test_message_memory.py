"""blend's persistent messages as a checked resource (run.message_memory): sizes in the config,
the memory available to a process, the fewest ranks that hold a data set, the refusal before
anything is written, and -- the point of sample-parallel training -- a data set whose messages
do not fit one process's limit trains when spread over two ranks."""
import re

import numpy as np
import pytest

from dstrain.comm import SingleProcess
from dstrain.config import ConfigError, byte_count, config_from_dict, load_config
from dstrain.learning.messages import (MessageMemoryError, available_memory,
                                       message_memory_limit, ranks_to_fit)
from dstrain.learning.trainer import shard, train
from dstrain.tasks.segmentation import generate_segmentation
from helpers import MPIRUN, ROOT, dstrain, dstrain_train, train_args

# the data set below: 25 training images of 6 x 5 pixels, 3 classes, a 4-connected grid:
# 2 C (H (W - 1) + (H - 1) W) = 2 * 3 * 49 entries of 8 bytes (float64 on the CPU) per image
IMAGE_BYTES = 2 * 3 * (6 * 4 + 5 * 6 - 5) * 8
assert IMAGE_BYTES == 2352
ALL_BYTES = 25 * IMAGE_BYTES                  # 58,800: one process
SHARD_BYTES = [12 * IMAGE_BYTES, 13 * IMAGE_BYTES]   # 28,224 and 30,576: two ranks
BETWEEN = 40000                               # more than either shard, less than all


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_segmentation(tmp_path_factory.mktemp("memory") / "seg.h5", num_train=25,
                                 num_val=5, num_test=2, height=6, width=5, num_classes=3,
                                 seed=4, progress=False)


SETS = ["train.epochs=2", "train.pretrain_epochs=1", "train.batch_size=5", "model.depth=1",
        "model.width=4"]


def cli_train(run_dir, data, *sets, ranks=0):
    """`dstrain train` on the segmentation grid config (under mpirun -n ranks if ranks)."""
    return dstrain(*train_args("segmentation_grid.yaml", run_dir, f"data.path={data}",
                               "data.generate=false", *SETS, *sets), ranks=ranks)


def test_sizes_in_the_config():
    assert byte_count("300MiB") == 300 * 2**20
    assert byte_count("2GiB") == 2 * 2**30
    assert byte_count("1.5 GB") == 1_500_000_000
    assert byte_count(40000) == 40000 and byte_count("40000") == 40000
    assert byte_count("1e9") == 10**9 and byte_count(2.5e9) == 2_500_000_000
    for bad in ("3XB", "-1MiB", 0, -5, "", "GiB", True, 2.5, [1]):
        assert byte_count(bad) is None, bad
    assert config_from_dict({}).run.message_memory == "auto"
    unlimited = config_from_dict({"run": {"message_memory": "unlimited"}})
    assert unlimited.run.message_memory == "unlimited"
    with pytest.raises(ConfigError) as error:
        load_config(ROOT / "configs" / "segmentation_grid.yaml", ["run.message_memory=3XB"])
    message = str(error.value)
    assert "\n" not in message and message.startswith("--set run.message_memory=3XB: ")
    assert "run.message_memory expects auto, unlimited, a number of bytes or a size such as " \
           "300MiB or 2GiB, got '3XB'" in message


def test_available_memory_takes_the_tighter_of_the_node_and_the_cgroup(tmp_path):
    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal: 16777216 kB\nMemAvailable:    8388608 kB\n")
    (proc / "self" / "cgroup").write_text("0::/job/step\n")
    assert available_memory(proc, cgroups) == 8 * 2**30   # no cgroup files: the node's figure
    (cgroups / "job" / "step").mkdir(parents=True)
    (cgroups / "job" / "step" / "memory.max").write_text("max\n")
    (cgroups / "job" / "step" / "memory.current").write_text(f"{2**30}\n")
    (cgroups / "job" / "memory.max").write_text(f"{4 * 2**30}\n")   # the job's limit, a level up
    (cgroups / "job" / "memory.current").write_text(f"{3 * 2**30}\n")
    assert available_memory(proc, cgroups) == 2**30
    # cgroup v1: the memory controller's own hierarchy
    (proc / "self" / "cgroup").write_text("4:memory:/slurm/job7\n1:cpu:/\n")
    (cgroups / "memory" / "slurm" / "job7").mkdir(parents=True)
    (cgroups / "memory" / "slurm" / "job7" / "memory.limit_in_bytes").write_text(f"{6 * 2**30}\n")
    (cgroups / "memory" / "slurm" / "job7" / "memory.usage_in_bytes").write_text(f"{2**30}\n")
    assert available_memory(proc, cgroups) == 5 * 2**30
    (proc / "meminfo").write_text("MemAvailable:    1048576 kB\n")   # the node has less
    assert available_memory(proc, cgroups) == 2**30
    assert available_memory(tmp_path / "none", tmp_path / "none") is None


def test_the_limit_of_each_setting():
    comm = SingleProcess()
    assert message_memory_limit("300MiB", comm)[0] == 300 * 2**20
    assert message_memory_limit(40000, comm)[0] == 40000
    assert message_memory_limit("unlimited", comm)[0] == float("inf")
    auto, how = message_memory_limit("auto", comm)
    available = available_memory()
    if available is None:
        assert auto == float("inf")
    else:   # half of what is available now (which moves a little between the two readings)
        assert 0.4 * available < auto < 0.6 * available and "auto" in how


def test_ranks_to_fit_is_the_fewest_whose_shards_all_fit():
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample_bytes = rng.integers(1, 100, rng.integers(1, 40))
        limit = int(rng.integers(sample_bytes.max(), sample_bytes.sum() + 2))
        def fits(n):
            return all(sample_bytes[shard(len(sample_bytes), r, n)].sum() <= limit
                       for r in range(n))
        n = ranks_to_fit(sample_bytes, limit, shard)
        assert fits(n) and (n == 1 or not fits(n - 1)), (sample_bytes, limit, n)
    assert ranks_to_fit(np.full(25, IMAGE_BYTES), BETWEEN, shard) == 2
    assert ranks_to_fit(np.full(25, IMAGE_BYTES), 29000, shard) == 3   # 2 ranks: 13 images on one
    assert ranks_to_fit(np.array([5, 50, 5]), 40, shard) is None        # one sample alone is over


def test_refused_before_anything_is_written_and_the_store_holds_what_was_checked(data, tmp_path):
    config = load_config(ROOT / "configs" / "segmentation_grid.yaml",
                         [f"data.path={data}", "data.generate=false", *SETS, "train.max_steps=1",
                          f"run.message_memory={ALL_BYTES - 1}"])
    with pytest.raises(MessageMemoryError) as error:
        train(config, run_dir=tmp_path / "refused", progress=False, log=lambda *_: None)
    assert str(error.value) == (
        f"blend's messages need {ALL_BYTES:,} bytes (57.4 KiB) on the one process, more than its "
        f"limit of {ALL_BYTES - 1:,} bytes (run.message_memory = {ALL_BYTES - 1}): run with "
        f"mpirun -n 2 or raise run.message_memory")
    assert not (tmp_path / "refused").exists()
    # unary training never writes a message: the same limit does not stop it
    unary = config.but(train={"variant": "unary", "pretrain_epochs": 0})
    train(unary, run_dir=tmp_path / "unary", progress=False, log=lambda *_: None)
    assert (tmp_path / "unary" / "params.h5").exists()
    lines = []
    train(config.but(run={"message_memory": ALL_BYTES}), run_dir=tmp_path / "fits",
          progress=False, log=lines.append)
    assert f"blend messages: 57.4 KiB on 1 rank(s), bytes per rank: {ALL_BYTES:,} " \
           f"(limit 57.4 KiB per rank)" in lines
    assert (tmp_path / "fits" / "messages.h5").exists()


class RankZeroOfTwo(SingleProcess):
    """Rank 0 of two, the other rank's part of each collective given in advance."""

    rank, world_size = 0, 2

    def __init__(self, *others):
        self.others = list(others)

    def allreduce_(self, array, op="sum"):
        other = self.others.pop(0)
        array[...] = np.maximum(array, other) if op == "max" else array + other
        return array


def test_a_rank_within_its_limit_stops_too_when_another_is_over():
    """Rank 0's 12 images fit 29,000 bytes, rank 1's 13 do not: rank 0 raises the same error
    (every rank agrees, so none waits in a later collective for one that stopped)."""
    from dstrain.learning.messages import check_message_memory
    sizes = np.full(12, IMAGE_BYTES // 8)                 # rank 0's samples 0..11
    other_table = np.array([0, SHARD_BYTES[1], 0, 29000.0])
    other_samples = np.zeros(25)
    other_samples[12:] = IMAGE_BYTES
    comm = RankZeroOfTwo(np.array([1]), other_table, other_samples)
    with pytest.raises(MessageMemoryError, match=r"on rank 1 of 2, .*: run with mpirun -n 3 or"):
        check_message_memory(np.arange(12), sizes, 8, 25, 29000, comm, shard)
    comm = RankZeroOfTwo(np.array([1]), np.array([0, SHARD_BYTES[1], 0, 31000.0]))
    assert check_message_memory(np.arange(12), sizes, 8, 25, 31000, comm, shard) == 31000


def test_auto_advises_more_nodes_not_more_ranks_on_this_one():
    """With auto, more ranks on one node share the same memory: the advice says so."""
    from dstrain.learning.messages import check_message_memory
    if available_memory() is None:
        pytest.skip("the available memory cannot be read here")
    sizes = np.full(1000, 2**27)   # 1000 samples of 1 GiB each (8-byte entries): 1000 GiB
    with pytest.raises(MessageMemoryError) as error:
        check_message_memory(np.arange(1000), sizes, 8, 1000, "auto", SingleProcess(), shard)
    assert "(run.message_memory = auto: half of the node's available memory, shared by its 1 " \
           "rank(s)): " in str(error.value)
    assert re.search(r": spread the run over more nodes or GPUs \(\d+ ranks at this limit\) or "
                     r"set run.message_memory$", str(error.value)), str(error.value)


def per_rank_bytes(log: str) -> list[int]:
    found = re.search(r"blend messages: .* bytes per rank: ([\d, ]+) \(", log)
    assert found, log
    return [int(b.replace(",", "")) for b in found.group(1).split()]


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
def test_messages_too_large_for_one_process_train_on_two_ranks(data, tmp_path):
    one = cli_train(tmp_path / "one", data, f"run.message_memory={BETWEEN}")
    assert one.returncode == 2, one.stderr
    assert one.stderr.strip().splitlines() == [
        f"dstrain: error: blend's messages need {ALL_BYTES:,} bytes (57.4 KiB) on the one "
        f"process, more than its limit of {BETWEEN:,} bytes (run.message_memory = {BETWEEN}): "
        f"run with mpirun -n 2 or raise run.message_memory"]
    assert not (tmp_path / "one").exists()

    two = dstrain_train("segmentation_grid.yaml", tmp_path / "two", data, *SETS,
                        f"run.message_memory={BETWEEN}", ranks=2)
    # each rank's store holds its own shard's messages: about half each, all of them together
    assert per_rank_bytes(two.stdout) == SHARD_BYTES and sum(SHARD_BYTES) == ALL_BYTES
    assert "epoch   2 joint" in two.stdout
    from dstrain.learning.params import load_messages
    messages = load_messages(tmp_path / "two" / "messages.h5")
    assert sorted(messages) == list(range(25))
    assert all(m.nbytes == IMAGE_BYTES for m in messages.values())


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
def test_one_rank_over_its_limit_stops_every_rank_with_the_same_line(data, tmp_path):
    """Two ranks hold 12 and 13 images: with room for 12.3, rank 1 alone is over; both ranks
    stop before training (no hang in a collective), exit 2, no traceback, nothing written."""
    done = cli_train(tmp_path / "run", data, "run.message_memory=29000", ranks=2)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    expected = (f"blend's messages need {SHARD_BYTES[1]:,} bytes (29.9 KiB) on rank 1 of 2, more "
                f"than its limit of 29,000 bytes (run.message_memory = 29000): run with "
                f"mpirun -n 3 or raise run.message_memory")
    errors = [line for line in done.stderr.splitlines() if line.startswith("dstrain: error")]
    assert errors and all(line.endswith(": " + expected) for line in errors), done.stderr
    assert not (tmp_path / "run").exists()
