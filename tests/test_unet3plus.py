"""UNet 3+ beyond the family's common behaviour: full-scale skips as the authors built them, full-scale deep
supervision down to the bottleneck, and the classification-guided module."""

from __future__ import annotations

import pytest
import torch

from monai_unet_variants import UNet3Plus, create_network


def _convs(module: torch.nn.Module) -> list:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]


def test_reference_stages_aggregate_every_scale():
    """Stage X_De^i of the reference takes 5 inputs: encoder levels 0..i-1 max-pooled by 2^(i-k), encoder level i,
    and the deeper stages and the bottleneck up-sampled by 2^(k-i), each 3x3-convolved to 64 channels and fused by
    a 3x3 conv to 320 (ZJUGiveLab ``UNet_3Plus``: CatChannels 64, UpChannels 320)."""
    net = create_network("unet3plus", preset="reference")
    filters = (64, 128, 256, 512, 1024)
    assert len(net.decoder.stages) == 4
    for stage, i in zip(net.decoder.stages, (3, 2, 1, 0)):
        assert len(stage.paths) == 5
        for k, path in enumerate(stage.paths):
            resample, conv = path[0], _convs(path)[0]
            c_in = filters[k] if k <= i or k == 4 else 320
            assert (conv.in_channels, conv.out_channels, tuple(conv.kernel_size)) == (c_in, 64, (3, 3)), (i, k)
            if k < i:
                assert isinstance(resample, torch.nn.MaxPool2d) and resample.kernel_size == 2 ** (i - k)
                assert resample.ceil_mode
            elif k == i:
                assert isinstance(resample, torch.nn.Identity)
            else:
                assert isinstance(resample, torch.nn.Upsample) and resample.scale_factor == 2 ** (k - i)
                assert resample.mode == "bilinear"
        fuse = _convs(stage.fuse)[0]
        assert (fuse.in_channels, fuse.out_channels) == (320, 320)
    head = _convs(net.head.heads[0])[0]
    assert (head.in_channels, head.out_channels, tuple(head.kernel_size)) == (320, 1, (3, 3))


def test_full_scale_deep_supervision_reaches_the_bottleneck():
    net = UNet3Plus(3, 1, 2, channels=(4, 8, 16), deep_supervision=True, deep_supr_num=2).train()
    x = torch.randn(2, 1, 16, 16, 16)
    out = net(x)
    assert out.shape == (2, 3, 2, 16, 16, 16)
    assert _convs(net.head.heads[2])[0].in_channels == 16  # the bottleneck's head
    out[:, 2].sum().backward()  # the bottleneck's output trains the encoder
    assert net.encoder.blocks[2][0].conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"deep_supr_num must be in 1\.\.2"):
        UNet3Plus(3, 1, 2, channels=(4, 8, 16), deep_supervision=True, deep_supr_num=3)


def _gated(verdict: int) -> UNet3Plus:
    torch.manual_seed(0)
    net = UNet3Plus(2, 1, 3, channels=(4, 8, 16), norm="instance", deep_supervision=True, deep_supr_num=2,
                    classification_guided=True)
    conv = _convs(net.head.classifier)[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([10.0, -10.0]) if verdict == 0 else torch.tensor([-10.0, 10.0]))
    return net


def test_classification_guided_module_gates_every_output():
    x = torch.randn(2, 1, 16, 16)
    torch.manual_seed(0)
    plain = UNet3Plus(2, 1, 3, channels=(4, 8, 16), norm="instance", deep_supervision=True, deep_supr_num=2)
    for mode in ("train", "eval"):
        absent, present = _gated(0), _gated(1)
        plain.load_state_dict(present.state_dict(), strict=False)
        for net in (absent, present, plain):
            getattr(net, mode)()
        with torch.no_grad():
            out, probs = absent.forward_with_classification(x)
            assert torch.equal(out, torch.zeros_like(out))  # every output, main and deep, of an "absent" verdict
            assert probs.shape == (2, 2) and torch.all(probs[:, 0] > 0.99)
            assert out.argmax(dim=-3 if mode == "train" else 1).eq(0).all()  # all background
            torch.testing.assert_close(present(x), plain(x))
    assert _convs(plain.head.classifier) == []  # no module without the option


def test_only_interpolating_upsampling():
    with pytest.raises(ValueError, match=r"upsample must be one of \('resize_conv',\).*interpolates"):
        UNet3Plus(2, 1, 2, channels=(4, 8), upsample="deconv")


def test_classification_output_scripts():
    net = _gated(1).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        for a, b in zip(scripted.forward_with_classification(x), net.forward_with_classification(x)):
            torch.testing.assert_close(a, b)
