"""Registry, composition and MONAI-bundle instantiation."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

import monai_unet_variants as muv
from monai_unet_variants import create_network, list_networks, list_presets, register_network


def test_names():
    assert list_networks() == sorted(
        ["unet", "resunet", "denseunet", "multiresunet", "r2unet", "attention_unet", "attention_r2unet", "unetplusplus",
         "unet3plus", "composable"]
    )
    assert list_networks("*attention*") == ["attention_r2unet", "attention_unet"]
    assert list_networks("r2*") == ["r2unet"]


def test_unknown_name_lists_closest():
    with pytest.raises(KeyError) as err:
        create_network("atention_unet")
    assert "did you mean 'attention_unet'" in str(err.value)


def test_unknown_preset():
    with pytest.raises(KeyError, match="available: \\['reference'\\]"):
        create_network("unet", preset="paper")
    assert list_presets("attention_unet") == ["paper", "reference"]


def test_name_spelling_is_forgiven():
    assert isinstance(create_network("Attention-UNet", spatial_dims=2, channels=(4, 8), strides=(2,)), muv.AttentionUNet)


def test_register_network():
    class Tiny(muv.PlainUNet):
        pass

    register_network("tiny_unet_for_test", Tiny)
    try:
        assert isinstance(create_network("tiny_unet_for_test", spatial_dims=2, channels=(4, 8)), Tiny)
        with pytest.raises(ValueError, match="already registered"):
            register_network("unet", Tiny)
    finally:
        muv.registry.NETWORKS.pop("tiny_unet_for_test")


def test_compose_attention_on_multiresunet():
    net = muv.MultiResUNet(2, 1, 2, channels=(8, 16, 32), attention="grid").eval()
    y, maps = net.forward_with_attention(torch.randn(1, 1, 32, 32))
    assert y.shape == (1, 2, 32, 32) and len(maps) == 2
    assert net.decoder.skips[-1].transform.__class__.__name__ == "ResPath"


def test_composable_mixed_blocks():
    net = muv.ComposableUNet(3, 1, 2, channels=(8, 16, 32), encoder_block="preact_residual", decoder_block="multires",
                             skip="respath", attention="same", downsample="conv")
    x = torch.randn(2, 1, 16, 16, 16)
    net(x).mean().backward()
    assert net(x).shape == (2, 2, 16, 16, 16)


def test_unknown_block_and_bad_block_args():
    with pytest.raises(ValueError, match="unknown block 'dense'"):
        muv.ComposableUNet(2, 1, 2, channels=(8, 16), encoder_block="dense")
    with pytest.raises(ValueError, match="do not fit block 'conv'"):
        muv.ComposableUNet(2, 1, 2, channels=(8, 16), block_args={"alpha": 2.0})


def test_global_residual_needs_matching_channels():
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        muv.DenseUNet(2, 1, 3, channels=(8, 16), global_residual=True)
    net = muv.DenseUNet(2, 1, 1, channels=(8, 16), global_residual=True)
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(net.eval()(x), x)


@pytest.mark.parametrize("target", ["PlainUNet", "ResUNet", "DenseUNet", "MultiResUNet", "R2UNet", "AttentionUNet",
                                    "AttentionR2UNet"])
def test_bundle_network_def(target):
    """Every network instantiates from a MONAI bundle config with a full _target_ path and JSON arguments."""
    config = {
        "network_def": {
            "_target_": f"monai_unet_variants.networks.{target}",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [8, 16, 32],
            "strides": [2, 2],
            "act": ["leakyrelu", {"negative_slope": 0.1}],
            "norm": "instance",
            "dropout": 0.1,
        }
    }
    parser = ConfigParser(config)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, getattr(muv, target))
    assert net.eval()(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in net.modules())
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())


@pytest.mark.slow  # a process (or three exports through black, isort and flake8): ~10-17 s
def test_import_is_light():
    """Importing the package adds no optional dependency beyond what torch and MONAI import themselves."""
    import subprocess
    import sys

    code = (
        "import sys, monai, monai.networks.blocks, monai.networks.layers; before = set(sys.modules); "
        "import monai_unet_variants; new = set(sys.modules) - before; "
        "print(sorted({m.split('.')[0] for m in new} & {'onnx', 'onnxruntime', 'monailabel', 'matplotlib', 'mlflow', "
        "'itk', 'pydicom', 'nibabel', 'ignite'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_error_inside_a_block_is_not_blamed_on_block_args(monkeypatch):
    """Only arguments a block does not take are reported as bad ``block_args``; a TypeError raised while a block is
    being built reaches the user as it is."""
    from monai_unet_variants.networks import base

    class Broken(torch.nn.Module):
        def __init__(self, spatial_dims, in_channels, out_channels, stride=1, kernel_size=3, act="relu", norm="batch",
                     dropout=None, bias=True, is_stem=False, width=1):
            super().__init__()
            raise TypeError("a bug inside the block")

    monkeypatch.setitem(base.BLOCKS, "broken", Broken)
    with pytest.raises(TypeError, match="a bug inside the block"):
        muv.ComposableUNet(2, 1, 2, channels=(8, 16), encoder_block="broken", block_args={"width": 2})
    with pytest.raises(ValueError, match=r"block_args \['depth'\] do not fit block 'broken'"):
        muv.ComposableUNet(2, 1, 2, channels=(8, 16), encoder_block="broken", block_args={"depth": 2})


def test_readme_networks_table_cites_each_class_papers(name):
    """Every registered network has its row in README's networks table, and the row links every paper that the
    class's ``PAPERS`` holds (the citation is written once, on the class; bundles and docstrings read it there)."""
    from pathlib import Path

    from monai_unet_variants.networks._common import short_citation
    from monai_unet_variants.registry import _lookup

    cls = _lookup(name)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` | `{cls.__name__}` |")), None)
    assert row is not None, f"README's networks table has no row for {name}"
    for paper in cls.PAPERS:
        assert short_citation(paper).rsplit(", ", 1)[1] in row, (name, paper)
        assert paper in cls.__doc__.replace("\n    ", " "), (name, paper)  # the docstring cites it, filled from PAPERS
    assert "{papers}" not in cls.__doc__ and (cls.PAPERS or name == "composable")
