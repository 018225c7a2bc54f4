"""Resampling, softmax and argmax of clinical-size volumes without whole-volume temporaries or torch's slow paths,
with MONAI's values: the slab resampler behind ``MetaSafeSpacingd`` (and ``Invertd`` of it), ``InPlaceSoftmaxd`` and
``SlabAsDiscreted`` (``channel_argmax``)."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.networks.layers import AffineTransform
from monai.transforms import AsDiscreted, Spacingd
from monai.transforms.spatial import functional
from monai.utils import ensure_tuple

from monai_unet_variants.bundle.transforms import (
    InPlaceSoftmaxd,
    MetaSafeSpacingd,
    SlabAffineTransform,
    SlabAsDiscreted,
    channel_argmax,
)

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


def _scores(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Class scores full of ties (few distinct values), with NaNs and infinities."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, shape, generator=g).to(dtype)
    for value, share in ((float("nan"), 0.03), (float("inf"), 0.02), (-float("inf"), 0.02)):
        x[torch.rand(shape, generator=g) < share] = value
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("slab_bytes", [1, 2**20])
def test_channel_argmax_is_torchs_argmax(dtype, slab_bytes):
    """Every dim, with and without keepdim, a slab of one slice or all at once: torch.argmax's indices (the first of
    equal maxima, a NaN's), in the dtype asked for."""
    x = _scores((3, 17, 12, 9), dtype)
    for dim in range(-4, 4):
        for keepdim in (True, False):
            got = channel_argmax(x, dim, keepdim, dtype=torch.float32, slab_bytes=slab_bytes)
            expected = torch.argmax(x, dim, keepdim)
            assert got.dtype == torch.float32 and torch.equal(got, expected.float()), (dim, keepdim)
    assert torch.equal(channel_argmax(x[:, :1, :1, :1], 0), torch.argmax(x[:, :1, :1, :1], 0, keepdim=True))
    assert torch.equal(channel_argmax(torch.tensor([2.0, 5.0, 5.0]), 0, keepdim=False), torch.tensor(1))


@pytest.mark.parametrize("settings", [
    {"keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 3},  # validation and evaluation
    {"keys": "pred", "argmax": True},  # inference
    {"keys": "pred", "argmax": True, "dtype": torch.float16, "threshold": 1.0},
])
def test_slab_as_discreted_is_monais_without_torchs_argmax(monkeypatch, settings):
    """The same values, dtype and metadata as MONAI's ``AsDiscreted``, without calling ``torch.argmax`` (its slow CPU
    path over a short leading dimension: 19 s for a 512 x 512 x 400 CT's three classes, 0.9 s this way)."""
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))

    def item() -> dict:
        label = MetaTensor(torch.randint(0, 3, (1, 30, 20, 10), generator=torch.Generator().manual_seed(2)).float(),
                           affine=affine)
        return {"pred": MetaTensor(_scores((3, 30, 20, 10), torch.float32), affine=affine), "label": label}

    expected = AsDiscreted(**settings)(item())
    argmax = torch.argmax
    monkeypatch.setattr(torch, "argmax", lambda *a, **k: pytest.fail("torch.argmax called"))
    got = SlabAsDiscreted(**settings)(item())
    monkeypatch.setattr(torch, "argmax", argmax)
    for key in ensure_tuple(settings["keys"]):
        assert type(got[key]) is type(expected[key]) and got[key].dtype == expected[key].dtype
        assert torch.equal(got[key].as_tensor(), expected[key].as_tensor()), key
        assert torch.equal(got[key].affine, expected[key].affine)
        assert got[key].applied_operations == expected[key].applied_operations


def test_a_label_dtype_too_narrow_for_the_classes_is_what_monai_makes():
    """4000 classes into float16 (integers exact to 2048): the indices are made as int64, one-hot from them and
    converted once, as MONAI does (a float16 label first would put an odd index above 2048 in the wrong class)."""
    scores = torch.rand(4000, 8, 4, 1, generator=torch.Generator().manual_seed(4))
    for settings in ({"argmax": True}, {"argmax": True, "to_onehot": 4000}):
        expected = AsDiscreted("pred", dtype=torch.float16, **settings)({"pred": scores.clone()})["pred"]
        got = SlabAsDiscreted("pred", dtype=torch.float16, **settings)({"pred": scores.clone()})["pred"]
        assert got.dtype == torch.float16 and torch.equal(got.as_tensor(), expected.as_tensor()), settings
