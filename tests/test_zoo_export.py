"""Model-zoo copies of the bundles (``bundle_family --export``): they pass the zoo's checks as reproduced in
``bundle_export.zoo_problems``, each check catches what it is there for, and an exported bundle trains, infers and
exports with ``monai_unet_variants`` made unimportable, run from its own folder as zoo bundles are."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_unet_variants.bundle_export import FILE_CAP_MB, _without_provenance, export_bundle, needed_modules, zoo_problems
from monai_unet_variants.bundle_family import VARIANTS, export, main, zoo_name

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SCHEMA = BUNDLES / "schema" / "meta_schema.json"
URL = "https://example.org/weights/model.pt"
TINY = ["--roi_size", "[32,32,32]", "--network_def#channels", "[4,8,16,32,64]", "--sw_batch_size", "4",
        "--num_workers", "0", "--batch_size", "2"]
# `python -m monai.bundle ...` as a machine without this package runs it: importing it fails
WITHOUT_PACKAGE = ("import runpy, sys; sys.modules['monai_unet_variants'] = None; sys.argv[0] = 'monai.bundle'; "
                   "runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)")


def run_without_package(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_PACKAGE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The flagship exported once, with its weights published at ``URL`` (large_files.yml)."""
    return export_bundle(BUNDLES / "attunet_pancreas", tmp_path_factory.mktemp("zoo"), zoo_name("attunet_pancreas"),
                         weights_url=URL)


def _package_refs(root: Path) -> list[str]:
    """Imports of this package in an exported bundle's code, and references to its modules in its configs."""
    import ast

    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(root)}:{node.lineno}: {n}" for n in names
                      if n.split(".")[0] == "monai_unet_variants"]
    for path in sorted(root.rglob("*.json")):
        found += [f"{path.relative_to(root)}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
                  if "monai_unet_variants." in line or "import monai_unet_variants" in line]
    return found


def test_exported_bundle_passes_the_zoo_checks_and_carries_exactly_its_code(exported):
    assert exported.name == "pancreas_ct_attunet_segmentation"
    assert zoo_problems(exported, schema=SCHEMA) == []
    texts = [p.read_text() for p in (BUNDLES / "attunet_pancreas" / "configs").glob("*.json")]
    texts.append(_without_provenance((BUNDLES / "attunet_pancreas" / "docs" / "README.md").read_text()))
    expected = {Path(*p).with_suffix(".py") if not (REPO / "monai_unet_variants" / Path(*p)).is_dir()
                else Path(*p, "__init__.py") for p in needed_modules(texts)}
    carried = {p.relative_to(exported / "scripts") for p in (exported / "scripts").rglob("*.py")}
    assert carried == expected
    # the networks, the bundle helpers and the sample generator travel; the tools around the bundles do not
    assert {Path("networks/attention_unet.py"), Path("bundle/checks.py"), Path("data.py")} <= carried
    assert not {Path("compare.py"), Path("bundle_family.py"), Path("bundle_export.py")} & carried
    assert _package_refs(exported) == []
    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    assert "monai_unet_variants" not in meta["required_packages_version"] and meta["name"] == exported.name
    train = json.loads((exported / "configs" / "train.json").read_text())
    assert "$import scripts" in train["imports"] and train["network_def"]["_target_"] == "scripts.networks.AttentionUNet"
    assert not (exported / "models" / "model.pt").exists()
    assert "url: https://example.org/weights/model.pt" in (exported / "large_files.yml").read_text()
    doc = (exported / "docs" / "README.md").read_text()
    assert "bundles/attunet_pancreas" not in doc and "## This copy" in doc


def test_zoo_checks_report_each_problem(exported, tmp_path):
    root = tmp_path / exported.name
    shutil.copytree(exported, root)
    (root / "LICENSE").unlink()
    meta_file = root / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["version"] = "0.2.0"
    meta["required_packages_version"]["monai_unet_variants"] = "0.1.0"
    meta_file.write_text(json.dumps(meta))  # also not formatted as the zoo's hook formats it
    (root / "large_files.yml").write_text("large_files:\n  - path: /abs/model.pt\n    url: ftp://x\n    hash_type: crc\n")
    with open(root / "models" / "big.bin", "wb") as f:
        f.truncate((FILE_CAP_MB + 1) * 2**20)
    options = root / "scripts" / "options.py"
    options.write_text(options.read_text().replace("from __future__ import annotations\n",
                                                   "from __future__ import annotations\n\nimport sys\nimport abc\n", 1))
    problems = zoo_problems(root, schema=SCHEMA)
    expected = [
        "LICENSE: missing",
        "large_files.yml: entry 0 path '/abs/model.pt' must lie inside the bundle",
        "large_files.yml: entry 0 url 'ftp://x' is not an http(s) address",
        "large_files.yml: entry 0 hash_type 'crc' is not one of ('md5', 'sha1', 'sha256', 'sha512')",
        "large_files.yml: entry 0 gives hash_val and hash_type only together",
        "models/model.pt: missing, and no large_files.yml says where to download it",
        "configs/metadata.json: not formatted as the zoo's pretty-format-json --indent=4 formats it",
        f"models/big.bin: {FILE_CAP_MB + 1:.1f} MB, over the zoo's {FILE_CAP_MB} MB per file (list it in large_files.yml "
        "instead)",
        "configs/metadata.json: version '0.2.0' has no entry in changelog",
        "configs/metadata.json: requires monai_unet_variants, which the zoo's runner cannot install",
        "scripts/options.py: imports not sorted as the zoo's isort sorts them",
    ]
    for line in expected:
        assert line in problems, (line, problems)
    others = [p for p in problems if p not in expected]
    assert len(others) == 2 and all(p.startswith("flake8: scripts/options.py:") and "F401" in p for p in others), others


def test_export_refuses_weights_over_the_cap_without_a_url(tmp_path):
    bundle = tmp_path / "attunet_pancreas"
    shutil.copytree(BUNDLES / "attunet_pancreas", bundle, ignore=shutil.ignore_patterns("*.pt", "eval"))
    with open(bundle / "models" / "model.pt", "wb") as f:
        f.truncate((FILE_CAP_MB + 2) * 2**20)
    with pytest.raises(ValueError, match=rf"{bundle / 'models' / 'model.pt'}: 27.0 MB exceeds the model zoo's 25 MB"):
        export_bundle(bundle, tmp_path / "zoo", "x")
    with pytest.raises(ValueError, match="no such bundle: nonet"):
        export(BUNDLES, tmp_path / "zoo", ["nonet"])


@pytest.mark.slow  # a process (or three exports through black, isort and flake8): ~10-17 s
def test_export_carries_what_the_weights_were_trained_with(tmp_path):
    """A bundle with trained weights: ``models/training_options.json`` (inference's defaults) goes along, in the
    zoo's JSON format, beside the weights or their ``large_files.yml`` entry; without weights it stays behind."""
    bundle = tmp_path / "attunet_pancreas"
    shutil.copytree(BUNDLES / "attunet_pancreas", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    (bundle / "models").mkdir()
    (bundle / "models" / "training_options.json").write_text('{"pixdim": [1.5, 1.5, 2.0], "hu_window": [-87, 199]}')
    bare = export_bundle(bundle, tmp_path / "bare", "x")
    assert not (bare / "models" / "training_options.json").exists()
    torch.save({"w": torch.zeros(2)}, bundle / "models" / "model.pt")
    for name, url in (("copied", None), ("linked", URL)):
        root = export_bundle(bundle, tmp_path / name, "x", weights_url=url)
        text = (root / "models" / "training_options.json").read_text()
        assert json.loads(text) == {"pixdim": [1.5, 1.5, 2.0], "hu_window": [-87, 199]} and text.count("\n") > 3


@pytest.mark.slow
def test_exported_bundle_trains_infers_and_exports_without_the_package(tmp_path, sample):
    """Copied outside the repository, with ``import monai_unet_variants`` failing: one tiny epoch of training,
    inference on the sample's test cases, the TorchScript export; run from another folder it stops with a message."""
    root = export_bundle(BUNDLES / "attunet_pancreas", tmp_path / "elsewhere", zoo_name("attunet_pancreas"))
    assert zoo_problems(root, schema=SCHEMA) == ["models/model.pt: missing, and no large_files.yml says where to "
                                                 "download it"]
    run_without_package("run", "--config_file", "configs/train.json", "--dataset_dir", str(sample), "--epochs", "1",
                        "--val_interval", "1", *TINY, cwd=root)
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "training_options.json").is_file()
    assert zoo_problems(root, schema=SCHEMA) == []  # with its trained weights, as a zoo submission would hold them
    run_without_package("run", "--config_file", "configs/inference.json", "--dataset_dir", str(sample),
                        *TINY[:6], cwd=root)
    import nibabel as nib

    tests = json.loads((sample / "dataset.json").read_text())["test"]
    outputs = sorted((root / "eval").glob("*_seg.nii.gz"))
    assert [p.name for p in outputs] == sorted(Path(str(t)).name.replace(".nii.gz", "_seg.nii.gz") for t in tests)
    assert set(np.unique(np.asarray(nib.load(outputs[0]).dataobj))) <= {0, 1, 2}
    run_without_package("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file",
                        "configs/inference.json", "--network_def#channels", "[4,8,16,32,64]", cwd=root)
    run_without_package("ckpt_export", "network_def", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt",
                        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
                        "--network_def#channels", "[4,8,16,32,64]", cwd=root)
    assert (root / "models" / "model.ts").stat().st_size > 0
    away = run_without_package("run", "--config_file", str(root / "configs" / "inference.json"), cwd=tmp_path,
                               check=False)
    assert away.returncode == 1
    assert "this bundle imports its own scripts/ folder, which is not on the Python path" in away.stderr


@pytest.mark.slow
def test_every_bundle_exports_and_passes_the_zoo_checks(tmp_path, capsys):
    assert main(["--bundles-dir", str(BUNDLES), "--export", str(tmp_path), "--weights_url", URL]) == 0
    out = capsys.readouterr().out
    assert out.count("passes the model zoo's checks") == len(VARIANTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(zoo_name(n) for n in VARIANTS)
    for root in tmp_path.iterdir():
        assert _package_refs(root) == [], root.name
        net = json.loads((root / "configs" / "inference.json").read_text())["network_def"]["_target_"]
        cls = VARIANTS[next(n for n in VARIANTS if zoo_name(n) == root.name)]["class"]
        assert net == f"scripts.networks.{cls}"
    # without published weights (and none trained) the zoo would refuse the copy: the command says so and fails
    assert main(["--bundles-dir", str(BUNDLES), "--export", str(tmp_path / "again"), "unet_pancreas"]) == 1
    assert "the model zoo would refuse it:\n  models/model.pt: missing" in capsys.readouterr().out


@pytest.mark.slow
def test_exported_bundle_runs_in_a_fresh_environment_with_its_listed_packages(tmp_path, sample):
    """A new virtual environment with only what the exported metadata lists (torch, MONAI, NumPy and the required
    packages at their versions), where ``monai_unet_variants`` does not exist: one tiny epoch and inference run."""
    root = export_bundle(BUNDLES / "attunet_pancreas", tmp_path / "zoo", zoo_name("attunet_pancreas"))
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pins = [f"torch=={meta['pytorch_version']}", f"monai=={meta['monai_version']}", f"numpy=={meta['numpy_version']}",
            *(f"{k}=={v}" for k, v in meta["required_packages_version"].items())]
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", *pins], capture_output=True, text=True,
                             timeout=1500)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-4000:]
    probe = subprocess.run([python, "-c", "import monai_unet_variants"], cwd=root, capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'monai_unet_variants'" in probe.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for args in (["configs/train.json", "--epochs", "1", "--val_interval", "1", *TINY],
                 ["configs/inference.json", *TINY[:6]]):
        proc = subprocess.run([python, "-m", "monai.bundle", "run", "--config_file", args[0], "--dataset_dir",
                               str(sample), *args[1:]], cwd=root, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (root / "models" / "model.pt").is_file() and list((root / "eval").glob("*_seg.nii.gz"))


@pytest.mark.slow
def test_listed_packages_install_on_the_zoo_runners_python(tmp_path):
    """The model zoo's runner uses Python 3.10: every version the metadata pins (torch, MONAI, NumPy and the
    required packages) has a wheel for it (pip resolves them for 3.10 without installing; needs the package index)."""
    meta = json.loads((BUNDLES / "attunet_pancreas" / "configs" / "metadata.json").read_text())
    pins = [f"torch=={meta['pytorch_version']}", f"monai=={meta['monai_version']}", f"numpy=={meta['numpy_version']}",
            *(f"{k}=={v}" for k, v in meta["required_packages_version"].items() if k != "monai_unet_variants")]
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                           "--target", str(tmp_path / "t"), "--python-version", "3.10", "--only-binary=:all:", "--no-deps",
                           *pins], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, [line for line in proc.stderr.splitlines() if "is ignored" not in line]
