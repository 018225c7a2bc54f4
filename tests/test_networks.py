"""Behaviour every network must have, in 2D and 3D: shapes, gradients, determinism, input checks,
deep supervision, activation checkpointing, AMP, dropout and attention maps."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from conftest import tiny_input, tiny_kwargs, tiny_net

from monai_unet_variants import create_network
from monai_unet_variants.networks.base import UNetBase
from monai_unet_variants.networks.blocks import OutputHead


def test_output_shape(name, dims):
    net = tiny_net(name, dims).train()
    x = tiny_input(dims)
    y = net(x)
    assert y.shape == (2, 3) + x.shape[2:]
    assert torch.isfinite(y).all()


def test_non_square_input(name, dims):
    net = tiny_net(name, dims).eval()
    x = torch.randn((1, 2) + (16, 8, 12)[:dims])
    assert net(x).shape == (1, 3) + x.shape[2:]


def test_every_parameter_gets_a_gradient(name, dims):
    net = tiny_net(name, dims).train()
    x = tiny_input(dims)
    net(x).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    # a convolution bias right before a batch norm is cancelled by it (its gradient is 0 up to rounding),
    # so the non-zero check covers weights
    zero = [n for n, p in net.named_parameters() if p.dim() > 1 and p.grad.abs().sum() == 0]
    assert not zero, f"weights with an all-zero gradient: {zero}"


def test_eval_is_deterministic(name, dims):
    net = tiny_net(name, dims, dropout=0.3)
    x = tiny_input(dims)
    net.train()
    net(x)  # update running statistics once
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a, b)


def test_dropout_is_applied(name, dims):
    net = tiny_net(name, dims, dropout=0.5).train()
    assert any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in net.modules())
    x = tiny_input(dims)
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(2)
    b = net(x)
    assert not torch.allclose(a, b)


def test_spatial_size_not_divisible(name, dims):
    net = tiny_net(name, dims).eval()
    x = torch.randn((1, 2) + (18,) * dims)
    with pytest.raises(ValueError) as err:
        net(x)
    msg = str(err.value)
    assert "divisible by 4" in msg and str([20] * dims) in msg


def test_wrong_input_channels(name, dims):
    net = tiny_net(name, dims).eval()
    with pytest.raises(ValueError, match="expected 2 input channels, received 5"):
        net(torch.randn((1, 5) + (16,) * dims))


def test_wrong_input_rank(name, dims):
    net = tiny_net(name, dims).eval()
    with pytest.raises(ValueError, match=f"expected a {dims + 2}D input"):
        net(torch.randn((1, 2) + (16,) * (dims + 1)))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(spatial_dims=4), "spatial_dims must be 2 or 3"),
        (dict(strides=(2, 2, 2)), "strides must have len\\(channels\\) - 1 = 2"),
        (dict(channels=(8, 0, 16)), "positive integers"),
        (dict(channels=(8,), strides=()), "at least 2 levels"),
        (dict(norm="batchy"), "unknown normalisation norm='batchy'"),
        (dict(act="relux"), "unknown activation act='relux'"),
        (dict(kernel_size=2), "kernel_size must be a positive odd integer"),
        (dict(upsample="bicubic"), "upsample must be one of"),
        (dict(dropout=1.5), "dropout must be a probability"),
        (dict(deep_supervision=True, deep_supr_num=3), "deep_supr_num must be in 1\\.\\."),
        (dict(deep_supervision="false"), "deep_supervision must be True or False \\(got 'false'\\)"),
        (dict(deep_supervision=True, deep_supr_num="1"), "deep_supr_num must be an integer \\(got '1'\\)"),
        (dict(out_channels=0), "in_channels and out_channels must be positive"),
    ],
)
def test_bad_arguments(name, bad, match):
    with pytest.raises(ValueError, match=match):
        create_network(name, **{**tiny_kwargs(name, 2), **bad})


def test_deep_supervision(name, dims):
    net = tiny_net(name, dims, deep_supervision=True, deep_supr_num=1)
    x = tiny_input(dims)
    net.train()
    y = net(x)
    assert y.shape == (2, 2, 3) + x.shape[2:]
    y.mean().backward()
    net.eval()
    with torch.no_grad():
        z = net(x)
    assert z.shape == (2, 3) + x.shape[2:]


def test_upsample_modes(name, dims):
    """Every up-sampling mode a network offers works (UNet 3+ offers one: interpolation, then its paths' convs)."""
    from monai_unet_variants.networks.blocks import UPSAMPLE_MODES
    from monai_unet_variants.registry import NETWORKS

    x = tiny_input(dims)
    for mode in getattr(NETWORKS[name], "UPSAMPLE_MODES", UPSAMPLE_MODES):
        net = tiny_net(name, dims, upsample=mode).eval()
        assert net(x).shape == (2, 3) + x.shape[2:]


def _count_calls(module: torch.nn.Module) -> list:
    calls: list = []
    module.register_forward_pre_hook(lambda *args: calls.append(1))  # a recomputation may stop before the end
    return calls


def test_checkpointing_gives_same_gradients(name, dims):
    """Checkpointing recomputes (the top encoder level runs twice per step, once without it) and changes no
    gradient."""
    plain = tiny_net(name, dims).train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpointing = True
    plain_calls, ckpt_calls = _count_calls(plain.encoder.blocks[0]), _count_calls(ckpt.encoder.blocks[0])
    x = tiny_input(dims)
    plain(x).square().mean().backward()
    ckpt(x).square().mean().backward()
    assert (len(plain_calls), len(ckpt_calls)) == (1, 2)
    for (n, p), (_, q) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=lambda m: f"{n}: {m}")


def test_checkpointing_constructor_flag(name):
    net = tiny_net(name, 2, checkpointing=True).train()
    calls = _count_calls(net.encoder.blocks[0])
    x = tiny_input(2)
    net(x).mean().backward()
    assert net.checkpointing and len(calls) == 2
    with torch.no_grad():  # nothing to recompute without gradients
        net(x)
    assert len(calls) == 3


def test_autocast_bfloat16(name, dims):
    net = tiny_net(name, dims).train()
    x = tiny_input(dims)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
        loss = y.float().square().mean()
    loss.backward()
    assert torch.isfinite(y.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_attention_maps(name, dims):
    net = tiny_net(name, dims).eval()
    x = tiny_input(dims)
    with torch.no_grad():
        y, maps = net.forward_with_attention(x)
        torch.testing.assert_close(y, net(x))
    if "attention" in name:
        assert len(maps) == 2
        assert maps[0].shape == (2, 1) + x.shape[2:]
        assert maps[1].shape == (2, 1) + tuple(s // 2 for s in x.shape[2:])
        assert all(((m >= 0) & (m <= 1)).all() for m in maps)
    else:
        assert maps == []


def test_batch_independence_in_eval(name, dims):
    """A sample's prediction does not depend on its batch mates in eval mode (sliding-window batches)."""
    net = tiny_net(name, dims)
    x = tiny_input(dims, batch=3)
    net.train()
    net(x)
    net.eval()
    with torch.no_grad():
        full = net(x)
        single = net(x[1:2])
    torch.testing.assert_close(full[1:2], single, atol=1e-5, rtol=1e-4)


def test_narrow_convolutions_change_layout_not_results(name, dims):
    """Narrow convolutions compute in channels-last on a CPU (``prefers_channels_last``): same parameters from the
    same seed, same state-dict keys, same outputs and gradients as plain convolutions; a channels-last input
    keeps its layout through them."""
    from monai_unet_variants.networks.blocks import layers

    fast = tiny_net(name, dims).train()
    narrow = [m for m in fast.modules() if isinstance(m, (layers.NarrowConv2d, layers.NarrowConv3d))]
    assert narrow, "the tiny widths include narrow convolutions"
    assert all(
        layers.prefers_channels_last(dims, m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in narrow
    )
    with layers.narrow_channels_last(False):
        plain = tiny_net(name, dims).train()
    assert layers.prefers_channels_last(dims, 4, 8)  # the switch ends with its block
    assert not any(isinstance(m, (layers.NarrowConv2d, layers.NarrowConv3d)) for m in plain.modules())
    assert list(fast.state_dict()) == list(plain.state_dict())
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[key], value, rtol=0, atol=0, msg=key)
    x = tiny_input(dims)
    y_fast, y_plain = fast(x), plain(x)
    # float sums in another order: differences of 1e-5 (a wrong layout would differ by O(1))
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-3, atol=1e-4)
    assert y_fast.is_contiguous()
    y_fast.square().mean().backward()
    y_plain.square().mean().backward()
    for (n, p), (_, q) in zip(fast.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4, msg=lambda m: f"{n}: {m}")
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    conv = narrow[0]
    z = torch.randn(2, conv.in_channels, *([8] * dims)).contiguous(memory_format=fmt)
    assert conv(z).is_contiguous(memory_format=fmt)
    # the layers before get their gradient back in their own layout (mixed layouts slow their backward)
    grads: list = []
    h = torch.randn(2, conv.in_channels, *([8] * dims), requires_grad=True) * 1.0
    h.register_hook(grads.append)
    conv(h).sum().backward()
    assert grads[0].is_contiguous(), grads[0].stride()


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
def test_strided_pointwise_convolutions_stay_channels_first(dims):
    """A 1x1 convolution with a stride (residual shortcuts) is never moved to channels-last: oneDNN's channels-last
    weight gradient for it corrupts the heap with 3 or more threads (uxlfoundation/oneDNN#6035)."""
    from monai_unet_variants.networks.blocks import layers

    assert not layers.prefers_channels_last(dims, 4, 8, kernel_size=1, stride=2)
    assert not layers.prefers_channels_last(dims, 4, 8, kernel_size=1, stride=(1,) * (dims - 1) + (2,))
    assert layers.prefers_channels_last(dims, 4, 8, kernel_size=1, stride=1)
    assert layers.prefers_channels_last(dims, 4, 8, kernel_size=3, stride=2)
    unit = layers.convolution(dims, 4, 8, kernel_size=1, strides=2, conv_only=True)
    assert type(unit.conv) is (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)
    assert type(layers.convolution(dims, 4, 8, kernel_size=3, strides=2).conv) is not type(unit.conv)


@pytest.mark.slow
def test_training_steps_with_many_threads():
    """Every network's training step on a CPU with 16 threads (as on a workstation): in a child process, since a
    bad kernel choice corrupts the heap (it crashed the ResUNet before strided 1x1 convolutions stayed
    channels-first), and with the same gradients as the channels-first network."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from conftest import NETWORK_NAMES, tiny_input, tiny_net
from monai_unet_variants.networks.blocks import layers
torch.set_num_threads(16)
for name in NETWORK_NAMES:
    for dims in (2, 3):
        nets = []
        for narrow in (True, False):
            with layers.narrow_channels_last(narrow):
                net = tiny_net(name, dims).train()
            for _ in range(3):
                net.zero_grad()
                net(tiny_input(dims)).square().mean().backward()
            nets.append(net)
        for (n, p), (_, q) in zip(nets[0].named_parameters(), nets[1].named_parameters()):
            if p.grad is not None:
                where = f"{name} {dims}D {n}"
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4, msg=lambda m: f"{where}: {m}")
print("ok")
"""
    tests = str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", script, tests], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.returncode, proc.stderr[-2000:])


def _legacy(key: str) -> str:
    """A key as checkpoints named it before encoder, decoder and head were modules of their own."""
    for pattern, repl in ((r"^encoder\.blocks\.", "encoder."), (r"^decoder\.blocks\.", "decoder."),
                          (r"^decoder\.(ups|skips|nodes|stages)\.", r"\1."), (r"^head\.(heads|classifier)\.", r"\1.")):
        key = re.sub(pattern, repl, key)
    return key


def test_checkpoints_saved_before_the_parts_were_modules_still_load(name):
    """The state-dict keys changed with the encoder/decoder/head split (``encoder.0.`` -> ``encoder.blocks.0.``,
    ``skips.`` -> ``decoder.skips.``, ``heads.`` -> ``head.heads.``); an older checkpoint loads and predicts the same."""
    kwargs = {"deep_supervision": True, "deep_supr_num": 1}
    if name == "unet3plus":
        kwargs["classification_guided"] = True
    old = tiny_net(name, 2, **kwargs).eval()
    legacy = {_legacy(k): v for k, v in old.state_dict().items()}
    assert set(legacy) != set(old.state_dict())  # the old names differ
    torch.manual_seed(1)
    new = create_network(name, **tiny_kwargs(name, 2, **kwargs)).eval()
    new.load_state_dict(legacy)
    x = tiny_input(2)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x))
    with pytest.raises(RuntimeError, match="Unexpected key"):  # an unknown key is still refused
        new.load_state_dict({**legacy, "decoder.99.weight": torch.zeros(1)})


def test_a_checkpoint_of_other_widths_is_refused_in_one_line(name):
    """Weights saved from other widths (or for other classes) fail to load with one line naming the network's widths
    and the first tensor that differs, in place of torch's list of every mismatched tensor; a compiled or wrapped
    network (a prefix) says the same."""
    net = tiny_net(name, 2)
    wider = tiny_net(name, 2, channels=[2 * c for c in tiny_kwargs(name, 2)["channels"]])
    widths = str(list(net.encoder.out_channels))
    with pytest.raises(RuntimeError, match=re.escape(f"does not fit this network (widths {widths})")) as err:
        net.load_state_dict(wider.state_dict())
    assert "encoder.blocks.0" in str(err.value) and "in the checkpoint" in str(err.value)
    assert "size mismatch" not in str(err.value) and "--ckpt_path" in str(err.value)
    wrapped = torch.nn.ModuleDict({"module": net})
    with pytest.raises(RuntimeError, match=re.escape(f"(widths {widths})")):
        wrapped.load_state_dict({f"module.{k}": v for k, v in wider.state_dict().items()})
    with pytest.raises(RuntimeError, match=r"head\S* is \[2, .* in the checkpoint, \[3, .*input channels or classes"):
        net.load_state_dict(tiny_net(name, 2, out_channels=2).state_dict())  # trained for two classes
    net.load_state_dict(tiny_net(name, 2).state_dict())  # the same widths still load


# ------------------------------------------------------------------------- the parts' protocol (networks.base)
class _SumDecoder(torch.nn.Module):
    """A decoder of the protocol that is none of the family's: each level's features to ``width`` channels by a 1x1
    convolution, up-sampled to full size (an FPN-like toy); ``out_channels`` one width per output."""

    def __init__(self, widths: list[int], width: int) -> None:
        super().__init__()
        self.lateral = torch.nn.ModuleList([torch.nn.Conv2d(w, width, 1) for w in widths])
        self.out_channels = [width] * len(widths)

    def forward(self, feats: list[torch.Tensor], use_checkpoint: bool = False) -> list[torch.Tensor]:
        size = list(feats[0].shape[2:])
        outs: list[torch.Tensor] = []
        for k, lateral in enumerate(self.lateral):
            outs.append(torch.nn.functional.interpolate(lateral(feats[k]), size=size, mode="nearest"))
        return outs


class _ToyNet(UNetBase):
    """A variant that brings only its decoder: the shared encoder and head, ``UNetBase``'s forward."""

    def __init__(self) -> None:
        super().__init__()
        common = dict(kernel_size=3, act="relu", norm="batch", dropout=None, bias=True)
        widths = self._build_encoder(2, 1, 3, (4, 8, 16), (2, 2), "conv", common, {})
        self.decoder = _SumDecoder(widths, 6)
        self.head = OutputHead(2, self.decoder.out_channels, 3, deep_supr_num=2)
        self.deep_supervision = True


def test_a_variant_brings_its_own_decoder_and_the_skeleton_does_the_rest():
    torch.manual_seed(0)
    net = _ToyNet()
    x = torch.randn(2, 1, 16, 16)
    assert net.train()(x).shape == (2, 3, 3, 16, 16)  # main + two deep-supervision outputs, stacked
    net.checkpointing = True
    net(x).mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))
    assert net(x).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="not divisible by 4"):
        net(torch.randn(1, 1, 18, 18))
