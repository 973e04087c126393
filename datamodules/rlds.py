"""RLDS / TFDS episodes (Open-X, OpenVLA's ``modified_libero_rlds``) read WITHOUT TensorFlow: the TFRecord framing
and the ``tf.train.Example`` protobuf are decoded here (both are small, stable wire formats), images with Pillow.

A TFDS RLDS dataset stores one episode per Example with flattened keys: per-step features are concatenated lists
(``steps/observation/image``: one encoded PNG/JPEG per step; ``steps/action``: T x 7 floats;
``steps/language_instruction``: T strings; ``steps/is_first``: T int64, which gives T). TFRecord CRCs are not
verified (that needs crc32c); a truncated record raises an error naming the file and offset.

:class:`RLDSDataModule` turns the episodes into the same CronusVLA windows as :class:`datamodules.libero.
LiberoDataModule` (q01/q99 statistics, M frames, T-action chunks).
"""
from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._image import to_8bit
from ._layout import layout_error, require_dataset
from .libero import Episode, LiberoDataModule, gripper_to_unit

__all__ = ["read_tfrecord", "parse_example", "encode_example", "write_tfrecord", "read_rlds_episodes",
           "RLDSDataModule"]

RLDS_TREE = """<root>/                                  a TFDS dataset version folder (libero_spatial_no_noops/1.0.0)
  dataset_info.json, features.json
  <name>-train.tfrecord-00000-of-000NN   one tf.train.Example per episode (steps/observation/image, steps/action,
  ...                                    steps/language_instruction, steps/is_first, ...)"""
RLDS_SOURCE = ("Open-X Embodiment (https://robotics-transformer-x.github.io, gs://gresearch/robotics) or OpenVLA's "
               "LIBERO conversion (https://huggingface.co/datasets/openvla/modified_libero_rlds)")


def read_tfrecord(path: str | Path) -> Iterator[bytes]:
    """The records of one TFRecord file (length u64, length CRC u32, data, data CRC u32; CRCs not checked)."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise layout_error(f"{path}: truncated TFRecord header at byte {f.tell() - len(head)}",
                                   name="RLDS", tree=RLDS_TREE, source=RLDS_SOURCE)
            (n,) = struct.unpack("<Q", head[:8])
            data = f.read(n)
            if len(data) < n or len(f.read(4)) < 4:
                raise layout_error(f"{path}: truncated TFRecord record at byte {f.tell()}", name="RLDS",
                                   tree=RLDS_TREE, source=RLDS_SOURCE)
            yield data


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out, shift = 0, 0
    while True:
        b = buf[i]
        out |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return out, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message (varint, 64-bit, length-delimited, 32-bit)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, v


def _feature(buf: bytes) -> list[Any] | np.ndarray:
    for kind, _, lst in _fields(buf):  # oneof: 1 bytes_list, 2 float_list, 3 int64_list
        if kind == 1:
            return [v for _, _, v in _fields(lst)]
        if kind == 2:
            vals = [np.frombuffer(v, "<f4") for _, _, v in _fields(lst)]  # packed or one 32-bit value each
            return np.concatenate(vals) if vals else np.zeros(0, np.float32)
        if kind == 3:
            ints: list[int] = []
            for _, wt, v in _fields(lst):
                if wt == 2:  # packed
                    j = 0
                    while j < len(v):
                        x, j = _varint(v, j)
                        ints.append(x - (1 << 64) if x >= 1 << 63 else x)
                else:
                    ints.append(v - (1 << 64) if v >= 1 << 63 else v)
            return np.asarray(ints, dtype=np.int64)
    return []


def parse_example(buf: bytes) -> dict[str, Any]:
    """A serialised ``tf.train.Example`` -> {key: list of bytes | float32 array | int64 array}."""
    out: dict[str, Any] = {}
    for num, _, features in _fields(buf):
        if num != 1:
            continue
        for _, _, entry in _fields(features):
            key, value = None, b""
            for n, _, v in _fields(entry):
                if n == 1:
                    key = v.decode()
                elif n == 2:
                    value = v
            if key is not None:
                out[key] = _feature(value)
    return out


def _enc_varint(x: int) -> bytes:
    x &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)


def _ld(num: int, payload: bytes) -> bytes:
    return _enc_varint(num << 3 | 2) + _enc_varint(len(payload)) + payload


def encode_example(features: dict[str, Any]) -> bytes:
    """{key: list of bytes/str | float array | int array} -> a serialised ``tf.train.Example`` (for tests and
    small conversions)."""
    entries = b""
    for key, val in features.items():
        if isinstance(val, (list, tuple)) and (not val or isinstance(val[0], (bytes, str))):
            lst = b"".join(_ld(1, v.encode() if isinstance(v, str) else v) for v in val)
            feat = _ld(1, lst)
        else:
            arr = np.asarray(val)
            if arr.dtype.kind == "f":
                feat = _ld(2, _ld(1, arr.astype("<f4").tobytes()))
            else:
                feat = _ld(3, _ld(1, b"".join(_enc_varint(int(x)) for x in arr.ravel())))
        entries += _ld(1, _ld(1, key.encode()) + _ld(2, feat))
    return _ld(1, entries)


def write_tfrecord(path: str | Path, records: list[bytes]) -> Path:
    """Write records with TFRecord framing (CRC fields zero: readers here do not check them)."""
    path = Path(path)
    with open(path, "wb") as f:
        for r in records:
            f.write(struct.pack("<Q", len(r)) + b"\0" * 4 + r + b"\0" * 4)
    return path


def _decode_image(b: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(to_8bit(Image.open(io.BytesIO(b)), "RGB", "an RLDS image"))


def read_rlds_episodes(root: str | Path, split: str = "train", image_key: str = "steps/observation/image",
                       action_key: str = "steps/action", instruction_key: str = "steps/language_instruction",
                       gripper: str = "libero", max_episodes: int | None = None) -> list[Episode]:
    """Episodes of a TFDS RLDS folder (``*-<split>.tfrecord*`` files).

    Args:
        root: the dataset version folder.
        split: TFDS split.
        image_key: flattened key of the per-step encoded images.
        action_key: flattened key of the per-step actions.
        instruction_key: flattened key of the per-step instruction.
        gripper: 'libero' (-1 open / +1 close -> [0, 1] with 1 open) or 'unit' (already [0, 1], 1 open).
        max_episodes: stop after this many.
    """
    root = require_dataset(root, name="RLDS", tree=RLDS_TREE, source=RLDS_SOURCE, required=[f"*-{split}.tfrecord*"])
    out: list[Episode] = []
    for path in sorted(root.glob(f"*-{split}.tfrecord*")):
        for k, rec in enumerate(read_tfrecord(path)):
            ex = parse_example(rec)
            missing = [key for key in (image_key, action_key, "steps/is_first") if key not in ex]
            if missing:
                raise layout_error(f"{path} episode {k} lacks {', '.join(missing)} (keys: {sorted(ex)[:12]})",
                                   name="RLDS", tree=RLDS_TREE, source=RLDS_SOURCE)
            n = len(ex["steps/is_first"])
            actions = np.asarray(ex[action_key], dtype=np.float64).reshape(n, -1)
            if gripper == "libero":
                actions[:, -1:] = gripper_to_unit(actions[:, -1:])
            frames = np.stack([_decode_image(b) for b in ex[image_key]])
            instr = ex.get(instruction_key, [b""])
            text = (instr[0] if len(instr) else b"").decode() if isinstance(instr, list) else ""
            out.append(Episode(frames, actions, text, f"{path}#{k}"))
            if max_episodes and len(out) >= max_episodes:
                return out
    return out


class RLDSDataModule(LiberoDataModule):
    """CronusVLA windows from a TFDS RLDS dataset (read without TensorFlow); the last ``val_demos`` episodes are
    held out.

    Args:
        root: the dataset version folder.
        image_key: flattened image key (``steps/observation/image``; Bridge: ``steps/observation/image_0``).
        action_key: flattened action key.
        instruction_key: flattened instruction key.
        gripper: 'libero' or 'unit' (see :func:`read_rlds_episodes`).
        max_episodes: read at most this many episodes.
        **kwargs: :class:`LiberoDataModule` arguments (num_frames, chunk_len, image_size, tokenizer, val_demos, ...).
    """

    def __init__(self, root: str, image_key: str = "steps/observation/image", action_key: str = "steps/action",
                 instruction_key: str = "steps/language_instruction", gripper: str = "libero",
                 max_episodes: int | None = None, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.keys = dict(image_key=image_key, action_key=action_key, instruction_key=instruction_key,
                         gripper=gripper, max_episodes=max_episodes)

    def files(self) -> list[Path]:
        root = require_dataset(self.root, name="RLDS", tree=RLDS_TREE, source=RLDS_SOURCE,
                               required=["*-train.tfrecord*"])
        return sorted(root.glob("*-train.tfrecord*"))

    def _episodes(self) -> tuple[list[Episode], list[Episode]]:
        eps = read_rlds_episodes(self.root, "train", **self.keys)
        k = min(self.val_demos, len(eps) - 1)
        return eps[:len(eps) - k], eps[len(eps) - k:]
