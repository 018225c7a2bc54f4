"""The benchmark command at tiny sizes: every section runs and writes its files (no timing asserts)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--in_process", "--out", str(out),
           "--networks", "unet,attention_unet,attention_r2unet", "--options", "channels_last,no_narrow",
           "--option_networks", "unet", "--sample_dir", str(tmp_path / "sample")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    rows = [r for r in result["results"] if r["kind"] == "network"]
    # our three networks, the two variants (gates at skip resolution, checkpointing), MONAI's three, two trials
    assert len(rows) == 2 * 10
    assert not [r for r in result["results"] if "error" in r]
    by = {(r["network"], r["spatial_dims"], "+".join(r.get("options", {}))): r for r in rows}
    for dims in (2, 3):
        unet = by[("unet", dims, "")]
        assert unet["params"] > 0 and unet["gflop_fwd_bwd"] > unet["gflop_fwd"] > 0
        assert unet["fwd_ms"] > 0 and unet["fwd_bwd_ms"] > 0
        assert by[("monai_unet", dims, "")]["time_vs_unet"] == pytest.approx(1.0)
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
