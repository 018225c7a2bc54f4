"""The benchmark command at tiny sizes: every section runs and writes its files (no timing asserts)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--in_process", "--out", str(out),
           "--networks", "unet,attention_unet,attention_r2unet,unetplusplus", "--options", "channels_last,no_narrow",
           "--option_networks", "unet", "--sample_dir", str(tmp_path / "sample")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    rows = [r for r in result["results"] if r["kind"] == "network"]
    # our four networks, the two variants (gates at skip resolution, checkpointing), MONAI's four, two trials
    assert len(rows) == 2 * 12
    assert not [r for r in result["results"] if "error" in r]
    by = {(r["network"], r["spatial_dims"], "+".join(r.get("options", {}))): r for r in rows}
    for dims in (2, 3):
        unet = by[("unet", dims, "")]
        assert unet["params"] > 0 and unet["gflop_fwd_bwd"] > unet["gflop_fwd"] > 0
        assert unet["fwd_ms"] > 0 and unet["fwd_bwd_ms"] > 0
        assert by[("monai_unet", dims, "")]["time_vs_unet"] == pytest.approx(1.0)
        nested, monai_nested = by[("unetplusplus", dims, "")], by[("monai_basicunetplusplus", dims, "")]
        assert nested["time_vs_basicunetplusplus"] == pytest.approx(nested["fwd_bwd_ms"] / monai_nested["fwd_bwd_ms"])
        assert f"{dims}D UNet++ against MONAI's BasicUNetPlusPlus at the same widths: params {nested['params']:,}" \
            in proc.stdout
        assert by[("attention_r2unet+ckpt", dims, "")]["params"] == by[("attention_r2unet", dims, "")]["params"]
        assert 0 < unet["efficiency"]
        assert by[("unet", dims, "channels_last")]["options"] == {"channels_last": True}
        # plain layout for narrow convolutions: the same network, the same work
        assert by[("unet", dims, "no_narrow")]["gflop_fwd_bwd"] == pytest.approx(unet["gflop_fwd_bwd"])
    sw = next(r for r in result["results"] if r["kind"] == "sliding_window")
    assert sw["volume"] == [48, 48, 32] and sw["mvoxels_per_s"] > 0
    bundle = next(r for r in result["results"] if r["kind"] == "bundle")
    assert bundle["iterations"] > 0 and 0 <= bundle["data_wait_share"] < 1
    gates = [r for r in result["results"] if r["kind"] == "gates"]
    assert [g["spatial_dims"] for g in gates] == [2, 3]
    for g in gates:  # the same gates at two resolutions: both do work, and the ratios are theirs
        assert g["grid_gflop"] > 0 and g["same_gflop"] > 0 and g["grid_ms"] > 0 and g["same_ms"] > 0
        assert g["flop_ratio"] == pytest.approx(g["grid_gflop"] / g["same_gflop"])
        # like for like: the paper's gate does its additive attention on 1/4 (2D) or 1/8 (3D) of the voxels
        assert g["grid_at_skip_gflop"] > g["grid_gflop"] and g["like_flop_ratio"] < 1
    assert "attention gates alone" in proc.stdout and "activation checkpointing" in proc.stdout
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and {"label", "params", "fwd_bwd_ms", "efficiency"} <= set(table[0])


def _bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import run
    finally:
        sys.path.pop(0)
    return run


def test_benchmark_trials_and_waves():
    run = _bench()
    # --smoke sets tiny sizes, except where the command line says otherwise
    smoke = run.parse_args(["--smoke", "--sw_volume", "", "--bundle_epochs=0", "--repeats", "3"])
    assert (smoke.sw_volume, smoke.bundle_epochs, smoke.repeats, smoke.size3d, smoke.warmup) == ("", 0, 3, 32, 0)
    assert {k: getattr(run.parse_args(["--smoke"]), k) for k in run.SMOKE} == run.SMOKE
    assert run.parse_args([]).sw_volume == "512,512,128"
    assert run.parse_options("compile,compile+channels_last:unet/denseunet") == [
        ({"compile": True}, None), ({"compile": True, "channels_last": True}, ["unet", "denseunet"])]
    with pytest.raises(SystemExit, match="unknown option 'fast'"):
        run.parse_options("fast")
    assert run.parse_options("compile+force_layout") == [({"compile": True, "force_layout": True}, None)]
    with pytest.raises(ValueError, match="one compile option at a time"):
        run.parse_options("compile+compile_cudagraphs")
    assert run.parse_trial("compile=false,sw_batch_size=8,compile_kwargs#mode=reduce-overhead") == {
        "compile": False, "sw_batch_size": 8, "compile_kwargs#mode": "reduce-overhead"}
    with pytest.raises(SystemExit, match="key=value"):
        run.parse_trial("compile")
    # heavy cases (compiling, bundle runs) spread over the waves; every case once; no wave over the limit
    heavy = [True, False, False, True, True, False, False, False, False, True]
    waves = run.waves(len(heavy), 4, heavy)
    assert sorted(i for w in waves for i in w) == list(range(10)) and max(len(w) for w in waves) <= 4
    assert sorted(sum(heavy[i] for i in w) for w in waves) == [1, 1, 2]
    case = {"kind": "network", "device": "cuda", "options": {"compile_cudagraphs": True}}
    assert run.heavy(case) and not run.heavy({**case, "options": {"channels_last": True}})
    sw = {"kind": "sliding_window", "device": "cuda", "overrides": {}}
    assert run.heavy(sw) and not run.heavy({**sw, "overrides": {"compile": False}})

    # --monai_networks: which of MONAI's networks are measured beside ours, in the option trials too
    def measured(*argv: str) -> set[tuple[str, str]]:
        cases = run.plan(run.parse_args(["--networks", "unet", *argv]))
        return {(c["network"], "+".join(c.get("options", {}))) for c in cases if c["kind"] == "network"}

    assert measured("--monai_networks", "monai_basicunet", "--options", "compile", "--option_networks", "all") == {
        ("unet", ""), ("monai_basicunet", ""), ("unet", "compile"), ("monai_basicunet", "compile")}
    assert {n for n, _ in measured()} == {"unet", *run.MONAI_NETS}
    assert measured("--monai_networks", "") == {("unet", "")}
    with pytest.raises(SystemExit, match="--monai_networks: unknown 'basicunet'"):
        measured("--monai_networks", "basicunet")


def _component(target: str) -> Any:
    """The class a config's ``_target_`` names, found as MONAI's config finds it (a short name such as
    ``StatsHandler`` through its component locator)."""
    import pydoc

    from monai.bundle.config_item import ConfigComponent

    found = pydoc.locate(ConfigComponent({"_target_": target}).resolve_module_name())
    assert found is not None, f"_target_ {target!r} not found"
    return found


def test_the_gpu_scripts_default_plan_names_only_what_exists():
    """A GPU session has 15 minutes: the default plan of ``benchmarks/gpu_check.sh`` must parse, and every override
    of its sliding-window and bundle trials must be an id of the flagship's config (a new key only as an argument
    that its component takes), or a process setting the benchmark applies itself."""
    import inspect
    import re
    import shlex

    from monai.bundle import ConfigParser

    run = _bench()
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    default = re.search(r"\$\{BENCH_ARGS:-(.*?)\}\s*\\\n", script, re.DOTALL).group(1)
    cases = run.plan(run.parse_args(["--device", "cuda", *shlex.split(default)]))
    trials = [c for c in cases if c["kind"] in ("sliding_window", "bundle") and c["overrides"]]
    assert {c["kind"] for c in trials} == {"sliding_window", "bundle"}
    for case in trials:
        config = "inference.json" if case["kind"] == "sliding_window" else "train.json"
        parser = ConfigParser()
        parser.read_config(str(run.FLAGSHIP / "configs" / config))
        for key in case["overrides"]:
            if key in run.TRIAL_SETTINGS:
                continue
            parent, _, leaf = key.rpartition("#")
            node = parser.get(parent) if parent else parser.get()
            if (isinstance(node, dict) and leaf in node) or (isinstance(node, list) and int(leaf) < len(node)):
                continue
            where = f"trial {case['trial']!r}: {key} ({config})"
            assert isinstance(node, dict) and "_target_" in node, f"{where} is not an id of the config"
            takes = inspect.signature(_component(node["_target_"])).parameters
            assert leaf in takes or any(p.kind is p.VAR_KEYWORD for p in takes.values()), \
                f"{where}: {node['_target_']} takes no {leaf!r}"


def test_kernel_profile_sums_what_the_device_ran():
    """``--profile``'s reading (here of the CPU's operators): the kinds add up to the kernel time, the convolution of
    a convolution-heavy call is the largest kind, the call counts are per call; a call that fails gives an error,
    not an exception."""
    import torch

    run = _bench()
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 8, 3, padding=1))
    x = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        p = run.kernel_profile(lambda: net(x), torch.device("cpu"), calls=2)
    assert p["kernel_ms"] == pytest.approx(sum(p["kinds_ms"].values()))
    assert next(iter(p["kinds_ms"])) == "convolution" and 0 < p["busy"] <= 1.05
    assert [t["calls"] for t in p["top"] if t["name"] == "aten::conv3d"] == [2]
    line = run.profile_line("profile: net forward", p)
    assert line.startswith("profile: net forward: ") and "convolution " in line and "busy" in line

    def broken() -> None:
        raise RuntimeError("no such kernel")

    failed = run.kernel_profile(broken, torch.device("cpu"))
    assert failed == {"error": "RuntimeError: no such kernel"}
    assert run.profile_line("x", failed) == "x: profile failed: RuntimeError: no such kernel"


def test_process_settings_are_set_and_reset(monkeypatch):
    """Options and trial keys that are settings of the process, not of a config: set for one case and back to the
    process's defaults for the next one in the same process; a trial's values as typed ("false")."""
    import torch._inductor.config as inductor_config

    from monai_unet_variants import acceleration

    run = _bench()
    monkeypatch.setattr(inductor_config, "force_layout_optimization", False)
    monkeypatch.setattr(inductor_config, "layout_optimization", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for key in acceleration.CHANNELS_LAST_EXTRAS:
        monkeypatch.setitem(acceleration.CHANNELS_LAST_EXTRAS, key, False)
    monkeypatch.delenv("TORCHINDUCTOR_FORCE_LAYOUT_OPT", raising=False)
    defaults = {"cudnn_benchmark": False, "force_layout": False, "layout_opt": True, "cl_inputs": False,
                "cl_norm": False}
    overrides = {"sw_batch_size": 8, "layout_opt": "false", "cl_inputs": "true", "cudnn_benchmark": "yes"}
    trial = run.pop_settings(overrides)
    assert overrides == {"sw_batch_size": 8}  # a config key stays with the config
    assert run.apply_settings(trial) == {**defaults, "layout_opt": False, "cl_inputs": True, "cudnn_benchmark": True}
    assert not inductor_config.layout_optimization and torch.backends.cudnn.benchmark
    assert acceleration.CHANNELS_LAST_EXTRAS == {"conv_inputs": True, "norms": False}
    assert run.apply_settings({"layout_opt": "true", "cl_norm": True}) == {**defaults, "cl_norm": True}
    # network options of the same meaning
    assert run.apply_settings({"force_layout": True, "no_layout_opt": True}) == {
        **defaults, "force_layout": True, "layout_opt": False}
    assert inductor_config.force_layout_optimization and not inductor_config.layout_optimization
    assert run.apply_settings({}) == defaults and inductor_config.layout_optimization
    monkeypatch.setenv("TORCHINDUCTOR_FORCE_LAYOUT_OPT", "1")
    assert run.apply_settings({})["force_layout"]
    with pytest.raises(ValueError, match="--layout_opt must be true or false"):
        run.apply_settings({"layout_opt": "maybe"})


def test_inductor_layouts_counts_what_the_generated_code_says():
    """``benchmarks/inductor_layouts.py`` reads Inductor's wrapper code (lines as Inductor writes them for a GPU):
    a convolution's output layout from its stride assertion, its input's from the buffer's allocation (a graph input
    is not counted), and the fused kernels that copy."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("inductor_layouts", REPO / "benchmarks" / "inductor_layouts.py")
    layouts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layouts)
    code = "\n".join([
        "triton_red_fused__native_batch_norm_legit_clone_0 = async_compile.triton('triton_red_fused_0', ...)",
        "triton_poi_fused_relu_1 = async_compile.triton('triton_poi_fused_relu_1', ...)",
        "        buf0 = extern_kernels.convolution(arg0_1, arg1_1, None, stride=(1, 1, 1), groups=1)",
        "        assert_size_stride(buf0, (2, 8, 16, 16, 16), (32768, 4096, 256, 16, 1), 'aten.convolution')",
        "        buf3 = empty_strided_cuda((2, 8, 16, 16, 16), (32768, 1, 2048, 128, 8), torch.float16)",
        "        buf4 = extern_kernels.convolution(buf3, arg2_1, None, stride=(1, 1, 1), groups=1)",
        "        assert_size_stride(buf4, (2, 8, 16, 16, 16), (32768, 1, 2048, 128, 8), 'aten.convolution')",
    ])
    assert layouts.count_layouts(code) == {"convolutions": 2, "outputs_channels_last": 1, "inputs_allocated": 1,
                                           "inputs_channels_last": 1, "fused_kernels": 2, "copy_kernels": 1}


def test_sliding_window_volume_is_windowed_as_the_flagship_infers():
    """The sliding-window section's CT-like volume, windowed with the flagship inference config's (parsed) window:
    air at 0, dense tissue near 1, soft tissue between (it read the raw config value, an expression since the window
    follows the trained model, and the section failed on a missing file)."""
    volume = _bench().sliding_window_volume((40, 32, 16))
    assert volume.shape == (1, 1, 40, 32, 16) and volume.min() == 0.0 and 0.5 < volume.max() <= 1.0
    assert 0.01 < float(((volume > 0) & (volume < 1)).mean()) < 0.99


@pytest.mark.slow
def test_benchmark_children_trials_and_report(tmp_path):
    """Cases in their own processes, two prepared at a time: compiled rows (Dynamo's eager backend), sliding-window
    trials compared with the float32 reference, a bundle trial, the partial results and ``--report`` on them; a case
    that runs past ``--case_timeout`` is stopped and reported, and the rest still run."""
    out = tmp_path / "bench"
    cmd = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--jobs", "2", "--out", str(out),
           "--dims", "3", "--networks", "unet", "--monai_networks", "monai_basicunet", "--options",
           "compile:unet/monai_basicunet", "--compile_backend", "eager", "--sw_trials",
           "compile=true,compile_kwargs#backend=eager,sw_batch_size=3;"
           "cudnn_benchmark=true,force_layout=true,layout_opt=false,cl_inputs=true",
           "--bundle_trials", "cache_gb=0", "--bundle_epochs", "2", "--sample_dir",
           str(tmp_path / "sample"), "--profile"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())["results"]
    partial = [json.loads(line) for line in (out / "results_partial.jsonl").read_text().splitlines()]
    assert len(partial) == len(results) and not [r for r in results if "error" in r]
    compiled = [r for r in results if r.get("options") == {"compile": True}]
    assert {r["network"] for r in compiled} == {"unet", "monai_basicunet"}
    # --monai_networks: only BasicUNet of MONAI's networks, and the ratios against it
    assert {r["network"] for r in results if r["kind"] == "network"} == {"unet", "monai_basicunet"}
    assert all("time_vs_basicunet" in r and "time_vs_unet" not in r for r in results if r["kind"] == "network")
    assert all(r["compile_s"] > 0 and r["recompiles"] == 0 for r in compiled)
    sw = {r["trial"]: r for r in results if r["kind"] == "sliding_window"}
    # on a CPU the config as it is runs eager float32 with window batch 2: it is the reference, not run twice
    tuned_name = "cudnn_benchmark=true,force_layout=true,layout_opt=false,cl_inputs=true"
    assert set(sw) == {"as configured", "compile=true,compile_kwargs#backend=eager,sw_batch_size=3", tuned_name}
    # the same weights in every trial: float32 everywhere on a CPU, so the label maps are the reference's
    assert all(r["agreement"] > 0.999 for r in sw.values())
    trial = sw["compile=true,compile_kwargs#backend=eager,sw_batch_size=3"]
    assert trial["compile"] and trial["static_batch"] and trial["sw_batch_size"] == 3 and trial["recompiles"] == 0
    tuned = sw[tuned_name]
    assert tuned["cudnn_benchmark"] and tuned["force_layout"] and tuned["layout_opt"] is False
    assert not sw["as configured"]["cudnn_benchmark"] and not sw["as configured"]["force_layout"]
    assert sw["as configured"]["layout_opt"] is True
    assert tuned["cl_inputs"] is False  # what the network has: to_device leaves a CPU network channels-first
    # --profile: every network case's step and forward, every trial's window batch, each a line of the report
    profiled = [r for r in results if r["kind"] in ("network", "sliding_window")]
    assert all(r["profile_forward"]["kernel_ms"] > 0 for r in profiled)
    assert all(r["profile_step"]["launches"] > 0 for r in profiled if r["kind"] == "network")
    assert "profile: 3D unet +compile training step: " in proc.stdout
    assert f"profile: sliding window [{tuned_name}], one window batch: " in proc.stdout
    assert "cuDNN benchmark, layout forced channels-last, no layout optimization;" in proc.stdout
    bundles = {r["trial"]: r for r in results if r["kind"] == "bundle"}
    assert bundles["as configured"]["iterations"] > 0
    # --profile of a bundle run: steps of its last epoch, left out of the timed steps
    assert bundles["as configured"]["profile_step"]["launches"] > 0
    assert "profile: bundle training [as configured], one step: " in proc.stdout
    # no memory budget: every cached case read back from the disk cache while training
    disk = bundles["cache_gb=0"]
    assert disk["training_cases"] > 0
    assert (disk["cached_in_memory"], disk["cached_on_disk"]) == (0, disk["training_cases"])
    assert f"0 cached cases in memory, {disk['training_cases']} on disk" in proc.stdout
    report = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--report",
                             str(out / "results_partial.jsonl")], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "unet +compile" in report.stdout and "sliding window [as configured]" in report.stdout

    slow = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--jobs", "2", "--out",
                           str(tmp_path / "cut"), "--dims", "3", "--networks", "unet", "--monai_networks",
                           "monai_basicunet", "--sw_volume", "", "--bundle_epochs", "0", "--case_timeout", "0.5"],
                          capture_output=True, text=True, timeout=300)
    assert slow.returncode == 1
    assert "still preparing after 0.5 s" in slow.stdout
    # --smoke leaves what is typed beside it: no sliding window, no bundle run
    cut = [r["kind"] for r in json.loads((tmp_path / "cut" / "results.json").read_text())["results"]]
    assert sorted(cut) == ["network", "network", "roof"], cut

    # interrupted as `timeout -s INT` does (the whole process group) once a case has finished: the finished cases
    # are written, the others reported as not run
    import os
    import signal
    import time

    cut = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--out", str(cut),
                             "--dims", "3", "--networks", "unet", "--monai_networks", "monai_basicunet", "--sw_volume",
                             "", "--bundle_epochs", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    partial, deadline = cut / "results_partial.jsonl", time.monotonic() + 300
    while not (partial.is_file() and partial.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, "no case finished"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-2000:]
    results = json.loads((cut / "results.json").read_text())["results"]
    done = [r for r in results if "error" not in r]
    assert done and len(done) < len(results)
    assert all(r["error"] == "not run: the benchmark was interrupted" for r in results if "error" in r)
    assert f"interrupted; {len(done)} of {len(results)} cases finished" in stderr


def test_iteration_output_benchmark_compares_the_bundles_bookkeeping_with_monais(capsys):
    """``benchmarks/iteration_output.py`` at a tiny size: both ways score the same Dice; MONAI's reads tensor values
    back every iteration, the bundles' none."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("iteration_output", REPO / "benchmarks" / "iteration_output.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--size", "8", "--repeats", "2", "--warmup", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    monai, ours = (next(line for line in lines if line.strip().startswith(w)) for w in ("MONAI", "bundles"))
    reads = [float(line.split("reads/iteration")[1].split()[0]) for line in (monai, ours)]
    assert reads[0] >= 4 and reads[1] == 0, lines
    assert monai.rsplit("Dice", 1)[1] == ours.rsplit("Dice", 1)[1] and "the same Dice: True" in lines[-1]


@pytest.mark.slow  # ~10 s
def test_input_check_benchmark(tmp_path):
    """``benchmarks/input_check.py`` at a tiny size: every step timed, its table against MONAI's reading, its JSON;
    the Enhanced CT's volume written to the benchmark's own cache (not the user's) and read back."""
    pytest.importorskip("highdicom")
    out = tmp_path / "inputs.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "input_check.py"), "--cases", "2", "--shape", "40,32,12",
           "--repeats", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    steps = result["seconds_per_case"]
    assert set(steps) == {"monai_load_series", "check_series", "check_enhanced_first", "check_enhanced_cached",
                          "load_enhanced_volume"} and all(v > 0 for v in steps.values())
    assert result["shape"] == [40, 32, 12] and result["cached_volume_mb"] > 0
    assert "MONAI LoadImage (ITK) of a series folder" in proc.stdout and "1.000" in proc.stdout
    assert len(list((tmp_path / "work" / "cache" / "monai_unet_variants" / "dicom_volumes").glob("*/*.nii"))) == 2


@pytest.mark.slow  # ~20 s
def test_inference_memory_benchmark(tmp_path):
    """``benchmarks/inference_memory.py`` at a small size (slabs of 1 MiB of grid): both variants' stages, the same
    label map (each class present), the table and the JSON."""
    out = tmp_path / "memory.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "inference_memory.py"), "--shape", "120,110,40", "--slab_mb", "1",
           "--workdir", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["label_maps_identical"] and set(result["peak_gb"]) == {"monai", "bundle"}
    assert all(n > 0 for n in result["runs"]["bundle"]["label_voxels"].values())
    assert {"MetaSafeSpacingd", "InPlaceSoftmaxd", "Invertd", "sliding window"} <= set(result["runs"]["bundle"]["stages"])
    assert {"Spacingd", "Activationsd", "Invertd"} <= set(result["runs"]["monai"]["stages"])
    assert "Spacingd / MetaSafeSpacingd" in proc.stdout and "label maps identical" in proc.stdout
