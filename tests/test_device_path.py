"""The GPU training path, run on the CPU with the kernels emulated (dstrain.gpu.emulator):
DLPack hand-over, device-resident blend messages, gradient pull-back with index_add_, the
trainer's device branch and checkpoints of device messages -- all against the CPU path.
The same checks with CuPy on a real GPU are in tests/test_gpu.py."""
import numpy as np
import pytest
import torch

import dstrain
from dstrain.config import load_config
from dstrain.tasks.words import generate_words
from dstrain.gpu.emulator import EmulatedKernels
from dstrain.gpu.kernels import kernel_set
from dstrain.learning import InferenceOptions, MessageStore
from dstrain.learning.params import load_messages
from dstrain.learning.structured import backward
from helpers import CONFIGS, assert_groups_close, dstrain_train, run_params
from test_learning import batch_loss, message_sizes, tiny_problem


def gradients(model, images, labels, lengths, options, kernels=None, store=None):
    model.zero_grad()
    ids = np.arange(len(lengths)) if store is not None else None
    potentials, result = batch_loss(model, images, labels, lengths, model.order, options,
                                    store, ids, kernels)
    backward(potentials, result)
    return result, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("algorithm", ["converge", "blend", "local", "exact"])
def test_device_path_gives_the_cpu_paths_loss_and_gradient(algorithm):
    model, images, labels, lengths = tiny_problem(order=1 if algorithm == "exact" else 2, batch=6)
    options = InferenceOptions(algorithm=algorithm, sweeps=2, max_sweeps=50, tol=1e-8)
    sizes = message_sizes(model, lengths)
    cpu_store, device_store = MessageStore(np.arange(6), sizes), MessageStore(np.arange(6), sizes)
    kernels = EmulatedKernels(np.float64)
    launches = []
    original = kernels.launch
    kernels.launch = lambda *a: (launches.append(a[0]), original(*a))[1]
    blend = algorithm == "blend"
    for _ in range(2):   # blend: the second step starts from the stored messages
        cpu, cpu_grads = gradients(model, images, labels, lengths, options,
                                   store=cpu_store if blend else None)
        dev, dev_grads = gradients(model, images, labels, lengths, options, kernels,
                                   store=device_store if blend else None)
        assert isinstance(dev.flat_gradient, torch.Tensor) and isinstance(dev.beliefs, torch.Tensor)
        np.testing.assert_allclose(dev.loss, cpu.loss, rtol=1e-10)
        # the CPU path sums the pairs' beliefs per shared table (and forms the characters'
        # beliefs only): the gradients below compare those sums
        assert_groups_close(dev.unary_beliefs, cpu.unary_beliefs, atol=1e-10)
        for mine, theirs in zip(dev_grads, cpu_grads):
            torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-10)
        assert dev.sweeps == cpu.sweeps
    if blend:
        np.testing.assert_allclose(device_store.values, cpu_store.values, atol=1e-10)
        assert np.abs(device_store.values).max() > 0
    assert ("entry_beliefs" in launches) == (algorithm != "exact")


def test_potentials_reach_the_kernels_without_a_copy():
    model, images, labels, lengths = tiny_problem(batch=3)
    kernels = EmulatedKernels(np.float64)
    seen = []
    original = kernels.launch

    def spy(name, count, args):
        if name == "edge_mu":
            seen.append(args[0].ctypes.data)
        original(name, count, args)

    kernels.launch = spy
    layout = model.layout(lengths)
    source = model.source(torch.from_numpy(images), model.order)
    potentials = source.detach()[layout.on(source.device).source_index]
    from dstrain.learning.on_device import device_structured_loss
    device_structured_loss(potentials, layout, labels, InferenceOptions(algorithm="converge",
                                                                        max_sweeps=1), kernels)
    assert seen and seen[0] == potentials.data_ptr()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("device") / "words.h5"
    generate_words(path, num_train=61, num_val=17, num_test=5, seed=8, progress=False)
    return path


def settings(*extra, emulate=False):
    """Overrides of configs/words_debug.yaml for a short run (the GPU code path with emulated
    kernels if `emulate`)."""
    return ["train.variant=pretrain_joint", "train.epochs=3", "train.pretrain_epochs=1",
            "train.batch_size=16", "model.hidden=[16]",
            f"debug.emulate_kernels={str(emulate).lower()}", *extra]


def train(run_dir, data, *extra, emulate=False, resume=None):
    """`dstrain train` in a subprocess (a resumed run shares nothing with the one it continues):
    (final parameters, blend messages)."""
    dstrain_train("words_debug.yaml", run_dir, data, *settings(*extra, emulate=emulate),
                  resume=resume)
    return run_params(run_dir), load_messages(run_dir / "messages.h5")


def train_here(run_dir, data, *extra, emulate=False):
    """The same run in this process (dstrain.train): (final parameters, blend messages)."""
    config = load_config(CONFIGS / "words_debug.yaml", [f"data.path={data}", "data.generate=false",
                                                        *settings(*extra, emulate=emulate)])
    dstrain.train(config, run_dir, progress=False, log=lambda *_: None)
    return run_params(run_dir), load_messages(run_dir / "messages.h5")


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 2e-4)])
def test_training_on_the_device_path_equals_the_cpu_path(data, tmp_path, dtype, tolerance):
    cpu_params, cpu_messages = train_here(tmp_path / "cpu", data, f"run.dtype={dtype}")
    dev_params, dev_messages = train_here(tmp_path / "dev", data, f"run.dtype={dtype}", emulate=True)
    for name in cpu_params:
        scale = max(np.abs(cpu_params[name]).max(), 1.0)
        assert np.abs(dev_params[name] - cpu_params[name]).max() / scale <= tolerance, name
    assert sorted(dev_messages) == list(range(61))
    worst = max(np.abs(dev_messages[i] - cpu_messages[i]).max() for i in cpu_messages)
    assert worst <= tolerance * 100 and max(np.abs(m).max() for m in dev_messages.values()) > 0


@pytest.mark.slow
def test_resume_with_device_messages_is_bitwise(data, tmp_path):
    extra = ("run.checkpoint_every=3", "train.batching=global")
    whole, whole_messages = train(tmp_path / "whole", data, *extra, emulate=True)
    train(tmp_path / "part", data, *extra, "train.max_steps=5", emulate=True)
    resumed_params, resumed = train(tmp_path / "part", data, *extra, emulate=True, resume="auto")
    for name in whole:
        assert np.array_equal(resumed_params[name], whole[name]), name
    assert all(np.array_equal(resumed[i], whole_messages[i]) for i in whole_messages)


def test_kernel_emulation_is_the_configs_switch_not_the_environments(monkeypatch):
    monkeypatch.setenv("DSTRAIN_EMULATE_KERNELS", "1")     # the switch before the debug section
    cpu = torch.device("cpu")
    assert kernel_set(cpu, "float64") is None
    emulated = kernel_set(cpu, "float64", emulate=True)   # debug.emulate_kernels
    assert isinstance(emulated, EmulatedKernels) and emulated.dtype == np.float64
