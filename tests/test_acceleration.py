"""The GPU-speed machinery, checked on the CPU: boolean options as typed, the padded sliding window, the compile
monitor (with Dynamo's ``eager`` backend: real guards and recompilations, no code generation), the training pipeline
of the bundle (plain tensors on ``data_device``, a cache that random transforms never change), and a compiled bundle
training run through the real command line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import FLAGSHIP, training_crops, training_dataset
from monai.data import MetaTensor, get_track_meta
from monai.inferers import SlidingWindowInferer
from monai.transforms import RandFlip, RandFlipd

from monai_unet_variants import create_network
from monai_unet_variants.acceleration import (
    CHANNELS_LAST_EXTRAS,
    CompileMonitor,
    LayoutInstanceNorm2d,
    LayoutInstanceNorm3d,
    NoMetaCompose,
    PaddedSlidingWindowInferer,
    channels_last_extras,
    compiled_graphs,
    instance_norm_any_layout,
    keep_channels_last,
    to_device,
)
from monai_unet_variants.options import OPTION_RULES, as_bool, as_device, check_options

TINY = ["--roi_size", "[32,32,32]", "--network_def#channels", "[4,8,16,32,64]", "--sw_batch_size", "3",
        "--num_workers", "0", "--batch_size", "2"]


def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_network("attention_unet", spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16),
                          strides=(2, 2)).eval()


# ----------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False), ("TRUE", True),
    ("yes", True), ("No", False), ("1", True), ("0", False), (" false ", False),
])
def test_as_bool_reads_what_was_typed(value, expected):
    assert as_bool(value, "resume") is expected


@pytest.mark.parametrize("value", ["maybe", "flase", "", "2", 2, None, 0.0, "on"])
def test_as_bool_rejects_anything_else(value):
    with pytest.raises(ValueError, match=r"--amp must be true or false \(also 1/0, yes/no"):
        as_bool(value, "amp")


def test_as_device():
    assert as_device("cpu") == torch.device("cpu") and as_device(torch.device("cpu")).type == "cpu"
    with pytest.raises(ValueError, match="--data_device must be a device"):
        as_device("gpu0", "data_device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            as_device("cuda")


@pytest.mark.parametrize("name, value, message", [
    ("epochs", "two", r"--epochs must be a whole number in \[1, inf\), got 'two'"),
    ("epochs", 0, r"--epochs must be a whole number in \[1, inf\), got 0"),
    ("epochs", 2.5, r"--epochs must be a whole number"),
    ("batch_size", True, r"--batch_size must be a whole number"),
    ("num_workers", -1, r"--num_workers must be a whole number in \[0, inf\)"),
    ("val_fraction", 1.5, r"--val_fraction must be a number in \(0, 1\), got 1.5"),
    ("val_fraction", 0, r"--val_fraction must be a number in \(0, 1\), got 0"),
    ("cache_rate", 2, r"--cache_rate must be a number in \[0, 1\], got 2"),
    ("cache_dir_gb", -1, r"--cache_dir_gb must be a number of GB >= 0, or none for no limit, got -1"),
    ("cache_dir_gb", "lots", r"--cache_dir_gb must be a number of GB >= 0, or none for no limit, got 'lots'"),
    ("overlap", 1.0, r"--overlap must be a number in \[0, 1\), got 1.0"),
    ("learning_rate", float("nan"), r"--learning_rate must be a number in \(0, inf\)"),
    ("learning_rate", "1e-3x", r"--learning_rate must be a number"),
    ("seed", 1.5, r"--seed must be a whole number"),
    ("roi_size", 64, r"--roi_size must be a list of 3 whole numbers"),
    ("roi_size", [64, 64], r"--roi_size must be a list of 3 whole numbers of at least 1 such as \[96, 96, 96\], got"),
    ("roi_size", [64, 64, 0], r"--roi_size must be a list of 3 whole numbers"),
    ("roi_size", [62, 64, 201],
     r"--roi_size \[62, 64, 201\]: every size must be a multiple of 4 .* e.g. \[64, 64, 204\]"),
    ("device", "gpu0", r"--device must be a device such as cpu, cuda or cuda:0, got 'gpu0'"),
    ("pixdim", [1, 1, 0], r"--pixdim must be 3 numbers in \(0, inf\), such as \[1.0, 1.0, 1.0\], got \[1, 1, 0\]"),
    ("pixdim", [1, 1], r"--pixdim must be 3 numbers in \(0, inf\), such as \[1.0, 1.0, 1.0\], got \[1, 1\]"),
    ("hu_window", [-87, "199"], r"--hu_window must be 2 numbers, each above the last"),
    ("hu_window", [199, -87], r"--hu_window must be 2 numbers, each above the last, such as \[-87, 199\]"),
    ("hu_window", [50, 50], r"--hu_window must be 2 numbers, each above the last"),
    ("channels", [16], r"--channels must be 2 or more whole numbers of at least 1, such as \[16, 32, 64\], got \[16\]"),
    ("channels", [16, 0, 64], r"--channels must be 2 or more whole numbers of at least 1"),
    ("channels", "16,32", r"--channels must be 2 or more .*, got '16,32'"),
])
def test_check_options_names_the_option_and_what_it_accepts(name, value, message):
    net = tiny_unet()  # 3D, two down-samplings: sizes must be multiples of 4
    with pytest.raises(ValueError, match=message):
        check_options({"epochs": 3, name: value}, net)


@pytest.mark.parametrize("amp, device", [("true", "cpu"), (True, None), ("yes", torch.device("cpu"))])
def test_amp_needs_a_cuda_device(amp, device):
    """MONAI's engines autocast on CUDA only: elsewhere ``--amp true`` would run float32 under a warning."""
    values = {"amp": amp} if device is None else {"device": device, "amp": amp}
    with pytest.raises(ValueError, match="--amp true needs a CUDA --device .* it would run in float32"):
        check_options(values)
    with pytest.raises(ValueError, match="--amp must be true or false"):
        check_options({"device": "cpu", "amp": "maybe"})


def test_check_options_passes_good_values_through():
    net = tiny_unet()
    good = {"epochs": 1, "val_interval": 2, "batch_size": 2, "num_samples": 1, "sw_batch_size": 4, "num_workers": 0,
            "max_samples_per_class": 10, "deep_supr_num": 1, "seed": None, "log_interval": 0, "learning_rate": 1,
            "val_fraction": 0.2, "overlap": 0.0, "val_overlap": 0.625, "cache_rate": 0, "roi_size": [8, 12, 4],
            "pixdim": [0.8, 0.8, 2], "hu_window": (-100, 240.5), "channels": (8, 16, 32), "device": "cpu", "amp": "false",
            "data_device": torch.device("cpu"), "sw_device": "cpu", "cache_dir_gb": 2}
    assert set(good) == set(OPTION_RULES)
    checked = check_options(good, net)
    assert checked["learning_rate"] == 1.0 and checked["roi_size"] == [8, 12, 4] and checked["seed"] is None
    assert checked["pixdim"] == [0.8, 0.8, 2.0] and checked["hu_window"] == [-100.0, 240.5] and checked["amp"] is False
    assert checked["device"] == torch.device("cpu") and check_options({"seed": -3}) == {"seed": -3}
    assert checked["channels"] == [8, 16, 32] and checked["cache_dir_gb"] == 2.0
    assert check_options({"cache_dir_gb": " None"}) == {"cache_dir_gb": None}  # as typed: no limit
    assert check_options({"val_fraction": None}) == {"val_fraction": None}  # the datalist's own split, or 0.2
    with pytest.raises(ValueError, match="--epochs must be a whole number"):
        check_options({"epochs": None})  # only options marked optional take None
    with pytest.raises(KeyError):
        check_options({"epoch": 3})


# --------------------------------------------------------------------------------- padded sliding window
class _Spy(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.net(x)


@pytest.mark.parametrize("sw_batch_size", [3, 5, 7])
def test_padded_sliding_window_equals_the_plain_one(sw_batch_size):
    """Every call gets a full window batch, and the stitched output is the plain inferer's."""
    net = tiny_unet()
    spy = _Spy(net)
    volume = torch.rand(1, 1, 40, 20, 20)  # 4 x 2 x 2 = 16 windows: a remainder for every batch size here
    args = dict(roi_size=(16, 16, 16), sw_batch_size=sw_batch_size, overlap=0.5, mode="gaussian")
    with torch.no_grad():
        plain = SlidingWindowInferer(**args)(volume, net)
        padded = PaddedSlidingWindowInferer(**args)(volume, spy)
    assert set(spy.batches) == {sw_batch_size}
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-6)
    spy.batches.clear()
    with torch.no_grad():
        PaddedSlidingWindowInferer(**args, static_batch=False)(volume, spy)
    assert len(set(spy.batches)) == 2  # without padding the remainder batch is smaller


def test_padded_sliding_window_keeps_sequence_outputs():
    net = tiny_unet()
    two = lambda x: (net(x), net(x)[:, :1])  # noqa: E731
    with torch.no_grad():
        out = PaddedSlidingWindowInferer((16, 16, 16), sw_batch_size=4, overlap=0.25)(torch.rand(1, 1, 40, 16, 16), two)
    assert [o.shape for o in out] == [(1, 3, 40, 16, 16), (1, 1, 40, 16, 16)]


def test_padded_sliding_window_compiles_once_for_volumes_of_any_size():
    """A statically compiled network sees one shape through the padded inferer, whatever the volume; without padding
    each new remainder compiles again."""
    torch._dynamo.reset()
    compiled = torch.compile(tiny_unet(), backend="eager", dynamic=False)
    volumes = [torch.rand(1, 1, 40, 28, 20), torch.rand(1, 1, 48, 36, 16), torch.rand(1, 1, 24, 24, 24)]
    counts = {}
    for static in (True, False):
        inferer = PaddedSlidingWindowInferer((16, 16, 16), sw_batch_size=5, overlap=0.5, static_batch=static)
        graphs = compiled_graphs()
        with torch.no_grad():
            for volume in volumes:
                inferer(volume, compiled)
        counts[static] = compiled_graphs() - graphs
    assert counts[True] <= 1  # the one shape (compiled before, in the first loop)
    assert counts[False] == 2  # 24, 20 and 8 windows: remainders of 4 and 3 windows, two new shapes


# ----------------------------------------------------------------------------------------- compile monitor
def test_compile_monitor_times_the_first_compile_and_counts_recompiles(caplog):
    from ignite.engine import Engine

    torch._dynamo.reset()
    compiled = torch.compile(tiny_unet(), backend="eager", dynamic=False)

    def step(engine, batch):
        with torch.no_grad():
            return compiled(torch.rand(batch, 1, 16, 16, 16))

    engine = Engine(step)
    monitor = CompileMonitor(name="validation")
    monitor.attach(engine)
    with caplog.at_level(logging.INFO):
        engine.run([2, 2, 2, 1, 1], max_epochs=1)
    assert monitor.compile_seconds is not None and monitor.compile_seconds > 0
    assert monitor.graphs == 1 and monitor.recompiles == 1  # batch 1 at the fourth iteration
    text = caplog.text
    assert "torch.compile: the validation network compiled in" in text
    assert "compiled again at iteration 4" in text


def test_compile_monitor_off_attaches_nothing():
    from ignite.engine import Engine, Events

    engine = Engine(lambda e, b: b)
    CompileMonitor(enabled=False).attach(engine)
    assert not engine.has_event_handler(lambda e: None, Events.ITERATION_COMPLETED)
    assert len(engine._event_handlers[Events.ITERATION_COMPLETED]) == 0


# ----------------------------------------------------------------------------------------------- channels-last
def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.clone(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)


def _is_channels_last(x: torch.Tensor) -> bool:
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return x.is_contiguous(memory_format=fmt) and x.stride(1) == 1


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm_any_layout_equals_torch_and_keeps_the_layout(dims, affine):
    torch.manual_seed(0)
    x = (3 * torch.randn(2, 5, *[6] * dims) + 2).requires_grad_()
    w, b = (torch.rand(5) + 0.5).requires_grad_(), torch.randn(5).requires_grad_()
    w, b = (w, b) if affine else (None, None)
    ref = torch.nn.functional.instance_norm(x, weight=w, bias=b, eps=1e-5)
    y = instance_norm_any_layout(_channels_last(x), w, b, eps=1e-5)
    assert _is_channels_last(y) and y.dtype == x.dtype
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(ref, [x] + ([w, b] if affine else []), g)
    grads_any = torch.autograd.grad(y, [x] + ([w, b] if affine else []), g)
    for a, c in zip(grads_any, grads, strict=True):
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)
    half = instance_norm_any_layout(_channels_last(x.detach()).to(torch.bfloat16), w, b)
    assert half.dtype == torch.bfloat16  # statistics in float32, the result in the input's type
    torch.testing.assert_close(half.float(), ref.detach(), atol=0.05, rtol=0.05)


def test_layout_instance_norm_takes_the_parents_path_for_other_inputs():
    norm = LayoutInstanceNorm3d(4, affine=True)
    assert isinstance(norm, torch.nn.InstanceNorm3d)
    x = torch.randn(2, 4, 5, 5, 5)
    torch.testing.assert_close(norm(x), torch.nn.functional.instance_norm(x, weight=norm.weight, bias=norm.bias))
    assert norm(x).is_contiguous() and norm(x[0]).shape == (4, 5, 5, 5)  # channels-first, no batch dimension
    tracked = LayoutInstanceNorm2d(4, track_running_stats=True)  # running statistics: the parent's path
    tracked(_channels_last(torch.randn(2, 4, 6, 6) + 3))
    assert tracked.running_mean.min() > 0.1  # updated (momentum 0.1 of a mean near 3)


@pytest.mark.parametrize("name", ["unet", "attention_unet", "resunet"])
@pytest.mark.parametrize("dims", [2, 3])
def test_keep_channels_last_changes_layouts_not_results(name, dims):
    torch.manual_seed(0)
    net = create_network(name, spatial_dims=dims, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2),
                         norm=("instance", {"affine": True})).eval()
    x = torch.randn(2, 1, *[16] * dims)
    with torch.no_grad():
        ref = net(x)
    keys = list(net.state_dict())
    assert channels_last_extras(net) == {"conv_inputs": False, "norms": False}
    fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
    net = keep_channels_last(keep_channels_last(net.to(memory_format=fmt)))  # twice: one hook per convolution
    seen: list[bool] = []
    convs = [m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    for conv in convs:
        assert len(conv._forward_pre_hooks) == 1
        conv.register_forward_pre_hook(lambda m, args: seen.append(_is_channels_last(args[0])))
    with torch.no_grad():
        out = net(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert len(seen) >= len(convs) and all(seen)  # every convolution got a channels-last input
    assert list(net.state_dict()) == keys and channels_last_extras(net) == {"conv_inputs": True, "norms": True}
    norm_type = LayoutInstanceNorm3d if dims == 3 else LayoutInstanceNorm2d
    assert any(type(m) is norm_type for m in net.modules())
    assert not any(type(m) in (torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d) for m in net.modules())


@pytest.mark.parametrize("norms", [True, False])
def test_keep_channels_last_reaches_the_compiled_graph(norms):
    """What Inductor is given (the forward graph of AOTAutograd, captured on the CPU): every convolution's input is
    channels-last; with the layout-keeping norms no tensor is copied back to channels-first on the way."""
    from torch._dynamo.backends.common import aot_autograd

    graphs = []
    backend = aot_autograd(fw_compiler=lambda gm, example_inputs: graphs.append(gm) or gm)
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = create_network("attention_unet", spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16),
                         strides=(2, 2), norm=("instance", {"affine": True})).eval()
    net = keep_channels_last(net.to(memory_format=torch.channels_last_3d), norms=norms)
    with torch.no_grad():
        torch.compile(net, backend=backend)(torch.randn(2, 1, 16, 16, 16))
    nodes = list(graphs[-1].graph.nodes)
    convs = [n for n in nodes if n.target is torch.ops.aten.convolution.default]
    assert convs and all(_is_channels_last(n.args[0].meta["val"]) for n in convs)
    to_first = [n for n in nodes if n.target is torch.ops.aten.clone.default
                and n.kwargs.get("memory_format") == torch.contiguous_format]
    assert (not to_first) if norms else to_first  # InstanceNorm3d's own path copies to channels-first


def test_to_device_applies_the_channels_last_extras_on_a_gpu_only(monkeypatch):
    monkeypatch.setitem(CHANNELS_LAST_EXTRAS, "conv_inputs", True)
    monkeypatch.setitem(CHANNELS_LAST_EXTRAS, "norms", True)

    def net() -> torch.nn.Module:
        return create_network("unet", spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,),
                              norm="instance")

    on_cpu = to_device(net(), "cpu", channels_last=True)  # a CPU: ignored (see to_device)
    assert any(type(m) is torch.nn.InstanceNorm3d for m in on_cpu.modules())
    assert not any(type(m) is LayoutInstanceNorm3d for m in on_cpu.modules())
    if torch.cuda.is_available():
        assert any(type(m) is LayoutInstanceNorm3d for m in to_device(net(), "cuda", channels_last=True).modules())


# ------------------------------------------------------------------------------------ training pipeline
def test_no_meta_compose_returns_plain_tensors_and_restores_tracking():
    compose = NoMetaCompose([RandFlip(prob=1.0, spatial_axis=0)])
    out = compose(MetaTensor(torch.arange(8.0).reshape(1, 2, 2, 2)))
    assert type(out) is torch.Tensor and get_track_meta()

    def boom(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        NoMetaCompose([boom])(torch.zeros(1))
    assert get_track_meta()
    d = NoMetaCompose([RandFlipd("image", prob=1.0)])({"image": torch.zeros(1, 2, 2, 2)})
    assert type(d["image"]) is torch.Tensor


def test_training_pipeline_caches_plain_tensors_it_never_changes(sample):
    """The cached volumes are plain tensors on ``data_device`` with precomputed crop centres; the random part
    (crops, flips, rotations, intensity) runs without metadata and, with ``copy_cache`` off, leaves the cache as it
    was: the crops of a second pass over the same random state are the first pass's."""
    dataset = training_dataset(sample, "cpu")
    cached = dataset._cache
    assert all(type(c["image"]) is torch.Tensor and c["image"].device.type == "cpu" for c in cached)
    assert all(len(c["label_cls_indices"]) == 3 for c in cached)
    before = [c["image"].clone() for c in cached]
    first = training_crops(dataset, 12, seed=3)
    second = training_crops(dataset, 12, seed=3)
    for (img1, lbl1), (img2, lbl2) in zip(first, second, strict=True):
        assert type(img1) is torch.Tensor and img1.shape == (1, 32, 32, 32) and img1.dtype == torch.float32
        assert lbl1.shape == (1, 32, 32, 32) and lbl1.dtype == torch.float32
        assert torch.equal(img1, img2) and torch.equal(lbl1, lbl2)
    for c, b in zip(cached, before, strict=True):
        assert torch.equal(c["image"], b)
    # RandCropByLabelClassesd ratios 1:1:1 centre two thirds of the crops on pancreas or tumour voxels
    with_foreground = sum(bool((lbl > 0).any()) for _, lbl in first)
    assert with_foreground >= len(first) // 2


def test_crop_centres_are_capped(sample):
    dataset = training_dataset(sample, "cpu", max_samples_per_class=50)
    assert max(len(ix) for c in dataset._cache for ix in c["label_cls_indices"]) <= 50
    assert training_crops(dataset, 2)[0][0].shape == (1, 32, 32, 32)


@pytest.mark.parametrize("roi", [[32, 16, 16], [16, 16, 32]])
def test_every_training_patch_has_the_patch_size(sample, roi):
    """A patch whose first two sizes differ keeps its shape (the in-plane quarter turns are off for it: a batch of
    turned and unturned patches would not stack); an in-plane square patch is still turned."""
    dataset = training_dataset(sample, "cpu", roi_size=roi)
    crops = training_crops(dataset, 16, seed=1)
    assert {tuple(img.shape) for img, _ in crops} == {(1, *roi)}
    assert {tuple(lbl.shape) for _, lbl in crops} == {(1, *roi)}
    turns = [t for t in dataset.transform.transforms[-1].transforms if type(t).__name__ == "RandRotate90d"]
    assert len(turns) == 1 and turns[0].prob == (0.5 if roi[0] == roi[1] else 0.0)


# --------------------------------------------------------------------------------- the real command line
def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-5000:])
    return proc


@pytest.mark.slow
def test_compiled_training_compiles_once_and_saves_plain_weights(tmp_path, sample):
    """``--compile true`` (Dynamo's eager backend on this CPU): one compilation per graph, logged with its time,
    none while training and validating three epochs (the last window batch is padded); ``model.pt`` has the plain
    network's keys and loads into an eager network."""
    root = tmp_path / "bundle"
    shutil.copytree(FLAGSHIP, root, ignore=shutil.ignore_patterns("*.pt", "eval"))
    proc = _run("run", "--config_file", str(root / "configs" / "train.json"), "--dataset_dir", str(sample),
                "--epochs", "3", "--val_interval", "1", *TINY, "--compile", "True", "--compile_kwargs#backend", "eager")
    log = proc.stdout + proc.stderr
    assert log.count("torch.compile: the training network compiled in") == 1
    assert log.count("torch.compile: the validation network compiled in") == 1
    assert "compiled again" not in log
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert not [k for k in state if "_orig_mod" in k]
    net = create_network("attention_unet", spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16, 32, 64),
                         norm=("instance", {"affine": True}))
    net.load_state_dict(state, strict=True)


def test_compile_and_amp_follow_the_device():
    """On a CPU the bundles run eager and in float32 unless told otherwise; on a GPU both default to on."""
    for name in ("train.json", "inference.json"):
        config = json.loads((FLAGSHIP / "configs" / name).read_text())
        assert config["compile"] == config["amp"] == "$torch.device(@device).type == 'cuda'"
        assert config["compile_kwargs"] == {"mode": "default", "dynamic": False}
