"""Faithfulness to the papers and reference implementations: parameter counts, structure, R2 sharing."""

from __future__ import annotations

import pytest
import torch

from monai_unet_variants import R2UNet, create_network
from monai_unet_variants.networks.blocks import MultiResBlock, RecurrentConv, multires_widths


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "name, preset, overrides, expected",
    [
        # LeeJunHyun/Image_Segmentation, exact
        ("unet", "reference", {}, 34_527_041),
        ("r2unet", "reference", {}, 39_091_393),
        ("attention_unet", "reference", {}, 34_878_573),
        ("attention_r2unet", "reference", {}, 39_442_925),
        # nibtehaz/MultiResUNet Keras original: 7,238,228 trainable, exact
        ("multiresunet", "reference", {}, 7_238_228),
        # ResUNet paper: 7.8 M without the 1x1 projection shortcuts; with them about 8.22 M
        ("resunet", "reference", {}, 8_223_809),
        # FD-UNet from the paper's text (figures-only reading: about 9.49 M; see the DenseUNet docstring)
        ("denseunet", "reference", {}, 9_834_657),
        # ozan-oktay/Attention-Gated-Networks unet_CT_multi_att_dsv_3D: two gates per level / one
        ("attention_unet", "paper", {}, 6_473_049),
        ("attention_unet", "paper", {"attention_gates": 1}, 6_213_878),
        # MrGiovanni/UNetPlusPlus keras/helper_functions.py UNetPlusPlus: "Total params: 9,041,601"; + 3 DS heads
        ("unetplusplus", "reference", {}, 9_041_601),
        ("unetplusplus", "reference", {"deep_supervision": True, "deep_supr_num": 3}, 9_041_700),
        # ZJUGiveLab/UNet-Version models/UNet_3Plus.py: UNet_3Plus, UNet_3Plus_DeepSup, UNet_3Plus_DeepSup_CGM, exact
        ("unet3plus", "reference", {}, 26_971_777),
        ("unet3plus", "reference", {"deep_supervision": True, "deep_supr_num": 4}, 26_989_637),
        ("unet3plus", "reference", {"deep_supervision": True, "deep_supr_num": 4, "classification_guided": True},
         26_991_687),
    ],
)
def test_parameter_count_pins(name, preset, overrides, expected):
    assert n_params(create_network(name, preset=preset, **overrides)) == expected


def test_resunet_paper_count_without_projections():
    """Leaving out the projection shortcuts' parameters gives the paper's 7.8 M."""
    net = create_network("resunet", preset="reference")
    shortcut = sum(p.numel() for n, p in net.named_parameters() if ".shortcut." in n)
    assert round((n_params(net) - shortcut) / 1e6, 1) == 7.8


def test_reference_forward_runs_and_keeps_size():
    net = create_network("attention_r2unet", preset="reference", channels=(8, 16, 32, 64, 128)).eval()
    x = torch.randn(1, 3, 32, 32)
    assert net(x).shape == (1, 1, 32, 32)


def test_presets_take_overrides_and_drop_none():
    net = create_network("unet", preset="reference", spatial_dims=3, channels=(4, 8, 16, 32, 64), dropout=None)
    assert net.spatial_dims == 3
    assert net.eval()(torch.randn(1, 3, 16, 16, 16)).shape == (1, 1, 16, 16, 16)


def test_multires_reference_uses_keras_batch_norm_settings():
    """Keras' BatchNormalization defaults: epsilon 1e-3, momentum 0.99 (PyTorch momentum 0.01)."""
    net = create_network("multiresunet", preset="reference")
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 84 and {(m.eps, m.momentum) for m in norms} == {(1e-3, 0.01)}


def test_multires_block_widths_follow_keras():
    assert multires_widths(32, 1.67) == (8, 17, 26)
    assert MultiResBlock(2, 3, 32).out_channels == 51
    assert MultiResBlock(2, 3, 512).out_channels == 853


def test_respath_lengths_are_4_3_2_1():
    net = create_network("multiresunet", preset="reference")
    lengths = [len(s.transform.units) for s in net.decoder.skips]  # stored deepest first
    assert lengths == [1, 2, 3, 4]


def test_attention_paper_gates_only_lower_skips():
    net = create_network("attention_unet", preset="paper", channels=(4, 8, 16, 32, 64))
    gated = [len(s.gates) for s in net.decoder.skips]  # deepest first
    assert gated == [2, 2, 2, 0]
    y, maps = net.eval().forward_with_attention(torch.randn(1, 1, 32, 32, 32))
    assert y.shape == (1, 3, 32, 32, 32)
    assert [m.shape[2] for m in maps] == [16, 8, 4]
    assert all(m.shape[1] == 2 for m in maps)


def test_grid_gate_works_at_coarse_resolution():
    """Grid gates compute coefficients on the coarse grid: theta is strided, phi sees the coarse level."""
    net = create_network("attention_unet", spatial_dims=2, channels=(4, 8, 16), strides=(2, 2))
    gate = net.decoder.skips[1].gates[0]  # top skip (level 0)
    seen = {}
    gate.psi.register_forward_hook(lambda m, i, o: seen.update(psi=o.shape))
    net.eval()(torch.randn(1, 1, 32, 32))
    assert seen["psi"][2:] == (16, 16)


def test_same_gate_uses_upsampled_decoder_features():
    net = create_network("attention_unet", preset="reference", channels=(4, 8, 16, 32, 64))
    gate = net.decoder.skips[-1].gates[0]
    seen = {}
    gate.phi.register_forward_hook(lambda m, i, o: seen.update(phi_in=i[0].shape))
    net.eval()(torch.randn(1, 3, 32, 32))
    assert seen["phi_in"] == (1, 4, 32, 32)


def test_recurrent_conv_shares_weights_over_time():
    """One convolution, applied t + 1 times; all its gradient contributions land in one weight."""
    for t in (0, 1, 2, 3):
        layer = RecurrentConv(2, 4, recurrence=t)
        convs = [m for m in layer.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 1
        calls = []
        convs[0].register_forward_hook(lambda m, i, o: calls.append(1))
        layer(torch.randn(2, 4, 8, 8)).sum().backward()
        assert len(calls) == t + 1
        assert len(layer.steps) == t + 1
    # weights of two R2 units' recurrent layers: two convolutions per unit, never more
    net = R2UNet(2, 1, 1, channels=(4, 8), strides=(2,), recurrence=5)
    unit = net.encoder.blocks[0]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in unit.body.modules()) == 2


def test_recurrent_conv_matches_reference_formula():
    torch.manual_seed(0)
    layer = RecurrentConv(2, 3, recurrence=2, shared_norm=True, norm=None)
    x = torch.randn(1, 3, 8, 8)
    f = lambda z: torch.relu(layer.conv(z))  # noqa: E731
    h = f(x)
    h = f(x + h)
    h = f(x + h)
    torch.testing.assert_close(layer(x), h)


def test_shared_norm_is_one_module():
    shared = RecurrentConv(2, 4, recurrence=2, shared_norm=True)
    per_step = RecurrentConv(2, 4, recurrence=2, shared_norm=False)
    assert len({id(m) for m in shared.steps}) == 1
    assert len({id(m) for m in per_step.steps}) == 3
    assert n_params(per_step) - n_params(shared) == 2 * 2 * 4


def _train_eval_gap(shared_norm: bool, seed: int) -> float:
    """Relative gap between train-mode and eval-mode outputs on the training batch after a few steps."""
    torch.manual_seed(seed)
    net = R2UNet(2, 1, 2, channels=(8, 16, 32), strides=(2, 2), shared_norm=shared_norm, norm=("batch", {"momentum": None}))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x = torch.randn(4, 1, 32, 32)
    y = (x > 0.5).long()[:, 0]
    net.train()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    # running statistics of the final weights on this batch (cumulative average, momentum=None)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    with torch.no_grad():
        train_out = net(x)
        net.eval()
        eval_out = net(x)
    return ((train_out - eval_out).abs().mean() / train_out.abs().mean()).item()


@pytest.mark.parametrize("seed", [0, 1])
def test_r2unet_eval_matches_train_with_per_step_norm(seed):
    per_step = _train_eval_gap(False, seed)
    shared = _train_eval_gap(True, seed)
    assert per_step < 0.05, per_step
    assert shared > 0.1, shared  # the reference's shared BatchNorm drifts
    assert per_step < shared / 5
