"""Every network on a CUDA GPU: same function as on the CPU, AMP (fp16) training steps, eval determinism,
checkpointing's memory saving measured with the CUDA allocator.

Skipped where no GPU is present (CI has none); run on a GPU machine with ``python -m pytest -q tests/test_gpu.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_input, tiny_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def exact_float32():
    """Plain float32 arithmetic on the GPU (no TF32 in convolutions or matrix products) for comparisons."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_gpu_matches_cpu(name, dims, exact_float32):
    """Forward and parameter gradients on the GPU equal the CPU's (where the narrow convolutions run in
    channels-last layout) up to float32 rounding."""
    cpu = tiny_net(name, dims).train()
    gpu = copy.deepcopy(cpu).cuda()
    x = tiny_input(dims)
    y_cpu, y_gpu = cpu(x), gpu(x.cuda())
    assert y_gpu.is_cuda and y_gpu.is_contiguous()
    assert _relative_error(y_gpu.cpu(), y_cpu) < 1e-4
    y_cpu.square().mean().backward()
    y_gpu.square().mean().backward()
    grads = {n: p.grad for n, p in cpu.named_parameters() if p.grad is not None}
    scale = torch.cat([g.flatten() for g in grads.values()]).norm()
    for n, q in gpu.named_parameters():
        if n not in grads:
            assert q.grad is None, n
            continue
        # a parameter's error against its own size, or against the whole gradient's where its own is rounding
        # noise (the bias of a convolution followed by instance norm has a gradient of zero up to 1e-8)
        error = (q.grad.cpu().double() - grads[n].double()).norm()
        assert error <= 1e-3 * grads[n].double().norm() + 1e-6 * scale, (n, float(error))


def test_amp_fp16_training_step(name, dims):
    """fp16 autocast: eval outputs close to float32; a training step with a gradient scaler gives finite
    gradients for every parameter, and the optimizer step changes the weights."""
    net = tiny_net(name, dims).cuda().train()
    reference = copy.deepcopy(net)
    x = tiny_input(dims).cuda()
    reference.eval()
    with torch.no_grad():
        y32 = reference(x)
        with torch.autocast("cuda", dtype=torch.float16):
            y16 = reference(x)
    assert y16.dtype == torch.float16 and torch.isfinite(y16).all()
    assert _relative_error(y16.float(), y32) < 2e-2
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        y = net(x)
        loss = y.float().square().mean()
    assert y.dtype == torch.float16
    scaler.scale(loss).backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    before = [p.detach().clone() for p in net.parameters()]
    scaler.step(opt)
    scaler.update()
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


def test_eval_is_deterministic_on_gpu(name, dims):
    net = tiny_net(name, dims).cuda().eval()
    x = tiny_input(dims).cuda()
    with torch.no_grad():
        a, b = net(x), net(x)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
def test_checkpointing_saves_gpu_memory(dims):
    """Activation checkpointing of the Attention R2U-Net cuts the training step's peak of the CUDA allocator."""
    size = 256 if dims == 2 else 64

    def peak(checkpointing: bool) -> int:
        net = tiny_net("attention_r2unet", dims, in_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                       checkpointing=checkpointing).cuda().train()
        x = torch.randn(2, 1, *([size] * dims), device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        net(x).square().mean().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    plain, saved = peak(False), peak(True)
    assert saved < 0.7 * plain, (saved, plain)
