"""Up-front checks of a dataset's image files, so one bad file fails ``setup`` instead of a run hours later.

``verify_files`` checks every file of the splits a datamodule will read and reports ALL bad ones at once, by path
(one error listing them, capped, with the count), or skips them with a count in the log (``on_bad_file='skip'``),
never silently.

Modes (``verify``):
- ``'header'`` (default, cheap): the file opens as an image with a positive size, and a PNG ends with its ``IEND``
  chunk / a JPEG with its end-of-image marker; a file whose end looks cut off is then decoded to confirm (so a
  truncated file is found without decoding every file, and a JPEG with trailing bytes is not a false alarm);
- ``'decode'``: every file is fully decoded as the loaders do (:func:`datamodules._image.open_rgb8`); slow on big sets;
- ``'off'``: no check.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from ._image import open_rgb8

_logger = logging.getLogger(__name__)

__all__ = ["BadFilesError", "OnBadFile", "VerifyMode", "check_image", "verify_files"]

VerifyMode = Literal["header", "decode", "off"]
OnBadFile = Literal["error", "skip"]

#: bad files listed by path in one error; the rest are counted
MAX_LISTED = 20

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: how a complete file of a format ends (its last 64 bytes in); a format not listed is trusted after its header
_ENDS_WELL: dict[str, Callable[[bytes], bool]] = {
    "PNG": lambda tail: tail.endswith(_PNG_END),
    "JPEG": lambda tail: tail.rstrip(b"\x00").endswith(b"\xff\xd9"),  # EOI (some writers pad with zeros)
}


class BadFilesError(ValueError):
    """Files of a dataset cannot be read; the message lists them by path (capped) with their count."""


def _tail(path: str | os.PathLike, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - n))
        return f.read()


def check_image(path: str | os.PathLike, verify: VerifyMode = "header") -> str | None:
    """What is wrong with the image at ``path`` (None when it passes the ``verify`` check)."""
    from PIL import Image

    if verify == "off":
        return None
    try:
        if verify == "header":
            with Image.open(path) as im:
                (w, h), fmt = im.size, im.format
            if w <= 0 or h <= 0:
                return f"image size {w}x{h}"
            if fmt not in _ENDS_WELL or _ENDS_WELL[fmt](_tail(path, 64)):
                return None
        open_rgb8(path)  # 'decode', or a header check whose file end looks cut off: decode to be sure
    except Exception as e:  # noqa: BLE001 - any failure to read is the finding
        cause = e.__cause__ or e
        return f"{type(cause).__name__}: {cause}"
    return None


def verify_files(paths: Sequence[str | os.PathLike], *, verify: VerifyMode = "header", on_bad_file: OnBadFile = "error",
                 what: str = "dataset", check: Callable[[str | os.PathLike, VerifyMode], str | None] = check_image,
                 workers: int | None = None) -> set[str]:
    """Check every file in ``paths``; returns the bad ones (as ``str``) when ``on_bad_file='skip'``.

    Args:
        paths: the files to check.
        verify: 'header' (cheap), 'decode' (full decode) or 'off'.
        on_bad_file: 'error' (raise :class:`BadFilesError` listing every bad file) or 'skip' (log them and their count,
            return them for the caller to drop).
        what: what the files are, for messages (``'market1501 query/gallery'``).
        check: the per-file check (default :func:`check_image`).
        workers: threads (default: up to 8).

    Raises:
        ValueError: an unknown ``verify`` or ``on_bad_file``.
        BadFilesError: bad files and ``on_bad_file='error'``.
    """
    if verify not in ("header", "decode", "off"):
        raise ValueError(f"verify must be 'header', 'decode' or 'off', got {verify!r}")
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
    if verify == "off" or not paths:
        return set()
    t0 = time.perf_counter()
    files = [str(p) for p in paths]
    n = workers or min(8, os.cpu_count() or 1)
    if n > 1 and len(files) > 256:
        with ThreadPoolExecutor(n) as pool:
            problems = list(pool.map(lambda p: check(p, verify), files, chunksize=64))
    else:
        problems = [check(p, verify) for p in files]
    bad = {p: why for p, why in zip(files, problems) if why is not None}
    seconds = time.perf_counter() - t0
    if seconds > 10:
        _logger.info("%s: checked %d files in %.0f s (verify=%r; 'off' skips the check)", what, len(files), seconds,
                     verify)
    if not bad:
        return set()
    listed = "\n".join(f"  {p}: {why}" for p, why in list(bad.items())[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    head = f"{what}: {len(bad)} of {len(files)} files cannot be read (verify={verify!r})"
    if on_bad_file == "error":
        raise BadFilesError(f"{head}:\n{listed}{more}\nFix or remove them, or pass on_bad_file='skip' to train "
                            f"without them (skipped files are counted in the log).")
    _logger.warning("%s; skipping them (on_bad_file='skip'):\n%s%s", head, listed, more)
    return set(bad)
