"""GPU selection, CUDA-aware MPI detection and the reducer's routes to MPI.

Everything runs without a GPU: the CUDA routes of the reducer (staging through a host buffer,
handing the tensor itself to MPI) are forced onto CPU tensors and must give bit-identical results
to the plain numpy route, here in one process and under a real `mpirun` in
tests/test_comm_ranks.py.  Tests that need CUDA are marked ``gpu`` and skip without one.
"""
from pathlib import Path

import pytest
import torch

from dstrain.comm import GradientReducer, SingleProcess
from dstrain.config import ConfigError, RunConfig, load_config
from dstrain.gpu import device
from dstrain.gpu.device import (cuda_aware_mpi, describe, gpu_count, parse_ompi_info, resolve_device,
                                use_device_buffers)
from helpers import dstrain

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_OMPI_4_1_6 = """\
ompi:version:full:4.1.6
mca:opal:base:param:opal_built_with_cuda_support:value:false
mca:opal:base:param:opal_built_with_cuda_support:source:default
mca:opal:base:param:opal_built_with_cuda_support:synonym:name:mpi_built_with_cuda_support
mca:opal:base:param:opal_cuda_support:value:false
"""
CUDA_OMPI = """\
ompi:version:full:4.1.5
mca:opal:base:param:opal_cuda_support:value:false
mca:mpi:base:param:mpi_built_with_cuda_support:value:true
"""
NO_ANSWER = """\
ompi:version:full:5.0.11
mca:opal:base:param:opal_cuda_support:value:true
mca:opal:base:param:opal_built_with_cuda_support:help:Whether CUDA GPU buffer support is built into library or not
"""


# ---------------------------------------------------------------- CUDA-aware MPI

def test_parse_ompi_info():
    assert parse_ompi_info(DEBIAN_OMPI_4_1_6) is False
    assert parse_ompi_info(CUDA_OMPI) is True
    # opal_cuda_support (a run-time switch) and help text are no answer
    assert parse_ompi_info(NO_ANSWER) is None
    assert parse_ompi_info("") is None


@pytest.fixture
def fake_ompi_info(tmp_path, monkeypatch):
    """Make `ompi_info` a script that prints the given text."""
    def install(text):
        (tmp_path / "out.txt").write_text(text)
        script = tmp_path / "ompi_info"
        script.write_text(f"#!/bin/sh\ncat '{tmp_path / 'out.txt'}'\n")
        script.chmod(0o755)
        monkeypatch.setattr(device.shutil, "which", lambda *args, **kwargs: str(script))
    return install


def test_cuda_aware_mpi_asks_ompi_info(fake_ompi_info):
    fake_ompi_info(DEBIAN_OMPI_4_1_6)
    answer, finding = cuda_aware_mpi("Open MPI v4.1.6, package: Debian OpenMPI, ident: 4.1.6")
    assert answer is False and finding.startswith("no:") and "\n" not in finding
    fake_ompi_info(CUDA_OMPI)
    assert cuda_aware_mpi("Open MPI v4.1.5, package: Open MPI")[0] is True
    # an ompi_info of another Open MPI than the one in use says nothing about it
    answer, finding = cuda_aware_mpi("Open MPI v5.0.11, package: Open MPI")
    assert answer is None and "4.1.5" in finding and "5.0.11" in finding
    fake_ompi_info(NO_ANSWER)
    assert cuda_aware_mpi("Open MPI v5.0.11, package: Open MPI")[0] is None


def test_cuda_aware_mpi_without_ompi_info_or_mpi(monkeypatch):
    assert cuda_aware_mpi("none (single process)")[0] is None
    assert cuda_aware_mpi("MPICH Version: 4.2.0")[0] is None
    monkeypatch.setattr(device.shutil, "which", lambda *args, **kwargs: None)
    answer, finding = cuda_aware_mpi("Open MPI v5.0.11")
    assert answer is None and "ompi_info" in finding


def test_use_device_buffers_matrix():
    for finding in (True, False, None):
        assert use_device_buffers("yes", finding) is True
        assert use_device_buffers("no", finding) is False
        assert use_device_buffers("auto", finding) is (finding is True)
    with pytest.raises(ValueError, match="run.cuda_aware_mpi"):
        use_device_buffers("maybe", True)


# ---------------------------------------------------------------- devices

def test_resolve_device_cpu_and_bad_kind():
    assert resolve_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(ValueError, match="run.device"):
        resolve_device("tpu", 0)


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is visible here")
def test_resolve_device_without_a_gpu():
    assert resolve_device("auto", 0) == torch.device("cpu")
    with pytest.raises(device.DeviceUnavailable, match="run.device = cuda but") as raised:
        resolve_device("cuda", 0)
    assert ("CuPy" if device.cupy_module() is None else "no GPU") in str(raised.value)


def test_resolve_device_names_what_is_missing(monkeypatch):
    class Runtime:
        @staticmethod
        def getDeviceCount():
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    class FakeCupy:
        class cuda:
            runtime = Runtime

    monkeypatch.setattr(device, "cupy_module", lambda: FakeCupy)
    assert gpu_count() == 0 and resolve_device("auto", 0) == torch.device("cpu")
    with pytest.raises(device.DeviceUnavailable, match="but no GPU is visible"):
        resolve_device("cuda", 0)
    monkeypatch.setattr(device, "cupy_module", lambda: None)
    monkeypatch.setattr(device, "_cupy_error", "CuPy is not installed (pip install 'dstrain[gpu]')")
    with pytest.raises(device.DeviceUnavailable,
                       match=r"but CuPy is not installed \(pip install 'dstrain\[gpu\]'\)"):
        resolve_device("cuda", 0)


def test_describe_has_a_gpu_and_a_cuda_aware_line():
    lines = describe("none (single process)")
    if device.cupy_module() is None:     # says why there is no GPU
        assert lines[0] == f"  GPU      no GPU visible: {device._cupy_error}" and "CuPy" in lines[0]
    else:
        assert lines[0].startswith("  CuPy     ")
        assert any(line.startswith("  GPU ") for line in lines[1:])
    assert lines[-1] == f"  CUDA-aware MPI  {cuda_aware_mpi('none (single process)')[1]}"


def test_info_prints_the_gpu_section():
    done = dstrain("info", timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("dstrain ") and any(line.startswith("  MPI") for line in lines)
    assert any(line.startswith("  GPU") for line in lines)
    assert any(line.startswith("  CUDA-aware MPI  ") for line in lines)


# ---------------------------------------------------------------- config

def test_config_device_keys(tmp_path):
    assert (RunConfig().device, RunConfig().cuda_aware_mpi) == ("auto", "auto")
    for value in ("auto", "cpu", "cuda"):
        assert RunConfig(device=value).device == value
    for value in ("auto", "yes", "no"):
        assert RunConfig(cuda_aware_mpi=value).cuda_aware_mpi == value
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  cuda_aware_mpi: yes\n")     # YAML 1.1: a boolean
    assert load_config(path).run.cuda_aware_mpi == "yes"
    assert load_config(path, ["run.cuda_aware_mpi=no", "run.device=cpu"]).run.cuda_aware_mpi == "no"
    for override, key in (("run.device=gpu", "run.device"), ("run.device=1", "run.device"),
                          ("run.cuda_aware_mpi=sometimes", "run.cuda_aware_mpi")):
        with pytest.raises(ConfigError) as raised:
            load_config(path, [override])
        message = str(raised.value)
        assert message.startswith(f"--set {override}:") and key in message and "\n" not in message


# ---------------------------------------------------------------- the reducer's routes

class Doubling(SingleProcess):
    """A fake MPI of two identical ranks: every sum doubles (numpy arrays and tensors alike)."""

    uses_mpi = True

    def allreduce_(self, array, op="sum"):
        array *= 2
        return array


def _model(dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.Linear(20, 3)).to(dtype=dtype, device=device)


def _reduced_gradients(comm, route=None, dtype=torch.float32, device="cpu", **kwargs):
    model = _model(dtype, device)
    reducer = GradientReducer(model.parameters(), comm, bucket_bytes=30 * 20 * 4, _route=route, **kwargs)
    results = []
    for step in range(2):
        model.zero_grad(set_to_none=False)
        x = torch.randn(7, 30, generator=torch.Generator().manual_seed(step), dtype=dtype).to(device)
        model(x).square().sum().backward()
        assert reducer.gradients_finite()
        count, flags = reducer.reduce(7, (step, 1))
        results.append((count, flags.tolist(), [p.grad.detach().cpu().clone() for p in model.parameters()]))
    assert all(p.grad is reducer.views[p] for p in model.parameters())
    return reducer, results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_staged_and_direct_routes_match_the_host_route(dtype):
    for comm in (SingleProcess(), Doubling()):
        reducer, expected = _reduced_gradients(comm, dtype=dtype)
        assert set(reducer.routes) == {"host"} and len(reducer.buckets) >= 2
        for route in ("stage", "device"):
            reducer, got = _reduced_gradients(comm, route, dtype=dtype)
            assert reducer.routes == [route] * len(reducer.buckets)
            for (count, flags, grads), (count_e, flags_e, grads_e) in zip(got, expected):
                assert (count, flags) == (count_e, flags_e)
                for g, e in zip(grads, grads_e):
                    assert torch.equal(g, e), route
    # the doubling comm doubles the count too, so the mean is unchanged: 14 samples, flags summed
    assert expected[1][:2] == (14, [2.0, 2.0])


@pytest.mark.parametrize("route", ["host", "stage", "device"])
def test_every_route_sees_non_finite_gradients(route):
    model = _model()
    reducer = GradientReducer(model.parameters(), SingleProcess(), _route=route)
    model(torch.randn(2, 30)).sum().backward()
    assert reducer.gradients_finite()
    next(model.parameters()).grad[0, 0] = float("nan")
    assert not reducer.gradients_finite()


def test_route_choice():
    model = _model()
    with pytest.raises(ValueError, match="route"):
        GradientReducer(model.parameters(), SingleProcess(), _route="carrier pigeon")
    # device_buffers concerns CUDA buckets only: CPU buckets always go as numpy views
    assert set(GradientReducer(model.parameters(), Doubling(), device_buffers=True).routes) == {"host"}


# ---------------------------------------------------------------- on a GPU

def _needs_cuda():
    if gpu_count() == 0 or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU seen by both CuPy and torch (gpu_count() == 0 here)")


@pytest.mark.gpu
def test_resolve_device_takes_a_gpu_by_local_rank():
    _needs_cuda()
    chosen = resolve_device("cuda", 2 * gpu_count() + 1)
    assert chosen == torch.device("cuda", 1 % gpu_count()) and torch.cuda.current_device() == chosen.index
    assert device.cupy_module().cuda.Device().id == chosen.index
    assert resolve_device("auto", 0) == torch.device("cuda", 0)


@pytest.mark.gpu
@pytest.mark.parametrize("comm_kind", ["single", "doubling"])
def test_cuda_reducer_matches_the_cpu_reducer(comm_kind):
    _needs_cuda()
    comm = SingleProcess() if comm_kind == "single" else Doubling()
    _, expected = _reduced_gradients(comm, dtype=torch.float64)
    default = "device" if comm_kind == "single" else "stage"     # no MPI: no staging needed
    for route, kwargs in ((default, {}), ("device", {"device_buffers": True}), ("stage", {})):
        reducer, got = _reduced_gradients(comm, None if kwargs or route == default else route,
                                          dtype=torch.float64, device="cuda", **kwargs)
        assert reducer.routes[0] == route and all(b.is_cuda for b in reducer.tensors)
        for (count, flags, grads), (count_e, flags_e, grads_e) in zip(got, expected):
            assert (count, flags) == (count_e, flags_e)
            for g, e in zip(grads, grads_e):
                torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is visible here")
def test_train_on_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    from dstrain.cli import main
    from dstrain.tasks.words import generate_words
    data = tmp_path / "words.h5"
    generate_words(data, num_train=8, num_val=4, num_test=2, seed=1, progress=False)
    code = main(["train", "--config", str(ROOT / "configs" / "words_debug.yaml"), "--run-dir",
                 str(tmp_path / "run"),
                 "--no-progress", "--set", "run.device=cuda", f"data.path={data}",
                 "data.generate=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("dstrain: error: run.device = cuda but")
    assert len(err.splitlines()) == 1
