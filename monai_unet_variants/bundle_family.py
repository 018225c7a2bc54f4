"""One bundle per network, generated from the flagship ``attunet_pancreas`` so that they never drift.

The bundles share everything but the network: ``attunet_pancreas`` is the template, the source of truth for every
shared setting, transform, handler and document section; ``VARIANTS`` below holds the only per-network parts (the
``network_def``, its description, and the ``SETTINGS`` a measurement says differ per network), read from each
network class's ``BUNDLE``. Each bundle's ``configs/network.json`` is its overlay: those parts as a MONAI config.
Its ``train.json`` and ``inference.json`` are the template's merged with the overlay by MONAI's own multi-file
config loading (``ConfigParser.load_config_files([template, overlay])``, the same merge as ``monai.bundle run
--config_file "['.../attunet_pancreas/configs/train.json','configs/network.json']"``), written in the template's
layout, so that ``git diff`` between two bundles shows the network only; the check compares the files as text.

    python -m monai_unet_variants.bundle_family            # (re)write bundles/<name>_pancreas from the template
    python -m monai_unet_variants.bundle_family --check    # exit 1 and list the differences if any bundle drifted
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bundle_export import zoo_json

__all__ = ["OVERLAY", "SETTINGS", "TEMPLATE", "VARIANTS", "check_bundles", "export", "merge_configs", "overlay",
           "render_bundle", "settings", "write_bundles", "zoo_name"]

TEMPLATE = "attunet_pancreas"
#: each bundle's overlay: what differs from the template, as a MONAI config merged over its train and inference configs
OVERLAY = "configs/network.json"
#: the configs that are the template's merged with the overlay (the others are the template's, verbatim)
MERGED = ("configs/train.json", "configs/inference.json")
_NET_BASE: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": "@channels",  # a top-level setting: inference and evaluation take the trained widths
    "strides": [2, 2, 2, 2],
    "act": "relu",
    "norm": ["instance", {"affine": True}],
    "dropout": 0.0,
    # top-level settings, read as typed on the command line (`--deep_supervision false` means off)
    "deep_supervision": "$monai_unet_variants.options.as_bool(@deep_supervision, 'deep_supervision')",
    "deep_supr_num": "@deep_supr_num",
}

#: top-level settings of train.json and inference.json that may differ per network, with their default; a
#: variant's ``"settings"`` overrides them where a measurement says so (the template's files must hold its own)
SETTINGS: dict[str, Any] = {"channels_last": False, "deep_supervision": False, "deep_supr_num": 1}


def _variants() -> dict[str, dict[str, Any]]:
    """Every bundle, read from the registered network classes' own ``BUNDLE`` (name, title, about, constructor
    ``args``, measured ``settings``): adding a network file with one is all a new bundle needs. The template first."""
    from .registry import _registered

    found: dict[str, dict[str, Any]] = {}
    for cls in _registered().values():
        spec = cls.__dict__.get("BUNDLE")  # its own, not a parent's (AttentionR2UNet is an R2UNet)
        if spec:
            if spec["name"] in found:
                raise ValueError(f"bundle name {spec['name']!r} is claimed by {found[spec['name']]['class']} and {cls.__name__}")
            found[spec["name"]] = {"class": cls.__name__, **{k: v for k, v in spec.items() if k != "name"}}
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != TEMPLATE, kv[0])))


#: per-network parts of every bundle: class, extra constructor arguments, title, one paragraph, settings (the
#: papers are the class's ``PAPERS``); read from the classes (``BUNDLE``), never written here
VARIANTS: dict[str, dict[str, Any]] = _variants()

_VERBATIM = (
    "configs/evaluate.json", "configs/multi_gpu_train.json", "configs/multi_gpu_evaluate.json",
    "configs/inference_trt.json", "configs/onnx_export.json", "configs/logging.conf", "LICENSE",
)


def network_def(name: str) -> dict[str, Any]:
    spec = VARIANTS[name]
    return {"_target_": f"monai_unet_variants.networks.{spec['class']}", **_NET_BASE, **spec.get("args", {})}


def overlay(name: str) -> dict[str, Any]:
    """Bundle ``name``'s overlay config: its ``network_def`` and its per-network settings (``configs/network.json``)."""
    return {"network_def": network_def(name), **settings(name)}


def merge_configs(template: str | Path, overlay_text: str) -> str:
    """The config file ``template`` merged with an overlay config (JSON text) by MONAI's multi-file config loading,
    formatted as the model zoo formats configs (the template's key order, the overlay's values)."""
    from monai.bundle import ConfigParser

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "network.json"
        path.write_text(overlay_text)
        return zoo_json(ConfigParser.load_config_files([str(template), str(path)]))


def zoo_name(name: str) -> str:
    """The model-zoo style name (``<organ>_<modality>_<network>_segmentation``) of bundle ``name``: the ``name`` in its
    metadata and the folder an export writes; the repository's folder names (``attunet_pancreas``) stay as they are.

    Examples::

        >>> zoo_name("attunet_pancreas")
        'pancreas_ct_attunet_segmentation'
    """
    return f"pancreas_ct_{name.removesuffix('_pancreas')}_segmentation"


def citations(name: str) -> str:
    """The short citations of bundle ``name``'s network, from its class's ``PAPERS`` (written there once)."""
    from .networks._common import short_citation

    return "; ".join(short_citation(p) for p in network_class(name).PAPERS)


def settings(name: str) -> dict[str, Any]:
    """The per-network top-level settings of bundle ``name`` (``SETTINGS`` with its variant's overrides)."""
    return {**SETTINGS, **VARIANTS[name].get("settings", {})}


def network_class(name: str) -> type:
    """The network class of bundle ``name`` (its papers are held there, once)."""
    from . import networks

    return getattr(networks, VARIANTS[name]["class"])


#: where the template's shared documentation ends and each bundle's generated, per-network sections begin
DOC_MARK = "<!-- per-network sections below: written by python -m monai_unet_variants.bundle_family -->"
#: the repository's measurements that the per-network sections quote
MEASUREMENTS = Path(__file__).resolve().parents[1] / "docs"


def _registry_name(name: str) -> str:
    from .registry import _registered

    cls = network_class(name)
    return next(n for n, c in _registered().items() if c is cls)


def _load(file: str) -> Any:
    path = MEASUREMENTS / file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the measurements the bundle docs quote (run from the repository)")
    return json.loads(path.read_text())


def _row(rows: Sequence[dict], **match: Any) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items()) and "error" not in r), None)


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    if value is None:
        return "not measured"
    return "n/a (nothing predicted)" if value != value else f"{value:{spec}}{unit}"


def _data_reference(template_dir: Path) -> str:
    """The data set's citation: the last of the template metadata's references (the network's papers come first)."""
    return json.loads((template_dir / "configs" / "metadata.json").read_text())["references"][-1]


def doc_tail(name: str, data_reference: str) -> str:
    """The per-network sections of bundle ``name``'s docs (Training configuration, Performance, References), from
    ``VARIANTS``, the network class, the measurements in the repository's ``docs/`` folder and ``data_reference``
    (the data set's citation in the template's metadata)."""
    net = _registry_name(name)
    compare = [_load(f) for f in ("compare_results_deep_supervision.json", "compare_results.json",
                                  "compare_results_nested_fullscale.json")]
    cmp_run = next((c for c in compare if _row(c["rows"], bundle=name)), None)
    cmp = _row(cmp_run["rows"], bundle=name) if cmp_run else None
    cpu_rows = [r for f in ("benchmark_cpu.json", "benchmark_cpu_nested_fullscale.json") for r in _load(f)["results"]]
    cpu = _row(cpu_rows, kind="network", network=net, spatial_dims=3, options=None)
    gpu_run = _load("benchmark_gpu.json")["runs"]["h200_2026-11-26_run1"]["results"]
    eager = _row(gpu_run, kind="network", network=net, spatial_dims=3, options=None)
    compiled = _row(gpu_run, kind="network", network=net, spatial_dims=3, options={"compile": True})
    meta_refs = [*network_class(name).PAPERS]
    lines = [
        DOC_MARK,
        "",
        "## Training configuration",
        "",
        "- Input: one channel of CT resampled to 1 mm and windowed [-87, 199] HU to [0, 1]; training patches of 96³ with a "
        "GPU, 64³ on CPU, batch 2, one patch per volume, centred on pancreas, tumour or background with probabilities "
        "1:1:1 (see Settings).",
        "- Output: three channels of logits (background, pancreas, tumour) at the input's size; the argmax is the label.",
        f"- Memory of one training step at 96³, batch 2, widths 16-256: {_fmt(eager and eager['peak_mib'], '.0f', ' MiB')}"
        " of GPU memory (H200, AMP fp16, eager), "
        f"{_fmt(cpu and cpu['peak_mib'], '.0f', ' MiB')} of host memory on CPU (float32).",
        "- Loss DiceCE, AdamW with learning rate 1e-3 cosine-annealed, AMP and `torch.compile` on a GPU.",
        "",
        "## Performance",
        "",
    ]
    if cmp:
        st = cmp_run["settings"]
        lines += [
            f"On the built-in synthetic sample (not clinical data), trained by the `compare` tool of monai-unet-variants "
            f"for {st['epochs']} epochs on {st['device'].upper()} (roi {st['roi_size']}³, widths {st['channels'].replace(',', '-')}, "
            f"learning rate {st['learning_rate']}, seed {st['seed']}), then evaluated on the sample's test cases:",
            "",
            "| Dice pancreas | Dice tumour | HD95 pancreas (mm) | HD95 tumour (mm) | s per epoch |",
            "|---|---|---|---|---|",
            f"| {_fmt(cmp['dice_pancreas'], '.3f')} | {_fmt(cmp['dice_tumour'], '.3f')} | "
            f"{_fmt(cmp['hd95_pancreas'], '.1f')} | {_fmt(cmp['hd95_tumour'], '.1f')} | {_fmt(cmp['s_per_epoch'], '.1f')} |",
            "",
        ]
        if not cmp["dice_pancreas"] and not cmp["dice_tumour"]:
            lines += ["At this budget the network predicted background only, where the U-Net learns: an open finding "
                      "whose cause is not yet found (see the project README).", ""]
    else:
        lines += ["Not yet trained by the `compare` tool of monai-unet-variants.", ""]
    lines += [
        "Speed of one training step (forward and backward, batch 2 x 1 x 96³, widths 16-256, `benchmarks/run.py`): "
        f"{_fmt(cpu and cpu['fwd_bwd_ms'] / 1000, '.1f', ' s')} on a 2-core CPU; "
        + (f"{_fmt(eager['fwd_bwd_ms'], '.1f', ' ms')} eager and {_fmt(compiled and compiled['fwd_bwd_ms'], '.1f', ' ms')} "
           "compiled on an NVIDIA H200 (AMP fp16, 2026-11-26). " if eager else "not yet measured on a GPU. ")
        + "No figures on the Decathlon data yet: train with `--dataset_dir /data/Task07_Pancreas` and evaluate to get them.",
        "",
        "## References",
        "",
        *[f"- {ref}" for ref in meta_refs],
        f"- {data_reference} (the Decathlon data)",
        "",
    ]
    return "\n".join(lines)


def _doc(template_doc: str, name: str, data_reference: str) -> str:
    spec = VARIANTS[name]
    body = template_doc.split(DOC_MARK)[0]
    shared = body[body.index("## Commands") :].replace(TEMPLATE, name)
    head = (
        f"# {name}: {spec['title']} for pancreas and tumour segmentation in CT\n\n"
        f"A MONAI bundle that trains, evaluates and runs a 3D {spec['title']} on abdominal CT: labels 0 background,\n"
        "1 pancreas, 2 tumour. It runs out of the box on a synthetic sample and on the Medical Segmentation Decathlon\n"
        "Task07 Pancreas data by overriding one path.\n\n"
        "## Network\n\n"
        f"`monai_unet_variants.networks.{spec['class']}` ({citations(name)}): {spec['about']}\n\n"
        "Switch the network with one override, e.g. `--network_def#_target_ monai_unet_variants.networks.ResUNet` (any class\n"
        "of `monai_unet_variants.networks`; pass the same override to `inference.json` with a checkpoint of that network).\n\n"
        f"This bundle is generated from `{TEMPLATE}` by `python -m monai_unet_variants.bundle_family`: `configs/network.json`\n"
        f"holds all that differs (the network and its settings), and `configs/train.json` and `configs/inference.json` are\n"
        f"`{TEMPLATE}`'s merged with it by MONAI's multi-file config loading; only that file, this section and the\n"
        "network definition differ, and a test fails if anything else drifts. The same merge at run time:\n"
        f"`--config_file \"['bundles/{TEMPLATE}/configs/train.json','bundles/{name}/configs/network.json']\"\n"
        f"--bundle_root bundles/{name}`.\n\n"
    )
    return head + shared + doc_tail(name, data_reference)


def render_bundle(template_dir: str | Path, name: str) -> dict[str, str]:
    """The files of bundle ``name`` (relative path -> text) built from the template bundle folder."""
    template_dir = Path(template_dir)
    files: dict[str, str] = {OVERLAY: zoo_json(overlay(name))}
    for rel in MERGED:
        files[rel] = merge_configs(template_dir / rel, files[OVERLAY])
    meta = json.loads((template_dir / "configs" / "metadata.json").read_text())
    spec = VARIANTS[name]
    meta["name"] = zoo_name(name)
    meta["description"] = (
        f"A 3D {spec['title']} ({citations(name)}) from monai-unet-variants for pancreas and tumour segmentation in CT, "
        "trained on the Medical Segmentation Decathlon Task07 layout; ships with a synthetic sample set for a first run."
    )
    meta["changelog"] = {meta["version"]: f"first release: 3D {spec['title']} for pancreas and tumour CT segmentation"}
    meta["references"] = [*network_class(name).PAPERS, meta["references"][-1]]  # the network's papers, then the data
    files["configs/metadata.json"] = zoo_json(meta)
    for rel in _VERBATIM:
        files[rel] = (template_dir / rel).read_text()
    files["docs/README.md"] = _doc((template_dir / "docs" / "README.md").read_text(), name, meta["references"][-1])
    files["models/.gitkeep"] = ""
    return files


def write_bundles(bundles_dir: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Write every generated bundle (all of ``VARIANTS`` but the template) under ``bundles_dir``."""
    bundles_dir = Path(bundles_dir)
    template_doc = bundles_dir / TEMPLATE / "docs" / "README.md"
    template_doc.write_text(template_doc.read_text().split(DOC_MARK)[0]
                            + doc_tail(TEMPLATE, _data_reference(bundles_dir / TEMPLATE)))
    (bundles_dir / TEMPLATE / OVERLAY).write_text(zoo_json(overlay(TEMPLATE)))
    written = []
    for name in names or [n for n in VARIANTS if n != TEMPLATE]:
        root = bundles_dir / name
        for rel, text in render_bundle(bundles_dir / TEMPLATE, name).items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        written.append(root)
    return written


def check_bundles(bundles_dir: str | Path) -> list[str]:
    """Differences between the bundles on disk and what the template generates (empty when in step)."""
    bundles_dir = Path(bundles_dir)
    problems = []
    for conf in ("train.json", "inference.json"):
        config = json.loads((bundles_dir / TEMPLATE / "configs" / conf).read_text())
        if conf == "train.json" and config["network_def"] != network_def(TEMPLATE):
            problems.append(f"{TEMPLATE}/configs/{conf}: network_def differs from VARIANTS[{TEMPLATE!r}]")
        for key, value in settings(TEMPLATE).items():
            if config.get(key) != value:
                problems.append(f"{TEMPLATE}/configs/{conf}: {key} is {config.get(key)!r}, VARIANTS[{TEMPLATE!r}] says {value!r}")
    template_doc = (bundles_dir / TEMPLATE / "docs" / "README.md").read_text()
    if DOC_MARK + template_doc.partition(DOC_MARK)[2] != doc_tail(TEMPLATE, _data_reference(bundles_dir / TEMPLATE)):
        problems.append(f"{TEMPLATE}/docs/README.md: per-network sections differ (run python -m monai_unet_variants.bundle_family)")
    template_meta = json.loads((bundles_dir / TEMPLATE / "configs" / "metadata.json").read_text())
    if template_meta.get("name") != zoo_name(TEMPLATE):
        problems.append(f"{TEMPLATE}/configs/metadata.json: name is {template_meta.get('name')!r}, not {zoo_name(TEMPLATE)!r}")
    template_refs = template_meta.get("references", [])
    if template_refs[:-1] != list(network_class(TEMPLATE).PAPERS):
        problems.append(f"{TEMPLATE}/configs/metadata.json: references differ from {VARIANTS[TEMPLATE]['class']}.PAPERS")
    own_overlay = bundles_dir / TEMPLATE / OVERLAY
    if not own_overlay.is_file() or own_overlay.read_text() != zoo_json(overlay(TEMPLATE)):
        problems.append(f"{TEMPLATE}/{OVERLAY}: missing or differs from VARIANTS[{TEMPLATE!r}] "
                        "(run python -m monai_unet_variants.bundle_family)")
    for name in VARIANTS:
        if name == TEMPLATE:
            continue
        for rel, text in render_bundle(bundles_dir / TEMPLATE, name).items():
            path = bundles_dir / name / rel
            if not path.is_file():
                problems.append(f"{name}/{rel}: missing")
            elif path.read_text() != text:  # as text: the layout too, so that git diff between bundles shows the network
                problems.append(f"{name}/{rel}: differs from the template (run python -m monai_unet_variants.bundle_family)")
    known = set(VARIANTS)
    for folder in sorted(p for p in bundles_dir.iterdir() if (p / "configs" / "metadata.json").is_file()):
        if folder.name not in known:
            problems.append(f"{folder.name}: a bundle folder that VARIANTS does not know")
    return problems


def export(bundles_dir: str | Path, dest: str | Path, names: Sequence[str] = (), weights_url: str | None = None,
           schema: str | Path | None = None) -> dict[Path, list[str]]:
    """Export bundles (all by default) as self-contained model-zoo copies under ``dest``
    (``bundle_export.export_bundle``) and run the zoo's checks on each; returns what each copy would be refused for."""
    from .bundle_export import export_bundle, zoo_problems

    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise ValueError(f"no such bundle: {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    results = {}
    for name in names or list(VARIANTS):
        root = export_bundle(Path(bundles_dir) / name, dest, zoo_name(name), weights_url=weights_url)
        results[root] = zoo_problems(root, schema=schema)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate or check the per-network bundles from attunet_pancreas, "
                                     "or export self-contained model-zoo copies of them.")
    parser.add_argument("--bundles-dir", default="bundles", help="folder holding the bundles (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only report differences; exit 1 if any")
    parser.add_argument("--export", metavar="DIR", default="",
                        help="write zoo-layout copies that run without this package (scripts/ carries its code) "
                        "into DIR, then run the model zoo's checks on them; exit 1 if any fails")
    parser.add_argument("names", nargs="*", help="with --export: the bundles to export (default: all)")
    parser.add_argument("--weights_url", default=None,
                        help="with --export: where models/model.pt is published (written to large_files.yml)")
    parser.add_argument("--schema", default=None,
                        help="with --export: local copy of the bundle metadata schema (default: "
                        "<bundles-dir>/schema/meta_schema.json if present, else the one the metadata names)")
    args = parser.parse_args(argv)
    if args.names and not args.export:
        parser.error("bundle names are only taken with --export")
    if args.export:
        default_schema = Path(args.bundles_dir) / "schema" / "meta_schema.json"
        schema = args.schema or (default_schema if default_schema.is_file() else None)
        failed = 0
        for root, problems in export(args.bundles_dir, args.export, args.names, args.weights_url, schema).items():
            print(f"wrote {root}: " + ("passes the model zoo's checks" if not problems else
                                       "the model zoo would refuse it:\n  " + "\n  ".join(problems)))
            failed += bool(problems)
        return 1 if failed else 0
    if args.check:
        problems = check_bundles(args.bundles_dir)
        print("\n".join(problems) if problems else "all bundles are in step with " + TEMPLATE)
        return 1 if problems else 0
    for root in write_bundles(args.bundles_dir):
        print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
