"""The potential nets' building blocks against torch's own."""
import pytest
import torch
from torch.nn import functional as F

from dstrain.models import potentials
from dstrain.models.potentials import Linear, UnaryMLP


@pytest.mark.skipif(potentials._ONEDNN_LINEAR is None, reason="this torch has no oneDNN linear")
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_gives_torchs_values_and_gradients(bias):
    torch.manual_seed(0)
    layer = Linear(37, 11, bias=bias)
    x = torch.randn(23, 37, requires_grad=True)
    out = layer(x)
    assert out.grad_fn is not None and "OneDNN" in type(out.grad_fn).__name__   # the fast path ran
    weight = layer.weight.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_() if bias else None
    x64 = x.detach().double().requires_grad_()
    reference = F.linear(x64, weight, b)
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(reference)
    out.backward(grad.float())
    reference.backward(grad)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad.double(), weight.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(layer.bias.grad.double(), b.grad, rtol=1e-5, atol=1e-5)


def test_linear_skips_gradients_nobody_asked_for():
    layer = Linear(8, 3)
    layer.bias.requires_grad_(False)
    x = torch.randn(4, 8)   # no gradient wanted for the input
    layer(x).sum().backward()
    assert x.grad is None and layer.bias.grad is None and layer.weight.grad is not None


def test_linear_falls_back_to_torch_outside_float32_on_the_cpu():
    layer = Linear(6, 2).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    out = layer(x)
    assert "OneDNN" not in type(out.grad_fn).__name__
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))


def test_mlp_keeps_nn_linears_parameter_names():
    names = [name for name, _ in UnaryMLP((4, 4), [5], 3).named_parameters()]
    assert names == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
