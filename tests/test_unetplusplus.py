"""UNet++ beyond the family's common behaviour: the nested dense skips as the authors built them, deep supervision
over the top row, and the paper's inference-time pruning."""

from __future__ import annotations

import pytest
import torch

from monai_unet_variants import UNetPlusPlus, create_network


def _first_conv(module: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in module.modules() if isinstance(m, torch.nn.modules.conv._ConvNd))


def test_reference_nodes_match_the_keras_merges():
    """Every node X^{i,j} of the reference reads the Keras ``merge{i+1}{j+1}`` width: the up-sampled X^{i+1,j-1}
    (nb_filter[i] channels) and X^{i,0} .. X^{i,j-1} (nb_filter[i] each), and convolves it to nb_filter[i]."""
    net = create_network("unetplusplus", preset="reference")
    nb_filter = (32, 64, 128, 256, 512)
    seen = set()
    for node in net.decoder.nodes:
        i, j = node.row, node.column
        seen.add((i, j))
        conv = _first_conv(node.block)
        assert (conv.in_channels, conv.out_channels) == ((j + 1) * nb_filter[i], nb_filter[i]), (i, j)
        up = _first_conv(node.up)
        assert isinstance(up, torch.nn.ConvTranspose2d) and (up.in_channels, up.out_channels) == (nb_filter[i + 1],
                                                                                                  nb_filter[i])
        assert tuple(up.kernel_size) == (2, 2) and tuple(up.stride) == (2, 2)
    assert seen == {(i, j) for j in range(1, 5) for i in range(5 - j)}  # 10 nodes
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert sum(isinstance(m, torch.nn.Dropout) for m in net.modules()) == 2 * (5 + 10)  # after every conv, p = 0.5
    assert all(m.p == 0.5 for m in net.modules() if isinstance(m, torch.nn.Dropout))


def test_concatenation_order_is_upsampled_first():
    """The node's block sees ``[up(X^{i+1,j-1}), X^{i,0}, ..]``: zeroing the first input channels' weights of
    X^{0,1} removes the deeper level's influence on it."""
    torch.manual_seed(0)
    net = UNetPlusPlus(2, 1, 1, channels=(4, 8), norm=None).eval()
    node = net.decoder.nodes[0]
    conv = _first_conv(node.block)
    with torch.no_grad():
        conv.weight[:, : node.up.out_channels] = 0
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        base = net(x)
        for p in net.encoder.blocks[1].parameters():
            p.add_(1.0)
        assert torch.equal(net(x), base)


def _net(**kwargs) -> UNetPlusPlus:
    torch.manual_seed(0)
    return UNetPlusPlus(**{**dict(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16, 32),
                                  norm="instance", deep_supervision=True, deep_supr_num=2), **kwargs})


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_pruned_output_is_the_full_network_head(depth):
    """UNet++ L^d in eval mode returns exactly the head of X^{0,d} of the whole network (deep-supervision output
    ``D - d`` in training mode), and runs neither the deeper encoder levels nor the nodes beyond diagonal d."""
    full = _net()
    pruned = _net(prune_depth=depth)
    pruned.load_state_dict(full.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        stacked = full.train()(x)  # instance norm without running stats: training and eval compute the same
        assert stacked.shape == (2, 3, 2, 32, 32)
        calls: list = []
        for level, enc in enumerate(pruned.encoder.blocks):
            enc.register_forward_pre_hook(lambda *a, level=level: calls.append(("enc", level)))
        for node in pruned.decoder.nodes:
            node.register_forward_pre_hook(lambda *a, n=node: calls.append(("node", n.row, n.column)))
        out = pruned.eval()(x)
    torch.testing.assert_close(out, stacked[:, 3 - depth], rtol=1e-5, atol=1e-6)
    assert {c[1] for c in calls if c[0] == "enc"} == set(range(depth + 1))
    needed = {(i, j) for j in range(1, depth + 1) for i in range(depth + 1 - j)}
    assert {c[1:] for c in calls if c[0] == "node"} == needed


def test_pruning_needs_a_trained_head():
    with pytest.raises(ValueError, match=r"prune_depth=1 needs a trained head on X\^\(0,1\).*must be in 2\.\.3"):
        _net(prune_depth=1, deep_supr_num=1)
    with pytest.raises(ValueError, match=r"must be in 3\.\.3"):
        _net(prune_depth=2, deep_supervision=False)
    assert _net(prune_depth=3, deep_supervision=False).eval()(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_pruned_network_scripts(tmp_path):
    net = _net(prune_depth=2).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    torch.jit.save(scripted, str(tmp_path / "m.ts"))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "m.ts"))(x), net(x))


def test_deep_supervision_feeds_monai_loss():
    """The stacked output, unbound, is what MONAI's ``DeepSupervisionLoss`` takes."""
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    net = _net().train()
    out = net(torch.randn(2, 1, 32, 32))
    label = torch.randint(0, 2, (2, 1, 32, 32))
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))(list(torch.unbind(out, 1)), label)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.head.heads.parameters())
