"""A real MONAI Label server on 127.0.0.1 serving every network's bundle through MONAI Label's own
``monaibundle`` sample app, each bundle copied to ``<app>/model/<name>/`` (the route that needs no code of ours
in the app): all of them segment a study; the flagship also takes a submitted label and trains on it.

These tests need the MONAI Label environment (``pip install "torch==2.14.1" "torchvision==0.29.1"
-e ".[monailabel]"``; monailabel needs numpy<2 and cannot share the core test environment). Elsewhere they
are skipped, unless ``MUV_REQUIRE_MONAILABEL=1`` (set by ``.ci/run``) turns the missing package into a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

if os.environ.get("MUV_REQUIRE_MONAILABEL") == "1":
    import monailabel  # noqa: F401  (a failure here is the point: CI asked for the MONAI Label tests)
else:
    pytest.importorskip("monailabel", reason="needs the MONAI Label environment: pip install -e '.[monailabel]'")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402

from monai_unet_variants.data import make_dataset  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MODEL = "attunet_pancreas"  # the flagship: served, labelled and trained
BUNDLES = sorted(p.name for p in (REPO / "bundles").glob("*_pancreas") if (p / "configs" / "metadata.json").is_file())
TINY = {"roi_size": [32, 32, 32], "network_def#channels": [8, 16, 32, 64, 128], "num_workers": 0,
        "sw_batch_size": 4, "batch_size": 2, "val_interval": 1, "overlap": 0.25}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shrink(config: Path) -> None:
    """Test-sized patches and widths, written into the bundle copy (MONAI Label takes no overrides)."""
    data = json.loads(config.read_text())
    for key, value in TINY.items():
        if "#" in key:
            outer, inner = key.split("#")
            data[outer][inner] = value
        elif key in data:
            data[key] = value
    config.write_text(json.dumps(data, indent=4))


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Server:
    def __init__(self, root: Path) -> None:
        sample = make_dataset(root / "Task07", num_train=3, num_test=0, shape=(100, 88, 24), dicom=False,
                              progress=False)
        self.studies = root / "studies"
        (self.studies / "labels" / "final").mkdir(parents=True)
        for i in range(3):
            shutil.copy(sample / "imagesTr" / f"pancreas_00{i}.nii.gz", self.studies)
        for i in range(2):  # two annotated studies; the third is labelled through the API in the test
            shutil.copy(sample / "labelsTr" / f"pancreas_00{i}.nii.gz", self.studies / "labels" / "final")
        self.reference_label = sample / "labelsTr" / "pancreas_002.nii.gz"

        apps = root / "apps"
        # the `monailabel` script runs whatever `python` is first on PATH: call its module with this interpreter
        cli = [sys.executable, "-m", "monailabel.main"]
        env = dict(os.environ, MONAI_LABEL_TRACKING_ENABLED="false", PYTHONUNBUFFERED="1",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        subprocess.run([*cli, "apps", "--download", "--name", "monaibundle", "--output", str(apps)], check=True,
                       capture_output=True, env=env)
        self.app = apps / "monaibundle"
        for name in BUNDLES:  # every network's bundle, each as a local bundle of the app
            bundle = self.app / "model" / name
            shutil.copytree(REPO / "bundles" / name, bundle, ignore=shutil.ignore_patterns("*.pt", "eval"))
            for config in ("train.json", "inference.json"):
                _shrink(bundle / "configs" / config)
            self._write_initial_checkpoint(bundle)
        self.checkpoint = self.app / "model" / MODEL / "models" / "model.pt"

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        cmd = [*cli, "start_server", "--app", str(self.app), "--studies", str(self.studies),
               "--conf", "models", ",".join(BUNDLES), "--conf", "zoo_source", "github", "--conf", "sam2", "false",
               "--conf", "preload", "false", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self.info = self._wait_ready()
        except BaseException:  # the fixture never sees a half-built server: stop it here
            self.stop()
            raise

    @staticmethod
    def _write_initial_checkpoint(bundle: Path) -> None:
        """An untrained network's weights as ``models/model.pt`` (the app serves a bundle only with one)."""
        import torch
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        torch.manual_seed(0)
        torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def wait_for_log(self, text: str, timeout: float = 30) -> bool:
        """Whether ``text`` shows up in the server's log within ``timeout`` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.log.read_text(errors="replace"):
                return True
            time.sleep(0.5)
        return False

    def _wait_ready(self, timeout: float = 300) -> dict:
        """Poll ``GET /info/`` until every bundle is listed as a model."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"monailabel exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = requests.get(f"{self.url}/info/", timeout=5)
                if r.status_code == 200 and set(BUNDLES) <= set(r.json().get("models", {})):
                    return r.json()
            except requests.RequestException:
                pass
            time.sleep(1)
        raise AssertionError(f"monailabel did not list {BUNDLES} within {timeout:.0f} s:\n{self.log_tail()}")

    def infer(self, image: str, model: str = MODEL) -> requests.Response:
        return requests.post(f"{self.url}/infer/{model}", params={"image": image, "output": "image"},
                             data={"params": json.dumps({"device": "cpu"})}, timeout=300)

    def stop(self) -> list[int]:
        """Stop the server's process group; return (and kill) any process that still mentions the app after it."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        deadline = time.time() + 15  # children of the server's process group get the signal too
        while _processes_mentioning(str(self.app)) and time.time() < deadline:
            time.sleep(0.5)
        stray = _processes_mentioning(str(self.app))
        for pid in stray:  # reported by the fixture, and not left behind either
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return stray


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = None
    try:
        srv = Server(tmp_path_factory.mktemp("monailabel"))
        yield srv
    finally:
        if srv is not None and hasattr(srv, "proc"):
            stray = srv.stop()
            assert not stray, f"processes left running after the server stopped: {stray}"


def _label_from(response: requests.Response, path: Path) -> nib.Nifti1Image:
    assert response.status_code == 200, response.text[-2000:]
    path.write_bytes(response.content)
    return nib.load(str(path))


def test_info_lists_every_bundle_with_its_labels(server):
    assert set(server.info["models"]) == set(BUNDLES)  # and no SAM2: nothing is downloaded at run time
    for name in BUNDLES:
        model = server.info["models"][name]
        assert model["labels"] == {"pancreas": 1, "tumour": 2}, name
        assert model["type"] == "segmentation" and model["dimension"] == 3
    assert set(server.info["trainers"]) == set(BUNDLES)


@pytest.mark.parametrize("name", [b for b in BUNDLES if b != MODEL])
def test_every_network_segments_through_the_server(server, name, tmp_path):
    image = nib.load(str(server.studies / "pancreas_001.nii.gz"))
    label = _label_from(server.infer("pancreas_001", name), tmp_path / "label.nii.gz")
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1, 2}


def test_bad_requests_get_error_responses(server):
    # MONAI Label answers an unknown model with its INVALID_INPUT exception as an HTTP 500 (logged with the reason)
    r = requests.post(f"{server.url}/infer/no_such_model", params={"image": "pancreas_000"}, timeout=60)
    assert r.status_code == 500
    assert server.wait_for_log("There is no model 'no_such_model' available")
    r = requests.post(f"{server.url}/infer/{MODEL}", timeout=60)  # no image id
    assert r.status_code == 500 and "Neither Image nor File" in r.json()["detail"]
    assert requests.get(f"{server.url}/info/", timeout=10).status_code == 200  # still serving


def test_infer_label_train_and_infer_with_the_new_checkpoint(server, tmp_path):
    image_id = "pancreas_002"
    image = nib.load(str(server.studies / f"{image_id}.nii.gz"))

    before = _label_from(server.infer(image_id), tmp_path / "before.nii.gz")
    assert before.shape == image.shape
    np.testing.assert_allclose(before.affine, image.affine, atol=1e-4)
    values_before = np.asarray(before.dataobj)
    assert set(np.unique(values_before).tolist()) <= {0, 1, 2}

    # an annotator submits the label of the third study
    with open(server.reference_label, "rb") as f:
        r = requests.put(f"{server.url}/datastore/label", params={"image": image_id, "tag": "final"},
                         files={"label": (f"{image_id}.nii.gz", f)}, timeout=60)
    assert r.status_code == 200, r.text
    stored = server.studies / "labels" / "final" / f"{image_id}.nii.gz"
    assert stored.is_file()
    datastore = requests.get(f"{server.url}/datastore/", params={"output": "stats"}, timeout=30).json()
    assert datastore["completed"] == 3, datastore

    old = _sha(server.checkpoint)
    options = server.checkpoint.parent / "training_options.json"
    assert not options.exists()  # an untrained model.pt, written by the fixture
    started = time.time()
    r = requests.post(f"{server.url}/train/{MODEL}", timeout=60,
                      json={"max_epochs": 1, "val_split": 0.34, "device": "cpu", "multi_gpu": False,
                            "tracking": "None"})
    assert r.status_code == 200, r.text
    deadline = time.time() + 600
    task = None
    while time.time() < deadline:
        task = requests.get(f"{server.url}/train/", timeout=30).json()
        if task.get("status") not in ("SUBMITTED", "QUEUED", "RUNNING"):
            break
        time.sleep(2)
    assert task and task.get("status") == "DONE", f"{task}\n{server.log_tail()}"
    assert server.checkpoint.stat().st_mtime > started and _sha(server.checkpoint) != old, server.log_tail()
    # the options the model was trained with are written with it, for inference to preprocess as training did
    assert json.loads(options.read_text()) == {"pixdim": [1.0, 1.0, 1.0], "hu_window": [-87.0, 199.0],
                                               "channels": TINY["network_def#channels"]}

    after = _label_from(server.infer(image_id), tmp_path / "after.nii.gz")
    assert after.shape == image.shape
    values_after = np.asarray(after.dataobj)
    assert set(np.unique(values_after).tolist()) <= {0, 1, 2}
    # the server reloads the checkpoint that training wrote: the same request gives another segmentation
    assert server.wait_for_log("Reload model from cache", timeout=1)
    assert not np.array_equal(values_before, values_after)
