"""The CUDA kernels and the GPU training path on a real GPU (skipped without CuPy and a GPU).

Mirrors tests/test_kernels.py and tests/test_device_path.py, which run the same code with the
kernels emulated on the CPU; bench/gpu_check.sh runs these checks and the timings on a GPU machine.
"""

import numpy as np
import pytest
import torch

from dstrain.graph import GraphBatch, chain, fully_connected
from test_kernels import compare, mixed_graphs

pytestmark = pytest.mark.gpu
def kernels(dtype, poison=True):
    from dstrain.gpu import CudaKernels
    return CudaKernels(dtype, poison=poison)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(3))
def test_cuda_kernels_equal_the_cpu_engine(dtype, seed):
    rng = np.random.default_rng(900 + seed)
    compare(GraphBatch(mixed_graphs(rng)), kernels(dtype), rng)


@pytest.mark.parametrize("graphs", [[chain(5, 26, order=2)] * 64, [fully_connected(8, 2)] * 64])
def test_cuda_kernels_at_magnitude_1e4(graphs, rng):
    compare(GraphBatch(graphs), kernels(np.float32), rng, sweeps=6, scale=1e4)


def test_kernels_run_on_torchs_current_stream(rng):
    from dstrain.gpu import DeviceBP, on_torch_stream
    import cupy
    batch = GraphBatch([chain(6, 26, order=2)] * 32)
    bp = DeviceBP(batch, kernels(np.float32, poison=False))
    f = torch.randn(batch.num_potentials, device="cuda")
    expected = bp.run(cupy.from_dlpack(f), max_sweeps=3, tol=0.0).beliefs.get()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side), on_torch_stream():
        assert cupy.cuda.get_current_stream().ptr == side.cuda_stream
        got = bp.run(cupy.from_dlpack(f), max_sweeps=3, tol=0.0).beliefs
        side.synchronize()
    np.testing.assert_allclose(got.get(), expected, rtol=1e-6)


def test_device_is_local_rank_modulo_the_gpu_count():
    from dstrain.gpu.device import gpu_count, resolve_device
    count = gpu_count()
    assert resolve_device("cuda", 5) == torch.device("cuda", 5 % count)
    assert resolve_device("auto", 0).type == "cuda"


def test_gradient_on_the_gpu_equals_the_cpu_path():
    from test_device_path import gradients
    from test_learning import tiny_problem
    from dstrain.learning import InferenceOptions
    model, images, labels, lengths = tiny_problem(batch=6)
    options = InferenceOptions(algorithm="converge", max_sweeps=50, tol=1e-8)
    cpu, cpu_grads = gradients(model, images, labels, lengths, options)
    model.cuda()
    gpu, gpu_grads = gradients(model, images, labels, lengths, options, kernels(np.float64, False))
    assert gpu.gradient.is_cuda
    np.testing.assert_allclose(gpu.loss, cpu.loss, rtol=1e-9)
    for mine, theirs in zip(gpu_grads, cpu_grads):
        torch.testing.assert_close(mine.cpu(), theirs, rtol=1e-8, atol=1e-9)


def test_training_on_the_gpu_equals_the_cpu_path(tmp_path_factory):
    from test_device_path import train
    from dstrain.tasks.words import generate_words
    data = tmp_path_factory.mktemp("gpu") / "words.h5"
    generate_words(data, num_train=61, num_val=17, num_test=5, seed=8, progress=False)
    tmp = tmp_path_factory.mktemp("runs")
    cpu_params, cpu_messages = train(tmp / "cpu", data, "run.dtype=float64", "run.device=cpu")
    gpu_params, gpu_messages = train(tmp / "gpu", data, "run.dtype=float64", "run.device=cuda")
    for name in cpu_params:
        assert np.abs(gpu_params[name] - cpu_params[name]).max() <= 1e-8, name
    assert max(np.abs(gpu_messages[i] - cpu_messages[i]).max() for i in cpu_messages) <= 1e-8
