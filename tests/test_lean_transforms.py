"""Resampling and softmax of clinical-size volumes without whole-volume temporaries, with MONAI's values: the slab
resampler behind ``MetaSafeSpacingd`` (and ``Invertd`` of it) and ``InPlaceSoftmaxd``."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.networks.layers import AffineTransform
from monai.transforms import Spacingd
from monai.transforms.spatial import functional

from monai_unet_variants.bundle.transforms import InPlaceSoftmaxd, MetaSafeSpacingd, SlabAffineTransform

BUDGET = 28 * 90 * 100 * 3  # about three output slices of grid a slab


@pytest.fixture
def grids(monkeypatch) -> list[int]:
    """The bytes of every sampling grid ``grid_sample`` is given (MONAI's calls and the slabs')."""
    seen: list[int] = []
    sample = torch.nn.functional.grid_sample

    def counting(input, grid, *args, **kwargs):
        seen.append(grid.numel() * grid.element_size())
        return sample(input, grid, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grid_sample", counting)
    monkeypatch.setattr(functional, "AffineTransform", AffineTransform)  # MONAI's own until MetaSafeSpacingd
    return seen


def _case(key: str, spacing: tuple[float, float, float], shear: float) -> dict:
    g = torch.Generator().manual_seed(3)
    if key == "label":
        values = torch.randint(0, 3, (1, 96, 84, 36), generator=g).float()
    else:
        values = torch.rand(2, 96, 84, 36, generator=g) * 1000 - 500
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-50.3, 20.1, 7.7], dtype=torch.float64)
    affine[0, 1] = shear
    return {key: MetaTensor(values, affine=affine)}


@pytest.mark.parametrize("key, mode, padding", [("label", "nearest", "border"), ("image", "bilinear", "border"),
                                                ("image", "bilinear", "zeros")])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("spacing, shear", [((0.8, 0.8, 2.5), 0.0), ((1.3, 0.7, 3.0), 0.05)])
def test_slab_resampling_gives_monais_values_bit_for_bit(monkeypatch, grids, key, mode, padding, align_corners,
                                                         spacing, shear):
    """Forward and inverse, images and labels (a nearest-neighbour tie at 0.8 -> 1 mm breaks as MONAI breaks it),
    with each grid within the budget instead of the whole volume's."""
    monkeypatch.setattr(SlabAffineTransform, "slab_grid_bytes", BUDGET)
    settings = {"keys": key, "pixdim": (1.0, 1.0, 1.0), "mode": mode, "padding_mode": padding,
                "align_corners": align_corners, "dtype": torch.float32}
    theirs = Spacingd(**settings)
    expected = theirs(_case(key, spacing, shear))
    expected_back = theirs.inverse(dict(expected))[key]
    whole = max(grids)
    grids.clear()

    ours = MetaSafeSpacingd(**settings)
    assert functional.AffineTransform is SlabAffineTransform
    got = ours(_case(key, spacing, shear))
    back = ours.inverse(dict(got))[key]
    assert torch.equal(got[key].as_tensor(), expected[key].as_tensor())
    assert torch.equal(got[key].affine, expected[key].affine)
    assert torch.equal(back.as_tensor(), expected_back.as_tensor()) and back.shape == (got[key].shape[0], 96, 84, 36)
    assert len(grids) > 10 and max(grids) <= BUDGET * 12 / 28 < whole / 10  # 12 of the 28 bytes are the grid's


def test_an_output_within_the_budget_is_resampled_in_one_call(grids):
    settings = {"keys": "image", "pixdim": (1.0, 1.0, 1.0), "mode": "bilinear", "dtype": torch.float32}
    expected = Spacingd(**settings)(_case("image", (0.8, 0.8, 2.5), 0.0))["image"]
    grids.clear()
    got = MetaSafeSpacingd(**settings)(_case("image", (0.8, 0.8, 2.5), 0.0))["image"]  # 2.7 MB of grid: no slabs
    assert len(grids) == 1 and torch.equal(got.as_tensor(), expected.as_tensor())


def test_in_place_softmax_is_torchs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, 24, 28, generator=g) * 20
    scores = MetaTensor(logits.clone())
    out = InPlaceSoftmaxd("pred")({"pred": scores})["pred"]
    assert out is scores  # no second copy of the class scores
    assert torch.allclose(out, torch.softmax(logits, dim=0), rtol=0, atol=1e-6)
    assert torch.equal(out.argmax(dim=0), torch.softmax(logits, dim=0).argmax(dim=0))
    half = logits.half()
    out = InPlaceSoftmaxd("pred")({"pred": half})["pred"]  # as Activationsd: computed by torch, not in float16
    assert torch.equal(out, torch.softmax(half, dim=0)) and torch.equal(half, logits.half())
