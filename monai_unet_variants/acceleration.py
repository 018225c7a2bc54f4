"""What makes the bundles fast on a GPU: a compiled network that compiles once, and random transforms on tensors
that already live on the device.

- ``PaddedSlidingWindowInferer``: MONAI's ``SlidingWindowInferer`` whose last window batch is padded to
  ``sw_batch_size``, so that a compiled network sees one input shape per volume and never recompiles for the
  remainder (a network in eval mode computes every window on its own: the padding changes no output).
- ``CompileMonitor``: an Ignite handler that logs how long ``torch.compile`` took on the first iteration and warns
  whenever the network is compiled again later (input shapes or modes changed), counted with Dynamo's own counters.
- ``NoMetaCompose``: a ``Compose`` whose transforms run with MONAI's metadata tracking off, for the random part of a
  training pipeline whose cached inputs are plain tensors (MONAI's fast-training recipe: a ``MetaTensor`` costs a
  copy of its metadata and an entry in its operation history for every transform, which is most of a GPU crop's time).
- ``keep_channels_last``: a network whose convolutions take channels-last inputs and whose instance normalisations
  keep that layout, in eager mode and under ``torch.compile`` (to be measured on a GPU: ``CHANNELS_LAST_EXTRAS``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.data import get_track_meta, set_track_meta
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = [
    "CHANNELS_LAST_EXTRAS",
    "CompileMonitor",
    "LayoutInstanceNorm2d",
    "LayoutInstanceNorm3d",
    "NoMetaCompose",
    "PaddedSlidingWindowInferer",
    "channels_last_extras",
    "compiled_graphs",
    "instance_norm_any_layout",
    "keep_channels_last",
    "say_padding",
    "to_device",
]

logger = logging.getLogger(__name__)


def compiled_graphs() -> int:
    """Graphs that ``torch.compile`` (Dynamo) has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


#: What ``to_device(channels_last=True)`` does on a GPU besides converting the weights (see ``keep_channels_last``).
#: Both off until a GPU run measures them (the benchmark's options and trials ``cl_inputs`` and ``cl_norm``).
CHANNELS_LAST_EXTRAS: dict[str, bool] = {"conv_inputs": False, "norms": False}


def to_device(network: torch.nn.Module, device: Any, channels_last: bool = False) -> torch.nn.Module:
    """``network`` moved to ``device``; with ``channels_last`` on a CUDA device its weights in channels-last memory
    format (``channels_last_3d`` for a 3D network), so that cuDNN runs its NDHWC kernels (a one-channel input is
    channels-last already), and what ``CHANNELS_LAST_EXTRAS`` turns on (``keep_channels_last``). On a CPU
    ``channels_last`` is ignored: oneDNN's channels-last weight gradient of strided 1x1 convolutions corrupts memory
    (see ``networks.blocks.layers.prefers_channels_last``).

    Examples::

        >>> to_device(torch.nn.Conv3d(1, 2, 3), "cpu", channels_last=True).weight.is_contiguous()
        True
    """
    network = network.to(device)
    if channels_last and torch.device(device).type == "cuda":
        dims = getattr(network, "spatial_dims", 3)
        network = network.to(memory_format=torch.channels_last_3d if dims == 3 else torch.channels_last)
        if any(CHANNELS_LAST_EXTRAS.values()):
            keep_channels_last(network, **CHANNELS_LAST_EXTRAS)
    return network


def _channels_last_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last_3d if x.dim() == 5 else torch.channels_last


def instance_norm_any_layout(
    x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """Instance normalisation (statistics of each sample and channel over its spatial dimensions, biased variance)
    computed with reductions and element-wise operations, so that the result keeps ``x``'s memory layout.

    ``torch.nn.functional.instance_norm`` views ``x`` as one batch-norm sample of ``N * C`` channels, which needs
    ``x.contiguous()``: in a channels-last network that is a copy to channels-first before every normalisation and
    one back before the next convolution (in eager mode and in the graphs of ``torch.compile`` alike). Statistics are
    computed in float32 whatever ``x``'s type; the result has ``x``'s type.

    Examples::

        >>> x = torch.randn(2, 4, 6, 6, 6).contiguous(memory_format=torch.channels_last_3d)
        >>> y = instance_norm_any_layout(x)
        >>> y.is_contiguous(memory_format=torch.channels_last_3d)
        True
        >>> torch.allclose(y, nn.functional.instance_norm(x), atol=1e-5)
        True
    """
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=list(range(2, x.dim())), keepdim=True, correction=0)
    y = (xf - mean) * torch.rsqrt(var + eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    if weight is not None:
        y = y * weight.float().view(shape)
    if bias is not None:
        y = y + bias.float().view(shape)
    return y.to(x.dtype)


class _LayoutInstanceNorm:
    """``forward`` of ``LayoutInstanceNorm2d``/``3d``: a channels-last input is normalised in its own layout
    (``instance_norm_any_layout``); any other input (and running statistics, an input without a batch dimension) as
    in the parent class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous() or self.track_running_stats or x.dim() != self._get_no_batch_dim() + 1:
            return super().forward(x)  # type: ignore[misc]
        return instance_norm_any_layout(x, self.weight, self.bias, self.eps)


class LayoutInstanceNorm2d(_LayoutInstanceNorm, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` that keeps a channels-last input channels-last (same parameters and state-dict keys)."""


class LayoutInstanceNorm3d(_LayoutInstanceNorm, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that keeps a channels-last input channels-last (same parameters and state-dict keys)."""


def _is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` has channels-last strides that convolutions recognise as such: ``is_contiguous`` in that format
    is also true of a one-channel channels-first tensor, whose channel stride is not 1 (cuDNN then picks NCDHW)."""
    return x.is_contiguous(memory_format=_channels_last_format(x)) and x.stride(1) == 1


def _channels_last_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: the convolution's input copied to channels-last layout unless it is already."""
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() in (4, 5) and not _is_channels_last(x):
        return (x.clone(memory_format=_channels_last_format(x)), *args[1:])
    return None


def _takes_channels_last_input(module: nn.Module) -> bool:
    """Whether ``keep_channels_last`` gave ``module`` its input pre-hook."""
    return _channels_last_input in module._forward_pre_hooks.values()


def keep_channels_last(network: nn.Module, conv_inputs: bool = True, norms: bool = True) -> nn.Module:
    """Make ``network`` run channels-last from end to end, in place: every convolution (transposed ones included)
    takes its input in channels-last layout (``conv_inputs``: a forward pre-hook), and instance normalisations keep
    that layout (``norms``: ``nn.InstanceNorm2d``/``3d`` become ``LayoutInstanceNorm2d``/``3d``). Parameters and
    state-dict keys are unchanged, results too but for rounding; call it on the network that runs, not on one to
    export (TorchScript and ONNX take the plain network).

    Why: channels-last weights alone do not carry through ``torch.compile`` in 3D. On an H200 (2026-11-27, README
    run 4) cuDNN transposed each convolution's input and filter to NDHWC and its output back (26-29 % of the
    flagship's kernel time, channels-last weights or not). In torch's Inductor the layout optimization is for 2D
    convolutions only; a 3D convolution's input keeps the layout it has in the traced graph in a training graph, but
    is left for Inductor to lay out (channels-first) in an inference graph while that optimization is on; and
    ``F.instance_norm`` copies its input to channels-first. With both parts on, every convolution's input in the
    graph is channels-last and nothing is copied back to channels-first; an inference graph also needs
    ``torch._inductor.config.layout_optimization = False`` (``torch.compile(options={"layout_optimization": False})``).
    Seen on the CPU with Inductor's code for an Attention U-Net (widths 4-16, 2 x 1 x 16^3) under bf16 autocast
    (oneDNN picks layouts by the same rule as cuDNN; ``benchmarks/inductor_layouts.py``): inference, channels-last
    outputs of 0 of 24 convolutions with channels-last weights and both parts, 21 of 24 with the layout optimization
    off too; training, 13 of 22 fused kernels copy with channels-last weights alone, 1 with both parts. Whether it is
    faster on a GPU is for the benchmark's options ``cl_inputs``, ``cl_norm`` and ``no_layout_opt`` to show; until
    then ``CHANNELS_LAST_EXTRAS`` is off.

    Examples::

        >>> net = keep_channels_last(nn.Sequential(nn.Conv3d(1, 4, 3), nn.InstanceNorm3d(4, affine=True)))
        >>> type(net[1]).__name__, net(torch.randn(2, 1, 8, 8, 8)).is_contiguous(memory_format=torch.channels_last_3d)
        ('LayoutInstanceNorm3d', True)
    """
    swap = {nn.InstanceNorm2d: LayoutInstanceNorm2d, nn.InstanceNorm3d: LayoutInstanceNorm3d}
    for module in network.modules():
        if conv_inputs and isinstance(module, nn.modules.conv._ConvNd) and module.weight.dim() in (4, 5):
            if not _takes_channels_last_input(module):
                module.register_forward_pre_hook(_channels_last_input)
        if norms and type(module) in swap:
            module.__class__ = swap[type(module)]
    return network


def channels_last_extras(network: nn.Module) -> dict[str, bool]:
    """Which parts of ``keep_channels_last`` ``network`` has: ``{"conv_inputs": ..., "norms": ...}``.

    Examples::

        >>> channels_last_extras(keep_channels_last(nn.Sequential(nn.Conv2d(1, 2, 3)), norms=False))
        {'conv_inputs': True, 'norms': False}
    """
    modules = list(network.modules())
    return {
        "conv_inputs": any(_takes_channels_last_input(m) for m in modules),
        "norms": any(isinstance(m, _LayoutInstanceNorm) for m in modules),
    }


def _first(out: Any, n: int) -> Any:
    """The first ``n`` items along the batch dimension of a network's output (a tensor, a sequence or a dict of them)."""
    if isinstance(out, torch.Tensor):
        return out[:n]
    if isinstance(out, Mapping):
        return {k: _first(v, n) for k, v in out.items()}
    if isinstance(out, Sequence) and not isinstance(out, str):
        return type(out)(_first(v, n) for v in out)
    return out


class _FixedBatch:
    """``network`` called on batches padded with zeros to ``size`` items; only the real items' outputs are returned."""

    def __init__(self, network: Callable[..., Any], size: int) -> None:
        self.network = network
        self.size = size

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.new_zeros((self.size - x.shape[0], *x.shape[1:]))])

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n = x.shape[0]
        if n >= self.size:
            return self.network(x, *args, **kwargs)
        condition = kwargs.get("condition")
        if isinstance(condition, torch.Tensor) and condition.shape[0] == n:
            kwargs["condition"] = self._pad(condition)
        return _first(self.network(self._pad(x), *args, **kwargs), n)


def say_padding(image: Any, patch: Sequence[int], what: str = "patch", said: set | None = None) -> bool:
    """Log a warning when ``image`` (channel first, after preprocessing) is smaller than ``patch`` along an axis: it is
    padded to the patch there, and a case smaller than one patch (a partial scan, a tight crop) is worth knowing
    about. Names the image's file; a file already in ``said`` is not named again (each validation would repeat it).
    Returns whether it pads."""
    shape = [int(n) for n in image.shape[-len(patch):]]
    patch = [int(p) if int(p) > 0 else n for p, n in zip(patch, shape, strict=True)]
    if all(n >= p for n, p in zip(shape, patch, strict=True)):
        return False
    source = getattr(image, "meta", {}).get("filename_or_obj", "a volume")
    source = source[0] if isinstance(source, (list, tuple)) and source else source
    if said is not None:
        if str(source) in said:
            return True
        said.add(str(source))
    padded = [max(n, p) for n, p in zip(shape, patch, strict=True)]
    logging.getLogger("monai_unet_variants.bundle").warning(
        f"{source}: {' x '.join(map(str, shape))} voxels after preprocessing is smaller than one "
        f"{' x '.join(map(str, patch))} {what}: padded to {' x '.join(map(str, padded))}")
    return True


class PaddedSlidingWindowInferer(SlidingWindowInferer):
    """``SlidingWindowInferer`` that pads the last, incomplete window batch to ``sw_batch_size`` windows.

    A volume of ``N`` windows ends with a batch of ``N mod sw_batch_size`` windows; a network compiled with static
    shapes would compile a second time for it (and again for every other remainder), one compiled with dynamic
    shapes runs slower kernels throughout. Padding keeps one shape. The padded windows are zeros and their outputs
    are dropped; in eval mode every window is computed on its own (instance or batch norm with running statistics),
    so the real windows' outputs are those of the unpadded call. A volume smaller than the window along an axis is
    padded by MONAI's inferer; it is logged once per file (``say_padding``).

    Args:
        roi_size: the window, as for ``SlidingWindowInferer``.
        sw_batch_size: windows per network call. Defaults to 1.
        static_batch: pad the last batch (``True``) or behave exactly as ``SlidingWindowInferer`` (``False``, e.g.
            for an eager network, which gains nothing from the padding). Defaults to ``True``.
        kwargs: every other argument of ``SlidingWindowInferer`` (``overlap``, ``mode``, ``sw_device``, ``device``,
            ``progress``, ``buffer_steps``, ...).

    Examples::

        >>> net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
        >>> inferer = PaddedSlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=4, overlap=0.25)
        >>> with torch.no_grad():
        ...     inferer(torch.randn(1, 1, 40, 24, 16), net).shape
        torch.Size([1, 2, 40, 24, 16])
    """

    def __init__(self, roi_size: Sequence[int] | int, sw_batch_size: int = 1, static_batch: bool = True, **kwargs: Any) -> None:
        super().__init__(roi_size=roi_size, sw_batch_size=sw_batch_size, **kwargs)
        self.static_batch = bool(static_batch)
        self._said: set[str] = set()  # volumes whose padding was logged

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        say_padding(inputs, ensure_tuple_rep(self.roi_size, inputs.ndim - 2), "sliding window", self._said)
        if self.static_batch and self.sw_batch_size > 1:
            network = _FixedBatch(network, self.sw_batch_size)
        return super().__call__(inputs, network, *args, **kwargs)


class CompileMonitor:
    """Log the compile time of a ``torch.compile``-d network on an engine and warn about every later recompilation.

    Attach it to the engine that runs the compiled network (``SupervisedTrainer(compile=True)`` or
    ``SupervisedEvaluator(compile=True)``): the iteration that compiles (the first) is timed and logged as
    ``torch.compile: the training network compiled in 31.2 s (2 graphs, first iteration)``; a later iteration
    that compiles new graphs (a new input shape, a changed mode) logs a warning and counts in ``recompiles``.
    Graphs are counted with Dynamo's ``counters["stats"]["unique_graphs"]``, process-wide: the evaluator's own
    first compilation, run between training epochs, is not a recompilation of the training network.

    Args:
        enabled: attach nothing when ``False`` (a config passes its ``compile`` flag). Defaults to ``True``.
        name: what the log lines call the network (``"training"``, ``"validation"``, ``"inference"``).
            Defaults to ``"network"``.

    Attributes:
        compile_seconds: duration of the compiling iteration (``None`` before it).
        graphs: graphs compiled by that iteration.
        recompiles: graphs compiled by any later iteration (0 when the shapes stay static).
    """

    def __init__(self, enabled: bool = True, name: str = "network") -> None:
        self.enabled = bool(enabled)
        self.name = name
        self.compile_seconds: float | None = None
        self.graphs = 0
        self.recompiles = 0
        self._t0 = 0.0
        self._g0 = 0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        if not self.enabled:
            return
        engine.add_event_handler(Events.ITERATION_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._completed)

    def _started(self, engine: Any) -> None:
        self._t0 = time.perf_counter()
        self._g0 = compiled_graphs()

    def _completed(self, engine: Any) -> None:
        new = compiled_graphs() - self._g0
        if new <= 0:
            return
        if self.compile_seconds is None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.compile_seconds = time.perf_counter() - self._t0
            self.graphs = new
            engine.logger.info(
                f"torch.compile: the {self.name} network compiled in {self.compile_seconds:.1f} s "
                f"({new} graph{'s' if new > 1 else ''}, first iteration)"
            )
            return
        self.recompiles += new
        engine.logger.warning(
            f"torch.compile: the {self.name} network was compiled again at iteration {engine.state.iteration} "
            f"({new} new graph{'s' if new > 1 else ''}, {self.recompiles} since the first): its input shape or "
            "mode changed; each recompilation costs about as long as the first (keep roi_size, batch_size and "
            "sw_batch_size fixed, or run with --compile false)"
        )


class NoMetaCompose(Compose):
    """``Compose`` whose transforms run with MONAI's metadata tracking off (``monai.data.set_track_meta(False)``),
    restored afterwards.

    For the random part of a training pipeline whose cached inputs are plain tensors: without it every MONAI
    transform wraps its output in a ``MetaTensor`` again and records itself in the operation history, which costs
    more than a crop or a flip on a GPU (measured on the CPU of this project, 96^3 crops of the synthetic sample:
    2.1 ms per case with tracking, 1.1 ms without). Training needs no metadata after caching; inverting a random
    transform is then impossible, which training never does. The switch is process-wide for the duration of the
    call, as MONAI offers it; a ``ThreadDataLoader`` runs it in its thread while the main thread trains, and the
    training step does not depend on it.

    Takes ``Compose``'s arguments.
    """

    def __call__(self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy: bool | None = None) -> Any:
        previous = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        finally:
            set_track_meta(previous)
