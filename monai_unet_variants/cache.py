"""``python -m monai_unet_variants.cache``: what the DICOM reader's cache (``~/.cache/monai_unet_variants``; see
``monai_unet_variants.bundle.user_cache``) or a training bundle's preprocessed-case cache (``--cache_dir``) holds, and
pruning it by hand as the runs prune it after each new entry.

Example::

    python -m monai_unet_variants.cache              # entries, GB and how many running processes use, per kind
    python -m monai_unet_variants.cache --prune 5    # least recently used first, down to 5 GB
    python -m monai_unet_variants.cache --cache_dir bundles/attunet_pancreas/cache --prune 0
"""

from __future__ import annotations

import argparse
import logging

from .bundle.user_cache import CACHE_LIMIT_ENV, DICOM, cache_limit_gb

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m monai_unet_variants.cache [--cache_dir FOLDER] [--prune GB]``: what the DICOM cache (or the
    preprocessed-case cache in ``--cache_dir``) holds, per kind; with ``--prune`` the least recently used entries
    removed until it holds at most that (``0``: all that no running process uses), as the runs themselves do after
    each new entry."""
    parser = argparse.ArgumentParser(prog="python -m monai_unet_variants.cache", description=main.__doc__)
    parser.add_argument("--prune", type=float, default=None, metavar="GB",
                        help="remove the least recently used entries until the cache holds at most this many GB")
    parser.add_argument("--cache_dir", default=None, metavar="FOLDER",
                        help="a training bundle's preprocessed-case cache (its --cache_dir) instead of the DICOM cache")
    args = parser.parse_args(argv)
    if args.prune is not None and not 0 <= args.prune < float("inf"):
        parser.error(f"--prune {args.prune}: expected a number of GB >= 0")
    if args.cache_dir is not None:
        from .bundle.caching import DiskCache

        cache = DiskCache(args.cache_dir, "none").entries
        limit = "the training's --cache_dir_gb"
    else:
        cache, gb = DICOM, cache_limit_gb()
        limit = f"{'none' if gb is None else f'{gb:g} GB'}, {CACHE_LIMIT_ENV}"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.prune is not None:
        removed = cache.prune(args.prune)
        print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")
    print(f"{cache.name} {cache.root} (limit {limit}):")
    for kind, counts in cache.summary().items():
        print(f"  {kind:<14} {counts['entries']:>6} entries {counts['bytes'] / 1e9:>9.3f} GB  "
              f"{counts['in_use']} in use by running processes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
