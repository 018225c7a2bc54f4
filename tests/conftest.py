"""Shared helpers: tiny configurations of every registered network, in 2D and 3D; a small synthetic data set and
the flagship bundle's training pipeline built from its config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from monai_unet_variants import create_network, list_networks

REPO = Path(__file__).resolve().parents[1]
FLAGSHIP = REPO / "bundles" / "attunet_pancreas"

#: every registered network; a new registration is tested with no new test code
NETWORK_NAMES = list_networks()
DIMS = (2, 3)

#: tiny widths per network (DenseUNet needs multiples of 8 for k = f/8)
TINY_CHANNELS = {"denseunet": (8, 16, 32)}
DEFAULT_TINY = (4, 8, 16)


def tiny_kwargs(name: str, spatial_dims: int, **overrides) -> dict:
    kwargs = dict(
        spatial_dims=spatial_dims,
        in_channels=2,
        out_channels=3,
        channels=TINY_CHANNELS.get(name, DEFAULT_TINY),
        strides=(2, 2),
    )
    kwargs.update(overrides)
    return kwargs


def tiny_net(name: str, spatial_dims: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_network(name, **tiny_kwargs(name, spatial_dims, **overrides))


def tiny_input(spatial_dims: int, batch: int = 2, channels: int = 2, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn((batch, channels) + (size,) * spatial_dims, generator=g)


@pytest.fixture(autouse=True)
def _release_cache_leases():
    """A test that reads DICOM leases entries of its (own) cache: given up after it, as a run gives them up at exit."""
    yield
    cache = sys.modules.get("monai_unet_variants.bundle.user_cache")  # imported by a test that reads DICOM
    if cache is not None:
        cache.release()


@pytest.fixture(params=NETWORK_NAMES)
def name(request) -> str:
    return request.param


@pytest.fixture(params=DIMS, ids=lambda d: f"{d}d")
def dims(request) -> int:
    return request.param


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> Path:
    """Five training cases and one test case (NIfTI, and the test case as a DICOM series) of the synthetic set."""
    from monai_unet_variants.data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "Task07", num_train=5, num_test=1, shape=(100, 88, 24),
                        progress=False)


def cli_overrides(args: list[str]) -> dict:
    """``["--key", "value", ...]`` command-line pairs as the values ``python -m monai.bundle`` hands a config
    (python-fire reads ``[4,8]`` as a list, ``0.25`` as a number), for running a bundle workflow in this process."""
    import ast

    return {k.lstrip("-"): ast.literal_eval(v) for k, v in zip(args[::2], args[1::2], strict=True)}


def training_dataset(dataset_dir: Path, data_device: str, roi: int = 32, **overrides):
    """The flagship bundle's cached training dataset, read from its ``train.json`` (``data_device``: where the cached
    volumes and the random transforms live)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(FLAGSHIP / "configs" / "train.json"))
    parser.update({"dataset_dir": str(dataset_dir), "roi_size": [roi] * 3, "num_workers": 0,
                   "data_device": data_device, **overrides})
    parser["train#dataset#progress"] = False
    return parser.get_parsed_content("train#dataset")


def training_crops(dataset, count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` random training samples (image, label) of ``dataset`` from a seeded random state."""
    dataset.transform.set_random_state(seed=seed)
    crops = []
    for i in range(count):
        for item in dataset[i % len(dataset)]:
            crops.append((item["image"], item["label"]))
    return crops


def flagship_trainer(folder: Path, dataset_dir: Path, **overrides):
    """The flagship's training workflow at test size (widths 4-64, 32³ patches, no validation until the end),
    initialized, and its trainer: ``(workflow, trainer)``; run it with ``workflow.run()``."""
    from monai.bundle import ConfigWorkflow

    settings = {"epochs": 2, "val_interval": 100, "roi_size": [32, 32, 32], "num_workers": 0,
                "network_def#channels": [4, 8, 16, 32, 64], **overrides}
    workflow = ConfigWorkflow(config_file=str(FLAGSHIP / "configs" / "train.json"), workflow_type="train",
                              logging_file=False, dataset_dir=str(dataset_dir), ckpt_dir=str(folder / "models"),
                              output_dir=str(folder / "eval"), **settings)
    workflow.initialize()
    return workflow, workflow.parser.get_parsed_content("train#trainer")
