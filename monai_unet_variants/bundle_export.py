"""Model-zoo copies of the bundles that run on their own, and the zoo's checks of a bundle folder.

The bundles under ``bundles/`` import this package. An exported copy carries, in its ``scripts/`` folder, exactly the
modules of this package that its configs and documented commands import (followed import by import), formatted and
linted with the model zoo's black/isort/flake8 settings; its configs, docs and metadata name ``scripts`` instead of
``monai_unet_variants``, so that the copy runs wherever MONAI and the packages in its metadata are installed. It is
laid out as the zoo lays out a bundle (folder named ``pancreas_ct_<network>_segmentation``, ``models/model.pt`` or a
``large_files.yml`` naming where it is downloaded from, no file over the zoo's 25 MB).

    python -m monai_unet_variants.bundle_family --export DIR [NAME ...] [--weights_url URL]

As in the zoo, an exported bundle runs from its own folder (``cd DIR/pancreas_ct_attunet_segmentation`` and then
``python -m monai.bundle run --config_file configs/train.json``): that puts ``scripts`` on Python's path, as MONAI
Label does for a bundle it hosts.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bundle.training_options import TRAINING_OPTIONS

__all__ = ["FILE_CAP_MB", "ZOO_FLAKE8", "export_bundle", "needed_modules", "zoo_json", "zoo_problems"]

PACKAGE = "monai_unet_variants"
PACKAGE_DIR = Path(__file__).resolve().parent
#: the zoo's cap on one file of a bundle; larger weights go through large_files.yml
FILE_CAP_MB = 25
#: the flake8 settings of the model zoo's setup.cfg (Project-MONAI/model-zoo)
ZOO_FLAKE8 = """[flake8]
select = B,C,E,F,N,P,T4,W,B9
max_line_length = 120
ignore = E203,E501,E741,W503,W504,C408,N812,B023
per_file_ignores = __init__.py: F401, __main__.py: F401
"""
LINE_LENGTH = 120
# a reference to this package's code in a config or a doc: an import of it, or a dotted path into it (a plain mention,
# such as the cache folder ~/.cache/monai_unet_variants, is left alone)
_REF = re.compile(rf"\bimport {PACKAGE}\b|\b{PACKAGE}(?=\.[A-Za-z_])((?:\.[A-Za-z_]\w*)*)")
_CODE_IMPORT = re.compile(rf"^(\s*)(from|import) {PACKAGE}\b", re.MULTILINE)
_REQUIRED = ("configs/metadata.json", "configs/train.json", "configs/inference.json", "docs/README.md", "LICENSE")
_HASH_TYPES = ("", "md5", "sha1", "sha256", "sha512")


# --------------------------------------------------------------------------------------------- which code
def _module_file(parts: tuple[str, ...]) -> Path | None:
    """The file of module ``PACKAGE.<parts>`` (a package's ``__init__.py``), or ``None``."""
    base = PACKAGE_DIR.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if parts and base.with_suffix(".py").is_file() else None


def _longest_module(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The longest leading part of a dotted path that is a module (``bundle.find_bundle_root`` -> ``bundle``)."""
    return next(parts[:n] for n in range(len(parts), -1, -1) if _module_file(parts[:n]))


def _imported(parts: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The modules of this package that module ``parts`` imports anywhere in its code (functions included)."""
    path = _module_file(parts)
    assert path is not None
    package = parts if path.name == "__init__.py" else parts[:-1]
    found: set[tuple[str, ...]] = set()
    source = path.read_text()
    if path.name == "__init__.py" and "pkgutil.iter_modules(__path__)" in source:  # a package importing all its modules
        found.update(parts + (m.name,) for m in pkgutil.iter_modules([str(path.parent)]))
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = base + tuple(node.module.split(".")) if node.module else base
            elif node.module and node.module.split(".")[0] == PACKAGE:
                mod = tuple(node.module.split(".")[1:])
            else:
                continue
            found.add(_longest_module(mod))
            found.update(mod + (a.name,) for a in node.names if _module_file(mod + (a.name,)))
        elif isinstance(node, ast.Import):
            found.update(_longest_module(tuple(a.name.split(".")[1:])) for a in node.names
                         if a.name.split(".")[0] == PACKAGE)
    return found


def needed_modules(texts: Sequence[str]) -> list[tuple[str, ...]]:
    """Every module of this package that ``texts`` (configs, docs) reference, with all that they import and their
    parent packages; ``()`` is the package itself.

    Examples::

        >>> ("bundle", "checks") in needed_modules(['"$monai_unet_variants.bundle.CheckCased"'])
        True
        >>> ("compare",) in needed_modules(['"$monai_unet_variants.bundle.CheckCased"'])
        False
    """
    # "import monai_unet_variants" names the package itself, "monai_unet_variants.bundle.x" a path into it
    todo = {()} | {_longest_module(tuple(m.group(1).split(".")[1:]) if m.group(1) else ())
                   for text in texts for m in _REF.finditer(text)}
    done: set[tuple[str, ...]] = set()
    while todo:
        parts = todo.pop()
        if parts in done:
            continue
        done.add(parts)
        todo |= {parts[:i] for i in range(len(parts))} | _imported(parts)
    return sorted(done)


def _formatters() -> tuple[Any, Any]:
    try:
        import black
        import isort
    except ImportError as err:
        raise ImportError("exporting a bundle formats its scripts with the model zoo's black and isort settings: "
                          "pip install 'monai-unet-variants[zoo]'") from err
    return black, isort


@functools.lru_cache(maxsize=512)  # every bundle carries the same modules: each text is formatted once
def _isorted(code: str) -> str:
    """``code`` with its imports as the zoo's isort (profile black, line length 120) sorts them."""
    return _formatters()[1].code(code, profile="black", line_length=LINE_LENGTH)


@functools.lru_cache(maxsize=512)
def _blacked(code: str) -> str:
    """``code`` as the zoo's black (line length 120) formats it."""
    black = _formatters()[0]
    return black.format_str(code, mode=black.Mode(line_length=LINE_LENGTH))


def _zoo_format(code: str) -> str:
    """``code`` as the zoo's isort and black leave it."""
    return _blacked(_isorted(code))


def to_scripts(text: str) -> str:
    """A config's or doc's references to this package turned into references to the bundle's ``scripts``.

    Examples::

        >>> to_scripts('"$monai_unet_variants.bundle.find_bundle_root()" in ~/.cache/monai_unet_variants')
        '"$scripts.bundle.find_bundle_root()" in ~/.cache/monai_unet_variants'
    """
    return _REF.sub(lambda m: "import scripts" if m.group(1) is None else "scripts" + m.group(1), text)


# --------------------------------------------------------------------------------------------- the export
def zoo_json(obj: Any) -> str:
    """``obj`` as JSON text the way the zoo's ``pretty-format-json --indent=4`` hook writes it (the bundles' format)."""
    return json.dumps(obj, indent=4) + "\n"


def _digest(path: Path) -> str:
    md5 = hashlib.md5()  # noqa: S324 - the zoo's large_files.yml hash, not security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
    return md5.hexdigest()


def export_bundle(bundle_dir: str | Path, dest: str | Path, zoo_name: str, weights_url: str | None = None) -> Path:
    """Write a self-contained, zoo-layout copy of the bundle in ``bundle_dir`` to ``dest/zoo_name`` and return it.

    Args:
        bundle_dir: a bundle folder of this repository (its configs import ``monai_unet_variants``).
        dest: folder to write the copy in (created); an existing copy of the same name is replaced.
        zoo_name: the copy's folder name (``bundle_family.zoo_name``).
        weights_url: where ``models/model.pt`` can be downloaded: written to ``large_files.yml`` (with the md5 of the
            local ``models/model.pt`` when there is one) instead of copying the file. Without it, a local
            ``models/model.pt`` up to ``FILE_CAP_MB`` is copied; a larger one is an error.

    Raises:
        ValueError: the bundle's ``model.pt`` exceeds the zoo's cap and no ``weights_url`` was given.
    """
    bundle_dir, root = Path(bundle_dir), Path(dest) / zoo_name
    weights = bundle_dir / "models" / "model.pt"
    if weights.is_file() and weights.stat().st_size > FILE_CAP_MB * 2**20 and not weights_url:
        raise ValueError(f"{weights}: {weights.stat().st_size / 2**20:.1f} MB exceeds the model zoo's {FILE_CAP_MB} MB "
                         "per file; upload it and pass --weights_url (it goes into large_files.yml)")
    if root.exists():
        shutil.rmtree(root)
    (root / "models").mkdir(parents=True)
    texts = {}
    for path in sorted((bundle_dir / "configs").iterdir()):
        texts[f"configs/{path.name}"] = path.read_text()
    texts["docs/README.md"] = _without_provenance((bundle_dir / "docs" / "README.md").read_text())
    modules = needed_modules(list(texts.values()))
    for rel, text in texts.items():
        text = to_scripts(text)
        if rel.endswith(".json"):
            config = json.loads(text)
            if rel == "configs/metadata.json":
                config["required_packages_version"].pop(PACKAGE, None)
            elif "initialize" in config:
                _add_scripts_guard(config)
            text = zoo_json(config)
        elif rel == "docs/README.md":
            text = _export_doc(text, bundle_dir.name, modules)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    shutil.copy2(bundle_dir / "LICENSE", root / "LICENSE")
    for parts in modules:
        source = _module_file(parts)
        assert source is not None
        target = root / "scripts" / source.relative_to(PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_zoo_format(_CODE_IMPORT.sub(r"\1\2 scripts", source.read_text())))
    if weights_url:
        entry = {"path": "models/model.pt", "url": weights_url,
                 "hash_val": _digest(weights) if weights.is_file() else "", "hash_type": "md5" if weights.is_file() else ""}
        import yaml

        (root / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}, sort_keys=False))
    elif weights.is_file():
        shutil.copy2(weights, root / "models" / "model.pt")
    options = weights.parent / TRAINING_OPTIONS  # what the weights were trained with: inference's defaults
    if options.is_file() and (weights_url or weights.is_file()):
        (root / "models").mkdir(exist_ok=True)
        (root / "models" / TRAINING_OPTIONS).write_text(zoo_json(json.loads(options.read_text())))
    return root


def _add_scripts_guard(config: dict) -> None:
    """Give ``config`` a first ``initialize`` step that stops with a plain message when ``scripts`` cannot be
    imported (the bundle run from another folder): MONAI would otherwise fail on the first expression using it."""
    imports = list(config.get("imports", []))
    config["imports"] = imports + [i for i in ("$import sys", "$import types") if i not in imports]
    guard = ("$None if isinstance(scripts, types.ModuleType) else sys.exit('this bundle imports its own scripts/ folder, "
             "which is not on the Python path: run the command from the bundle folder, as for any model-zoo bundle, or "
             "add that folder to PYTHONPATH')")
    config["initialize"] = [guard, *config["initialize"]]


def _without_provenance(doc: str) -> str:
    """A bundle doc without what only concerns this repository: the notes that ``bundle_family`` generated it."""
    from .bundle_family import DOC_MARK

    doc = doc.replace(DOC_MARK + "\n", "")
    return re.sub(r"This bundle is generated from `\w+` by `python -m monai_unet_variants\.bundle_family`.*?\n\n", "",
                  doc, flags=re.DOTALL)


def _export_doc(text: str, folder: str, modules: Sequence[tuple[str, ...]]) -> str:
    """The bundle's docs with paths relative to the exported folder and a section on what the copy carries."""
    text = text.replace(f"bundles/{folder}/", "").replace(" --filepath bundles/schema/meta_schema.json", "")
    from . import __version__

    carried = ", ".join(f"`{'.'.join(('scripts', *p))}`" for p in modules)
    return text + (
        "\n## This copy\n\n"
        f"Exported from monai-unet-variants {__version__} by `python -m monai_unet_variants.bundle_family --export`. "
        f"It runs on its own: `scripts/` carries the package code its configs and the commands above import "
        f"({carried}), and `configs/metadata.json` lists the packages to install beside MONAI. Run the commands "
        "from this folder, as for every model-zoo bundle (that puts `scripts` on Python's path; MONAI Label does the "
        "same for a bundle it hosts), or put this folder on `PYTHONPATH`.\n")


# --------------------------------------------------------------------------------------------- the zoo's checks
def _large_files(path: Path) -> tuple[list[dict], list[str]]:
    """The entries of a ``large_files.yml`` and what is wrong with it (the zoo downloads each ``url`` to ``path``)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        return [], [f"{path.name}: not YAML ({err})"]
    entries = data.get("large_files") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        return [], [f"{path.name}: needs a non-empty list under 'large_files'"]
    problems = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not {"path", "url"} <= set(e):
            problems.append(f"{path.name}: entry {i} needs 'path' and 'url'")
            continue
        if Path(str(e["path"])).is_absolute() or ".." in Path(str(e["path"])).parts:
            problems.append(f"{path.name}: entry {i} path {e['path']!r} must lie inside the bundle")
        if not str(e["url"]).startswith(("http://", "https://")):
            problems.append(f"{path.name}: entry {i} url {e['url']!r} is not an http(s) address")
        if str(e.get("hash_type", "")).lower() not in _HASH_TYPES:
            problems.append(f"{path.name}: entry {i} hash_type {e['hash_type']!r} is not one of {_HASH_TYPES[1:]}")
        if bool(e.get("hash_val")) != bool(e.get("hash_type")):
            problems.append(f"{path.name}: entry {i} gives hash_val and hash_type only together")
    return entries, problems


def _lint(scripts: Path) -> list[str]:
    """What the zoo's isort, black and flake8 settings find in ``scripts/``."""
    problems = []
    for path in sorted(scripts.rglob("*.py")):
        code = path.read_text()
        if _isorted(code) != code:
            problems.append(f"scripts/{path.relative_to(scripts)}: imports not sorted as the zoo's isort sorts them")
        if _blacked(code) != code:
            problems.append(f"scripts/{path.relative_to(scripts)}: not formatted as the zoo's black formats it")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as cfg:
        cfg.write(ZOO_FLAKE8)
    try:
        proc = subprocess.run([sys.executable, "-m", "flake8", "--config", cfg.name, str(scripts)],
                              capture_output=True, text=True)
    finally:
        Path(cfg.name).unlink()
    if proc.returncode and "No module named flake8" in proc.stderr:
        return [*problems, "flake8 is not installed (pip install 'monai-unet-variants[zoo]'): scripts/ not linted"]
    problems += [f"flake8: {line.replace(str(scripts), 'scripts')}" for line in proc.stdout.splitlines()]
    if proc.returncode and not proc.stdout:
        problems.append(f"flake8 failed: {proc.stderr.strip()}")
    return problems


def zoo_problems(bundle_dir: str | Path, schema: str | Path | None = None, lint: bool = True) -> list[str]:
    """What the MONAI model zoo's checks would reject in a bundle folder (empty: nothing).

    Reproduced from what the zoo's CI and pre-commit hooks check, not fetched: the required files, ``models/model.pt``
    in the folder or in a ``large_files.yml`` of the zoo's form, version and changelog, the metadata against the
    bundle schema (``schema``: a local copy of it; MONAI downloads the one the metadata names otherwise), JSON as
    ``pretty-format-json --indent=4`` writes it, no file over ``FILE_CAP_MB``, no requirement on this package, and
    with ``lint`` the ``scripts/`` folder under the zoo's isort, black and flake8 settings.
    """
    root = Path(bundle_dir)
    problems = [f"{rel}: missing" for rel in _REQUIRED if not (root / rel).is_file()]
    large = next((root / n for n in ("large_files.yml", "large_files.yaml", "large_files.json") if (root / n).is_file()),
                 None)
    entries: list[dict] = []
    if large is not None:
        entries, found = _large_files(large)
        problems += found
    if not (root / "models" / "model.pt").is_file() and "models/model.pt" not in {str(e.get("path")) for e in entries}:
        problems.append("models/model.pt: missing, and no large_files.yml says where to download it")
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and path.stat().st_size > FILE_CAP_MB * 2**20:
            problems.append(f"{rel}: {path.stat().st_size / 2**20:.1f} MB, over the zoo's {FILE_CAP_MB} MB per file "
                            "(list it in large_files.yml instead)")
        if path.suffix == ".json" and path.is_file():
            text = path.read_text()
            try:
                pretty = zoo_json(json.loads(text))
            except json.JSONDecodeError as err:
                problems.append(f"{rel}: not JSON ({err})")
                continue
            if text != pretty:
                problems.append(f"{rel}: not formatted as the zoo's pretty-format-json --indent=4 formats it")
    meta_file = root / "configs" / "metadata.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("version") not in meta.get("changelog", {}):
            problems.append(f"configs/metadata.json: version {meta.get('version')!r} has no entry in changelog")
        if PACKAGE in meta.get("required_packages_version", {}):
            problems.append(f"configs/metadata.json: requires {PACKAGE}, which the zoo's runner cannot install")
        try:
            from monai.bundle import verify_metadata

            # without a local copy MONAI downloads the schema that the metadata names
            target = schema or Path(tempfile.mkdtemp(prefix="muv_schema_")) / "schema.json"
            verify_metadata(meta_file=str(meta_file), filepath=str(target))
        except Exception as err:  # the schema check raises ValueError/ValidationError with the reason
            problems.append(f"configs/metadata.json: fails the bundle schema: {err}")
    if lint and (root / "scripts").is_dir():
        problems += _lint(root / "scripts")
    return problems
