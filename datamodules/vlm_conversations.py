"""Image–text conversations in the LLaVA / InternVL / NEO annotation layout, ChatML-tokenised and packed.

On disk: a JSON list or a JSONL file of records ``{"image": "rel/path.png" | ["a.png", "b.png"], "conversations":
[{"from": "human", "value": "<image>\\nquestion"}, {"from": "gpt", "value": "answer"}, ...]}`` (image paths relative
to the annotation file's folder, or to ``image_root``); a record without ``image`` is text-only. Each ``<image>`` is
replaced by ``<img>`` + N × ``<IMG_CONTEXT>`` + ``</img>`` (N = the image's token count after the native-resolution
smart resize to multiples of the model's token size within the stage's pixel bounds; several images share
``max_pixels · 2 / n``), turns are ChatML (``<|im_start|>user ... <|im_end|>``), and only the assistant's tokens
(its answer and ``<|im_end|>``) are supervised. Samples are packed greedily into rows of ``max_len`` tokens with
their document index, so attention never crosses a document (NEO's packed training).

Also here, real data that runs offline, labelled for what it is: scikit-image's sample photographs captioned from
their documentation (:func:`write_skimage_captions`) and scikit-learn's handwritten digits as a VQA set
(:func:`write_digits_vqa`).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from zoo.neo import IMAGENET_MEAN, IMAGENET_STD, PIXEL_BOUNDS, smart_resize

from ._base import SplitDataModule
from ._image import open_rgb8
from ._layout import layout_error, require_dataset
from .stdlib_text import ReferenceTokenizer

__all__ = [
    "ChatTokenizer", "ConversationFormatError", "ConversationDataset", "VLMConversationDataModule", "collate_packed",
    "load_image", "pack_lengths", "read_annotations", "write_digits_vqa", "write_skimage_captions",
]

SPECIALS = ("<|im_start|>", "<|im_end|>", "<img>", "<IMG_CONTEXT>", "</img>", "<pad>")
IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IGNORE = -100
TREE = """<root>/
  train/vqa.jsonl      one record per line: {"image": "images/0001.png", "conversations": [{"from": "human",
  val/vqa.jsonl          "value": "<image>\\nhow many circles are there?"}, {"from": "gpt", "value": "2"}]}
  test/vqa.jsonl       (image paths relative to the jsonl's folder)
  */images/*.png"""
SOURCE = ("the LLaVA / InternVL / NEO conversation layout; the compositional scene set is written by "
          "datamodules.synthetic.scenes.write_scene_dataset (synthetic)")


class ConversationFormatError(ValueError):
    """A malformed annotation record (the message names the file and the line)."""


# ---------------------------------------------------------------------------------------------------- tokenizer
class ChatTokenizer:
    """The GPT-2 byte-level BPE (bundled, :class:`~datamodules.stdlib_text.ReferenceTokenizer`) plus the ChatML and
    image special tokens after its 50,257 ids; the vocabulary is padded to a multiple of 64 (50,304)."""

    def __init__(self) -> None:
        self.bpe = ReferenceTokenizer()
        base = self.bpe.vocab_size
        self.special = {s: base + i for i, s in enumerate(SPECIALS)}
        self.vocab_size = int(math.ceil((base + len(SPECIALS)) / 64) * 64)
        self.pad_id = self.special["<pad>"]
        self.im_end_id = self.special["<|im_end|>"]

    @property
    def image_token_ids(self) -> list[int]:
        """Ids of ``<img>``, ``<IMG_CONTEXT>``, ``</img>``."""
        return [self.special["<img>"], self.special["<IMG_CONTEXT>"], self.special["</img>"]]

    def encode(self, text: str) -> list[int]:
        """Ids of plain text (special-token strings in it are plain text)."""
        return self.bpe.encode(text)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of ids; special tokens are written by name, ``<|im_end|>`` ends the text, padding is dropped."""
        out, inv = [], {v: k for k, v in self.special.items()}
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == self.im_end_id:
                break
            if i in inv:
                out.append("" if i == self.pad_id else inv[i])
            elif i < self.bpe.vocab_size:
                out.append(self.bpe.decode([i]))
        return "".join(out)

    def prompt(self, question: str, image_tokens: list[int] = ()) -> list[int]:
        """ChatML ids of one user turn (``<image>`` placeholders expanded) followed by the assistant header."""
        ids, _ = self.turn("user", question, image_tokens)
        return ids + self._header("assistant")

    def _header(self, role: str) -> list[int]:
        return [self.special["<|im_start|>"]] + self.encode(f"{role}\n")

    def turn(self, role: str, text: str, image_tokens: list[int] = ()) -> tuple[list[int], list[int]]:
        """(ids, images used) of ``<|im_start|>role\\ntext<|im_end|>\\n`` with each ``<image>`` expanded to
        ``<img>`` + n × ``<IMG_CONTEXT>`` + ``</img>`` (n from ``image_tokens``, in order)."""
        parts = text.split(IMAGE_PLACEHOLDER)
        if len(parts) - 1 > len(image_tokens):
            raise ConversationFormatError(f"{len(parts) - 1} <image> placeholders but {len(image_tokens)} images")
        ids = self._header(role)
        for j, part in enumerate(parts):
            if j:
                ids += [self.special["<img>"]] + [self.special["<IMG_CONTEXT>"]] * image_tokens[j - 1]
                ids += [self.special["</img>"]]
            ids += self.encode(part)
        return ids + [self.im_end_id] + self.encode("\n"), list(image_tokens[: len(parts) - 1])


# ------------------------------------------------------------------------------------------------ annotations
def read_annotations(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Validated records of a JSON list or JSONL file; ``image`` becomes a list of absolute paths.

    Raises:
        ConversationFormatError: bad JSON, no ``conversations``, a role that is not human/gpt/system, turns that do
            not alternate human -> gpt, or a count of ``<image>`` placeholders that differs from the images.
        FileNotFoundError: an image that does not exist (its record named).
    """
    path = Path(path)
    text = path.read_text()
    try:
        rows = json.loads(text) if path.suffix == ".json" else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ConversationFormatError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'JSONL'}: {e}")
    root = Path(image_root) if image_root is not None else path.parent
    out = []
    for n, r in enumerate(rows, 1):
        where = f"{path}:{n}"
        conv = r.get("conversations") if isinstance(r, dict) else None
        if not isinstance(conv, list) or not conv:
            raise ConversationFormatError(f"{where}: a record needs a non-empty 'conversations' list")
        turns = [t for t in conv if isinstance(t, dict) and ROLES.get(t.get("from")) != "system"]
        for t in conv:
            if not isinstance(t, dict) or t.get("from") not in ROLES or not isinstance(t.get("value"), str):
                raise ConversationFormatError(f"{where}: each turn is {{'from': human|gpt|system, 'value': str}}, "
                                              f"got {t!r}")
        want = ["user", "assistant"] * ((len(turns) + 1) // 2)
        if [ROLES[t["from"]] for t in turns] != want[: len(turns)] or len(turns) % 2:
            raise ConversationFormatError(f"{where}: turns must alternate human, gpt, ... and end with gpt")
        images = r.get("image") or []
        images = [images] if isinstance(images, str) else list(images)
        n_ph = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in conv)
        if n_ph != len(images):
            raise ConversationFormatError(f"{where}: {n_ph} <image> placeholders but {len(images)} images")
        paths = [root / p for p in images]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{where}: image {p} not found (paths are relative to {root})")
        out.append({**r, "image": paths, "conversations": conv, "source": where})
    return out


def load_image(path: str | os.PathLike, token_px: int, min_pixels: int, max_pixels: int) -> torch.Tensor:
    """An RGB image smart-resized to multiples of ``token_px`` within the pixel bounds, ImageNet-normalised (3, H, W).

    Args:
        path: the image file.
        token_px: pixels per token side (32 for NEO).
        min_pixels: lower bound of the area.
        max_pixels: upper bound of the area.
    """
    try:
        im = Image.fromarray(open_rgb8(path))  # 16-bit images rescaled, not clipped
    except (OSError, RuntimeError, ValueError) as e:
        raise OSError(f"cannot read image {path}: {e.__cause__ or e}") from e
    h, w = smart_resize(im.height, im.width, token_px, min_pixels, max_pixels)
    if (h, w) != (im.height, im.width):
        im = im.resize((w, h), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def image_size(path: Path, token_px: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The resized (H, W) of an image, from its header only."""
    with Image.open(path) as im:
        return smart_resize(im.height, im.width, token_px, min_pixels, max_pixels)


# ----------------------------------------------------------------------------------------- samples and packing
class ConversationDataset(Dataset):
    """Tokenised samples of validated records: ``input_ids``, ``labels`` (the ids on assistant tokens, -100
    elsewhere; *not* shifted — the loss shifts once), ``images``.

    Args:
        records: :func:`read_annotations`'s output.
        tokenizer: the chat tokenizer.
        token_px: pixels per token side.
        min_pixels: smart-resize lower bound.
        max_pixels: smart-resize upper bound (divided by the image count ÷ 2 for multi-image samples).
    """

    def __init__(self, records: list[dict[str, Any]], tokenizer: ChatTokenizer, token_px: int, min_pixels: int,
                 max_pixels: int) -> None:
        self.records, self.tok = records, tokenizer
        self.token_px, self.min_pixels, self.max_pixels = token_px, min_pixels, max_pixels
        self.lengths = [len(self._ids(r, [self._size(r, p) for p in r["image"]])[0]) for r in records]

    def _max_pixels(self, r: dict) -> int:
        n = len(r["image"])
        return self.max_pixels if n <= 1 else max(self.min_pixels, self.max_pixels * 2 // n)

    def _size(self, r: dict, p: Path) -> tuple[int, int]:
        return image_size(p, self.token_px, self.min_pixels, self._max_pixels(r))

    def _ids(self, r: dict, sizes: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        counts = [(h // self.token_px) * (w // self.token_px) for h, w in sizes]
        ids: list[int] = []
        labels: list[int] = []
        for t in r["conversations"]:
            role = ROLES[t["from"]]
            turn, used = self.tok.turn(role, t["value"], counts)
            counts = counts[len(used):]
            ids += turn
            if role == "assistant":  # the header is context; the answer and <|im_end|> are supervised
                head = len(self.tok._header(role))
                labels += [IGNORE] * head + turn[head:-1] + [IGNORE]  # the trailing "\n" is not supervised
            else:
                labels += [IGNORE] * len(turn)
        return ids, labels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        images = [load_image(p, self.token_px, self.min_pixels, self._max_pixels(r)) for p in r["image"]]
        ids, labels = self._ids(r, [tuple(im.shape[1:]) for im in images])
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "images": images}


def pack_lengths(lengths: list[int], max_len: int, order: list[int] | None = None) -> list[list[int]]:
    """Greedy first-fit packing of samples (by index, in ``order``) into rows of at most ``max_len`` tokens.

    Raises:
        ValueError: a sample longer than ``max_len`` (images cannot be cut).
    """
    rows: list[list[int]] = []
    free: list[int] = []
    for i in (order if order is not None else range(len(lengths))):
        n = lengths[i]
        if n > max_len:
            raise ValueError(f"sample {i} has {n} tokens > the packing length {max_len}: raise max_len or lower "
                             "max_pixels")
        for j, f in enumerate(free):
            if f >= n:
                rows[j].append(i)
                free[j] -= n
                break
        else:
            rows.append([i])
            free.append(max_len - n)
    return rows


class PackedDataset(Dataset):
    """Rows of packed samples (:func:`pack_lengths`, packed once in a seeded order).

    Args:
        samples: the per-sample dataset.
        max_len: the packing length.
        seed: seed of the packing order (None: the file order).
    """

    def __init__(self, samples: ConversationDataset, max_len: int, seed: int | None = 0) -> None:
        self.samples = samples
        order = None if seed is None else np.random.default_rng(seed).permutation(len(samples)).tolist()
        self.rows = pack_lengths(samples.lengths, max_len, order)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> list[dict[str, Any]]:
        return [self.samples[j] for j in self.rows[i]]


def collate_packed(rows: list[list[dict[str, Any]]], pad_id: int) -> dict[str, Any]:
    """A batch of packed rows: ``input_ids`` / ``labels`` / ``doc_ids`` (B, L) right-padded (padding: its own
    document -1, label -100), ``loss_weight`` (B, L) = 1/sqrt(supervised tokens of the token's sample) on supervised
    tokens (NEO / InternVL "square" weighting), ``images`` in order of appearance, ``n_docs``."""
    seqs = []
    for row in rows:
        ids, lab, doc, wt = [], [], [], []
        for d, s in enumerate(row):
            n_sup = int((s["labels"] != IGNORE).sum())
            ids.append(s["input_ids"])
            lab.append(s["labels"])
            doc.append(torch.full_like(s["input_ids"], d))
            wt.append((s["labels"] != IGNORE).float() / max(n_sup, 1) ** 0.5)
        seqs.append([torch.cat(x) for x in (ids, lab, doc, wt)])
    n = max(s[0].shape[0] for s in seqs)

    def pad(i: int, value: float) -> torch.Tensor:
        return torch.stack([torch.nn.functional.pad(s[i], (0, n - s[i].shape[0]), value=value) for s in seqs])

    return {"input_ids": pad(0, pad_id), "labels": pad(1, IGNORE), "doc_ids": pad(2, -1), "loss_weight": pad(3, 0.0),
            "images": [im for row in rows for s in row for im in s["images"]], "n_docs": sum(map(len, rows))}


def collate_prompts(samples: list[dict[str, Any]], tokenizer: ChatTokenizer) -> dict[str, Any]:
    """Evaluation batch: each sample's prompt (everything before its last assistant answer) left-padded, with the
    reference answer text. ``doc_ids`` is -1 on the padding."""
    prompts, answers = [], []
    for s in samples:
        sup = (s["labels"] != IGNORE).nonzero().flatten()
        start = int(sup[0]) if len(sup) else s["input_ids"].shape[0]
        prompts.append(s["input_ids"][:start])
        answers.append(tokenizer.decode(s["input_ids"][start:]))
    n = max(p.shape[0] for p in prompts)
    ids = torch.stack([torch.nn.functional.pad(p, (n - p.shape[0], 0), value=tokenizer.pad_id) for p in prompts])
    doc = torch.stack([torch.nn.functional.pad(torch.zeros_like(p), (n - p.shape[0], 0), value=-1) for p in prompts])
    return {"input_ids": ids, "doc_ids": doc, "answers": answers,
            "images": [im for s in samples for im in s["images"]], "kinds": [s.get("kind", "") for s in samples]}


class _WithKind(ConversationDataset):
    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**super().__getitem__(i), "kind": self.records[i].get("kind", "")}


@dataclass
class _Collate:  # module-level and picklable (worker processes)
    pad_id: int
    tokenizer: ChatTokenizer | None = None

    def __call__(self, batch: list) -> dict[str, Any]:
        return collate_prompts(batch, self.tokenizer) if self.tokenizer else collate_packed(batch, self.pad_id)


# ----------------------------------------------------------------------------------------------- the datamodule
class VLMConversationDataModule(SplitDataModule):
    """Conversations (``<root>/<split>/<file>``) tokenised with ChatML, images at native resolution; training rows
    packed to ``max_len`` with document masks; validation / test batches are prompts to answer (exact match).

    Args:
        root: the dataset root (holding ``train/``, ``val/``, ``test/``).
        file: annotation file name inside each split folder (``vqa.jsonl``; ``.json`` lists work too).
        stage: training stage whose pixel bounds apply (``pt``, ``mt``, ``sft``) unless given below.
        token_px: pixels per token side (the model's; 32 for NEO).
        min_pixels: smart-resize lower bound (None: the stage's).
        max_pixels: smart-resize upper bound (None: the stage's).
        max_len: packing length of a training row (NEO: 16,384 PT; 32,768 / 18,432 MT; 34,816 / 18,432 SFT).
        batch_size: packed rows per training batch.
        eval_batch_size: prompts per evaluation batch.
        limit_eval: evaluate on the first n records of val / test only (None: all).
        num_workers: loader workers.
        seed: packing-order seed.
        write_if_missing: demo only: when ``root`` is missing, write this set there first — ``scenes`` (the
            SYNTHETIC scene set, ``scene_count`` training scenes), ``digits`` (scikit-learn's real digits) or
            ``skimage`` (scikit-image's real photographs with docstring captions).
        scene_count: training scenes written for ``write_if_missing: scenes`` (test: a quarter, val: a tenth).
    """

    def __init__(self, root: str, file: str = "vqa.jsonl", stage: str = "sft", token_px: int = 32,
                 min_pixels: int | None = None, max_pixels: int | None = None, max_len: int = 4096,
                 batch_size: int = 1, eval_batch_size: int = 16, limit_eval: int | None = None, num_workers: int = 0,
                 seed: int = 0, write_if_missing: str | None = None, scene_count: int = 400) -> None:
        super().__init__()
        if stage not in PIXEL_BOUNDS:
            raise ValueError(f"stage must be one of {tuple(PIXEL_BOUNDS)}, got {stage!r}")
        if write_if_missing not in (None, "scenes", "digits", "skimage"):
            raise ValueError(f"write_if_missing must be scenes, digits, skimage or null, got {write_if_missing!r}")
        self.write_if_missing, self.scene_count = write_if_missing, scene_count
        self.root, self.file, self.stage, self.token_px = root, file, stage, token_px
        lo, hi = PIXEL_BOUNDS[stage]
        self.min_pixels = lo if min_pixels is None else min_pixels
        self.max_pixels = hi if max_pixels is None else max_pixels
        self.max_len, self.batch_size, self.eval_batch_size = max_len, batch_size, eval_batch_size
        self.limit_eval, self.num_workers, self.seed = limit_eval, num_workers, seed
        self.tokenizer = ChatTokenizer()
        self._sets: dict[str, Dataset] = {}

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (linked into the model)."""
        return self.tokenizer.vocab_size

    @property
    def image_token_ids(self) -> list[int]:
        """``<img>``, ``<IMG_CONTEXT>``, ``</img>`` ids (linked into the model)."""
        return self.tokenizer.image_token_ids

    def _require(self) -> Path:
        if self.write_if_missing and not Path(self.root).exists():
            if self.write_if_missing == "scenes":
                from .synthetic.scenes import write_scene_dataset

                n = self.scene_count
                write_scene_dataset(self.root, n_train=n, n_val=max(n // 10, 4), n_test=max(n // 4, 6), seed=self.seed,
                                    size=64, questions_per_image=4)
            elif self.write_if_missing == "digits":
                write_digits_vqa(self.root, seed=self.seed)
            else:
                write_skimage_captions(self.root)
        return require_dataset(self.root, name="image-text conversations", tree=TREE, source=SOURCE,
                               required=[f"train/{self.file}"])

    def prepare_data(self) -> None:
        self._require()

    def records(self, split: str) -> list[dict[str, Any]]:
        """Validated records of a split."""
        path = self._require() / split / self.file
        if not path.is_file():
            raise layout_error(f"{path} is missing.", name="image-text conversations", tree=TREE, source=SOURCE,
                               root=Path(self.root))
        recs = read_annotations(path)
        return recs if split == "train" or self.limit_eval is None else recs[: self.limit_eval]

    def dataset(self, split: str) -> Dataset:
        """The split's dataset (packed rows for train, per-sample prompts otherwise)."""
        if split not in self._sets:
            cls = ConversationDataset if split == "train" else _WithKind
            ds = cls(self.records(split), self.tokenizer, self.token_px, self.min_pixels, self.max_pixels)
            self._sets[split] = PackedDataset(ds, self.max_len, self.seed) if split == "train" else ds
        return self._sets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        train = split == "train"
        return DataLoader(self.dataset(split), batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=_Collate(self.tokenizer.pad_id, None if train else self.tokenizer))


# ------------------------------------------------------------------------ real data that runs offline (labelled)
_SKIMAGE = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
            "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "moon", "page", "rocket", "text")


def _write(root: Path, split: str, records: list[dict], note: str) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "DATA.md").write_text(note)
    with open(root / split / "vqa.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def write_skimage_captions(root: str | os.PathLike, size: int = 256) -> Path:
    """scikit-image's sample photographs (real images shipped with the library), each captioned with the first
    sentence of its ``skimage.data`` docstring — a tiny captioning set (``train`` = ``val`` = all images: it is for
    smoke tests and demos, not an evaluation). Writes ``<root>/{train,val}/vqa.jsonl`` + images, and ``DATA.md``."""
    import skimage.data

    root = Path(root)
    recs = []
    for name in _SKIMAGE:
        fn = getattr(skimage.data, name, None)
        if fn is None:
            continue
        arr = np.asarray(fn())
        arr = np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]
        if arr.dtype != np.uint8:
            arr = (255 * (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-8)).astype(np.uint8)
        im = Image.fromarray(arr)
        im.thumbnail((size, size))
        (root / "train" / "images").mkdir(parents=True, exist_ok=True)
        im.save(root / "train" / "images" / f"{name}.png")
        doc = " ".join((fn.__doc__ or name).strip().split("\n\n")[0].split())
        recs.append({"image": f"images/{name}.png", "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image."}, {"from": "gpt", "value": doc}]})
    note = ("# scikit-image sample photographs, captioned from their docstrings (REAL images, library captions)\n"
            "Written by datamodules.vlm_conversations.write_skimage_captions; licences: see skimage.data.\n")
    _write(root, "train", recs, note)
    (root / "val" / "images").mkdir(parents=True, exist_ok=True)
    for r in recs:
        (root / "val" / r["image"]).write_bytes((root / "train" / r["image"]).read_bytes())
    _write(root, "val", recs, note)
    return root


def write_digits_vqa(root: str | os.PathLike, scale: int = 4, val_fraction: float = 0.2, seed: int = 0,
                     splits: dict[str, Any] | None = None) -> Path:
    """scikit-learn's handwritten digits (REAL 8×8 scans, UCI) upscaled ×``scale``, as "what digit is this?" → "7"
    VQA with a seeded train / val split. Writes ``<root>/{train,val}/vqa.jsonl`` + images and ``DATA.md``.

    Args:
        root: output folder.
        scale: nearest-neighbour upscaling factor of the 8×8 scans (PNG side = 8·scale).
        val_fraction: share of a random permutation that goes to ``val`` (ignored with ``splits``).
        seed: seed of that permutation (ignored with ``splits``).
        splits: ``{split name: indices into load_digits()}`` written as given (e.g. a stratified train / val / test
            split made by the caller) instead of the random train / val split.
    """
    from sklearn.datasets import load_digits

    root = Path(root)
    d = load_digits()
    if splits is None:
        perm = np.random.default_rng(seed).permutation(len(d.target))
        n_val = int(len(perm) * val_fraction)
        splits = {"val": perm[:n_val], "train": perm[n_val:]}
    for split, idx in splits.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        recs = []
        for i in idx:
            px = (255 - d.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(px).resize((8 * scale, 8 * scale), Image.NEAREST).convert("RGB").save(
                root / split / "images" / f"{i:04d}.png")
            recs.append({"image": f"images/{i:04d}.png", "kind": "digit", "conversations": [
                {"from": "human", "value": "<image>\nwhat digit is this?"},
                {"from": "gpt", "value": str(int(d.target[i]))}]})
        _write(root, split, recs, "# scikit-learn handwritten digits (REAL, UCI) as VQA\n"
                                  "Written by datamodules.vlm_conversations.write_digits_vqa.\n")
    return root
