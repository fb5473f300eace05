"""A user's own model (examples/ring_crf.py) through the whole framework: its gradient against
brute-force enumeration, training from the CLI and from Python, `mpirun -n 2` parity, bitwise
resume, the GPU code path with emulated kernels; and learning/ knows no task."""
import itertools
import re
import sys

import numpy as np
import pytest
import torch

import dstrain
from dstrain.learning import InferenceOptions, backward, structured_loss
from dstrain.models import Batch
from dstrain.tasks import load_reference
from helpers import MPIRUN, ROOT, dstrain_train, run, run_params

EXAMPLE = ROOT / "examples" / "ring_crf.py"
CONFIG = ROOT / "configs" / "ring_example.yaml"
ring = load_reference(f"{EXAMPLE}:RingCRF", "model").__module__
ring = sys.modules[ring]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ring.generate(tmp_path_factory.mktemp("ring") / "ring.h5", (64, 20, 10), seed=4)


def brute_force_loss(model, batch):
    """log Z - F(y) per sample by enumerating every joint state, differentiable by autograd."""
    unary = model.unary(batch.x)
    pair = model.pairwise(batch.x[:, model.ends].flatten(2)).unflatten(2, (model.S, model.S))
    a, b = model.ends[:, 0], model.ends[:, 1]

    def score(y):   # y (B, V) -> F(y) (B,)
        rows = torch.arange(len(y))[:, None]
        return unary[rows, torch.arange(model.V), y].sum(1) + pair[rows, torch.arange(model.V),
                                                                    y[:, a], y[:, b]].sum(1)
    states = torch.tensor(list(itertools.product(range(model.S), repeat=model.V)))
    scores = torch.stack([score(s.expand(len(batch), -1)) for s in states], dim=1)
    return torch.logsumexp(scores, dim=1) - score(torch.as_tensor(batch.y))


def test_gradient_equals_brute_force_enumeration():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = ring.RingCRF(num_features=3, num_variables=4, num_states=2, hidden=5).double()
    batch = Batch(torch.from_numpy(rng.normal(size=(6, 4, 3))), rng.integers(0, 2, (6, 4)))
    potentials = model.potentials(batch)
    result = structured_loss(potentials, batch.y, InferenceOptions(algorithm="exact"))
    model.zero_grad()
    backward(potentials, result)
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = brute_force_loss(model, batch)
    expected.sum().backward()
    np.testing.assert_allclose(result.loss, expected.detach().numpy(), rtol=1e-12)
    for mine, theirs in zip(ours, model.parameters()):
        torch.testing.assert_close(mine, theirs.grad, rtol=1e-10, atol=1e-12)


def train(run_dir, data, *extra, ranks=0, resume=None):
    dstrain_train("ring_example.yaml", run_dir, data, "train.epochs=4", "train.pretrain_epochs=1",
                  "train.batch_size=16", "train.batching=global", "model.hidden=8", *extra,
                  ranks=ranks, resume=resume)
    return run_params(run_dir)


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
def test_two_ranks_reproduce_one_process(data, tmp_path):
    one = train(tmp_path / "one", data, "run.dtype=float64")
    two = train(tmp_path / "two", data, "run.dtype=float64", ranks=2)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.slow
def test_resume_is_bitwise_and_the_emulated_gpu_path_equals_the_cpu_path(data, tmp_path):
    extra = ("run.checkpoint_every=3", "run.dtype=float64")
    whole = train(tmp_path / "whole", data, *extra)
    train(tmp_path / "part", data, *extra, "train.max_steps=7")
    resumed = train(tmp_path / "part", data, *extra, resume="auto")
    for name in whole:
        assert np.array_equal(resumed[name], whole[name]), name
    device = train(tmp_path / "device", data, *extra, "debug.emulate_kernels=true")
    for name in whole:
        np.testing.assert_allclose(device[name], whole[name], rtol=0, atol=1e-10, err_msg=name)


def test_trains_from_python_and_the_joint_model_beats_unary_only(tmp_path):
    config = dstrain.load_config(CONFIG, [f"data.path={tmp_path / 'ring.h5'}", "data.num_train=600",
                                          "data.num_val=200", "train.epochs=10"])
    unary = dstrain.train(config.but(train={"variant": "unary"}), tmp_path / "unary",
                          progress=False, log=lambda *_: None)
    joint = dstrain.train(config, tmp_path / "joint", progress=False, log=lambda *_: None)
    assert joint["val_variable_accuracy"] > unary["val_variable_accuracy"] + 0.05


def test_learning_imports_no_task():
    code = ("import sys, dstrain.learning.trainer, dstrain.learning.structured, "
            "dstrain.learning.on_device; "
            "print([m for m in sys.modules if m.startswith('dstrain.tasks.')])")
    done = run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    for source in (ROOT / "dstrain" / "learning").glob("*.py"):   # only the registry, if any
        assert not re.search(r"(\.\.|dstrain\.)tasks\.\w", source.read_text()), source
