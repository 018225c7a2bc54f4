"""TorchScript, ONNX (run with onnxruntime) and torch.compile for every network in 2D and 3D."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_input, tiny_net
from monai.networks.utils import convert_to_torchscript


def _trained_eval(name: str, dims: int) -> torch.nn.Module:
    """A network whose batch-norm statistics are not the identity, so eval mode is a real test."""
    net = tiny_net(name, dims)
    net.train()
    with torch.no_grad():
        net(tiny_input(dims, batch=3))
    return net.eval()


def test_torchscript_matches_eager(name, dims, tmp_path):
    net = _trained_eval(name, dims)
    x = tiny_input(dims)
    path = tmp_path / "net.ts"
    scripted = convert_to_torchscript(net, filename_or_obj=str(path), verify=True, inputs=[x], rtol=1e-4, atol=1e-5)
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-5)
        y, maps = scripted.forward_with_attention(x)
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
        _, eager_maps = net.forward_with_attention(x)
    assert len(maps) == len(eager_maps)
    # the script keeps the input checks
    with pytest.raises(Exception, match="input channels"):
        loaded(torch.randn((1, 5) + (16,) * dims))


def test_torchscript_deep_supervision_training_mode(name, dims):
    net = tiny_net(name, dims, deep_supervision=True).train()
    scripted = torch.jit.script(net)
    x = tiny_input(dims)
    assert scripted(x).shape == (2, 2, 3) + x.shape[2:]
    scripted.eval()
    assert scripted(x).shape == (2, 3) + x.shape[2:]


def test_onnx_matches_eager(name, dims, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = _trained_eval(name, dims)
    x = tiny_input(dims)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = net(x).numpy()
    assert out.shape == expected.shape
    assert abs(out - expected).max() <= 1e-4 * max(1.0, abs(expected).max())


@pytest.mark.slow  # 1-6 s per network in 2D, 1-7 s in 3D: 35 s of the default run's 3 minutes; .ci/run runs it
@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
def test_torch_compile_fullgraph(name, dims):
    """Dynamo captures every network as one graph (no graph breaks), forward and backward.

    ``aot_eager`` runs Dynamo and AOTAutograd without generating C++ kernels, which take minutes per
    network on a CPU; the Inductor test below covers kernel generation on the flagship network.
    """
    torch._dynamo.reset()
    net = _trained_eval(name, dims)
    x = tiny_input(dims)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-4, atol=1e-5)
    net.train()
    compiled(x).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.slow
def test_torch_compile_inductor_attention_unet():
    torch._dynamo.reset()
    net = _trained_eval("attention_unet", 3)
    x = tiny_input(3)
    compiled = torch.compile(net)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-4, atol=1e-4)
