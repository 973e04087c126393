"""The one cache-directory policy of sharezoo: weights and derived data.

The cache root is, in this order: an explicit ``cache_dir=`` argument → ``$SHAREZOO_CACHE`` →
``$XDG_CACHE_HOME/sharezoo`` (``~/.cache/sharezoo`` when ``XDG_CACHE_HOME`` is unset); the environment is read at call
time. Under it:

- ``<cache>/<arch.tag>/<file>``: verified weight files (``zoo.resolve_pretrained_file``, ``sharezoo download``);
  architecture names are lowercase ``family_variant.tag``, so they never collide with the folders below;
- ``<cache>/derived/<family>/...``: data derived from a dataset or generated, rebuildable at any time and keyed by
  what it was built from: ``derived/signal`` (WFDB window caches, ``datamodules.signal``), ``derived/inpainting``
  (the demo's photo layout, ``datamodules.inpainting``). A new datamodule puts its caches under
  ``cache_dir("derived/<family>")``.

Deleting the cache loses nothing that cannot be fetched or rebuilt.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DERIVED", "cache_dir"]

#: sub-folder of the cache root holding derived (rebuildable) data, one folder per family
DERIVED = "derived"


def cache_dir(subdir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The sharezoo cache root, or ``subdir`` under it (the folder is not created).

    Args:
        subdir: a path under the root, e.g. ``'derived/signal'`` or ``'fusionreid_vitb16_r50.market1501'``.
        cache_dir: an explicit root; wins over ``$SHAREZOO_CACHE`` and the default.

    Returns:
        ``<root>[/<subdir>]`` with ``~`` expanded.
    """
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get("SHAREZOO_CACHE"):
        root = Path(os.environ["SHAREZOO_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sharezoo"
    root = root.expanduser()
    return root / subdir if subdir is not None else root
