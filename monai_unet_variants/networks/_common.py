"""What every variant shares: the default widths, the common argument docs, and presets."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

DEFAULT_CHANNELS = (16, 32, 64, 128, 256)

#: The reference configuration of LeeJunHyun/Image_Segmentation, shared by the 2D presets.
REFERENCE_2D: dict[str, Any] = dict(
    spatial_dims=2,
    in_channels=3,
    out_channels=1,
    channels=(64, 128, 256, 512, 1024),
    strides=(2, 2, 2, 2),
    act="relu",
    norm="batch",
    bias=True,
)

COMMON_ARGS_DOC = """
        spatial_dims: 2 or 3. Defaults to 3.
        in_channels: input channels. Defaults to 1.
        out_channels: output channels (classes). Defaults to 2.
        channels: width of every level, top first; depth is ``len(channels)``. Defaults to ``(16, 32, 64, 128, 256)``.
        strides: down-sampling factor between levels, ``len(channels) - 1`` values. Defaults to ``None`` (all 2).
        kernel_size: kernel size of the blocks. Defaults to 3.
        up_kernel_size: kernel of the up-sampling convolution; ``None`` is the stride for ``"deconv"`` and 3
            for ``"resize_conv"``. Defaults to ``None``.
        act: activation, a MONAI name or ``(name, args)``. Defaults to ``"relu"``.
        norm: normalisation, a MONAI name or ``(name, args)``. Defaults to ``"batch"``.
        dropout: dropout probability in the blocks. Defaults to ``None``.
        bias: convolution bias. Defaults to ``True``."""

OPTION_ARGS_DOC = """
        upsample: ``"deconv"``, ``"nontrainable"`` (interpolation) or ``"resize_conv"`` (interpolation + conv).
        deep_supervision: stack lower-level outputs in training mode into
            ``(B, 1 + deep_supr_num, out_channels, *spatial)``; eval mode returns the plain tensor. Defaults to ``False``.
        deep_supr_num: number of deep-supervision outputs (``1 .. len(channels) - 2``). Defaults to 1.
        checkpointing: keep only level outputs for the backward pass, recompute the rest (training). Defaults to ``False``.
        kwargs: further ``ComposableUNet`` options (``attention``, ``skip``, ``head``, ``downsample``, ...),
            e.g. ``attention="grid"`` adds attention gates to any network.

    Input-size rule: every spatial size must be divisible by ``prod(strides)`` (16 for the defaults); other
    sizes raise a ``ValueError`` naming the padded size to use."""


def short_citation(reference: str) -> str:
    """``"Surname et al. YEAR, URL"`` from a full reference of a class's ``PAPERS`` (written ``"Surname, I., ...
    Title. Venue YEAR. URL"``): what tables and bundle docs print, so that a citation is written once, on the class.

    Examples::

        >>> short_citation("Oktay, O. et al. Attention U-Net. MIDL 2018. https://arxiv.org/abs/1804.03999")
        'Oktay et al. 2018, https://arxiv.org/abs/1804.03999'
        >>> short_citation("Ronneberger, O., Fischer, P., Brox, T. U-Net. MICCAI 2015. https://arxiv.org/abs/1505.04597")
        'Ronneberger et al. 2015, https://arxiv.org/abs/1505.04597'
    """
    url = re.search(r"https?://\S+$", reference)
    year = re.findall(r"\b(?:19|20)\d\d\b", reference[: url.start()] if url else reference)
    if not url or not year or "," not in reference:
        raise ValueError(f"a reference reads 'Surname, I. ... Title. Venue YEAR. URL' (got {reference!r})")
    return f"{reference.split(',')[0]} et al. {year[-1]}, {url.group(0)}"


def _papers_doc(papers: Sequence[str]) -> str:
    """The docstring lines citing ``papers`` (a class's ``PAPERS``), wrapped at 116 columns under 4 spaces."""
    label = "Paper: " if len(papers) == 1 else "Papers: "
    return "\n".join(textwrap.wrap(label + "; ".join(papers) + ".", width=116, subsequent_indent="    ",
                                   break_long_words=False, break_on_hyphens=False))


def fill_doc(cls: type) -> type:
    """Insert the shared argument descriptions and the class's papers (``PAPERS``) into a variant's docstring."""
    if cls.__doc__:
        cls.__doc__ = (cls.__doc__.replace("{common_args}", COMMON_ARGS_DOC.strip("\n"))
                       .replace("{option_args}", OPTION_ARGS_DOC.strip("\n"))
                       .replace("{papers}", _papers_doc(getattr(cls, "PAPERS", ()))))
    return cls


_Net = TypeVar("_Net", bound="PresetMixin")


class PresetMixin:
    """``Variant.from_preset(name, **overrides)`` builds a named configuration."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_preset(cls: type[_Net], preset: str, **overrides: Any) -> _Net:
        if preset not in cls.PRESETS:
            raise KeyError(f"{cls.__name__} has no preset {preset!r}; available: {sorted(cls.PRESETS)}.")
        kwargs = dict(cls.PRESETS[preset])
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)
