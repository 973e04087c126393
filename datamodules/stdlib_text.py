"""Real text for the reference LM: CPython's standard-library sources and ``pydoc_data`` topics, GPT-2 BPE tokens.

The corpus is what the running Python ships — every ``*.py`` under ``sysconfig.get_paths()['stdlib']`` (outside
``site-packages`` and ``__pycache__``) plus the ``pydoc_data.topics`` help texts — so it is on every machine, offline,
and exactly reproducible for a given Python build: :func:`stdlib_manifest` lists every document with its sha256 and
split, and the manifest's hash keys the token cache (``cache_dir('derived/stdlib_text')``).

The held-out split is **by file**: a document is held out when ``sha1(name) mod 1000 < 1000 * val_fraction`` (its name
is the stdlib-relative path, or ``pydoc_data.topics:<key>``), so no held-out file is ever seen in training, and the
split does not move when files are added. Documents are joined with ``<|endoftext|>``.

:class:`ReferenceTokenizer` is the real GPT-2 byte-level BPE (``data/tokenizers/gpt2.tiktoken``, MIT, loaded with
``tiktoken``), optionally restricted to the ``vocab_limit`` most frequent training tokens (the rest map to one
``<unk>`` id) so that the CPU-sized reference LM spends its few parameters on the text, not on a 50k-row softmax.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from zoo import cache_dir

__all__ = [
    "GPT2_BPE_FILE", "ReferenceTokenizer", "StdlibTextDataModule", "TokenWindows", "stdlib_documents",
    "stdlib_manifest", "tokenize_corpus",
]

#: the bundled GPT-2 BPE ranks (MIT; see ``data/tokenizers/README.md``)
GPT2_BPE_FILE = Path(__file__).parent / "data" / "tokenizers" / "gpt2.tiktoken"
GPT2_BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = "<|endoftext|>"
_TOKENIZER_FILE = "sharezoo_tokenizer.json"
_SKIP_PARTS = {"site-packages", "__pycache__"}
_TEST_PARTS = {"test", "tests", "idle_test"}


class ReferenceTokenizer:
    """GPT-2 byte-level BPE through ``tiktoken``; optionally a compact id space (``keep_ids``) with one ``<unk>``.

    Args:
        keep_ids: GPT-2 ids kept, in compact-id order (compact id ``i`` is ``keep_ids[i]``); the id ``len(keep_ids)``
            is ``<unk>``. None: the full GPT-2 vocabulary (50257 ids).
    """

    def __init__(self, keep_ids: list[int] | None = None) -> None:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
        from tiktoken_ext.openai_public import r50k_pat_str  # the GPT-2 pre-tokenisation regex

        ranks = load_tiktoken_bpe(str(GPT2_BPE_FILE), expected_hash=GPT2_BPE_SHA256)
        self.encoding = tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                          special_tokens={EOT: len(ranks)})
        self.keep_ids = None if keep_ids is None else [int(i) for i in keep_ids]
        if self.keep_ids is not None:
            self._to_compact = np.full(self.encoding.n_vocab, len(self.keep_ids), dtype=np.int64)
            self._to_compact[np.asarray(self.keep_ids)] = np.arange(len(self.keep_ids))

    @property
    def vocab_size(self) -> int:
        """Number of ids the model sees (GPT-2's 50257, or ``len(keep_ids) + 1`` with ``<unk>``)."""
        return self.encoding.n_vocab if self.keep_ids is None else len(self.keep_ids) + 1

    @property
    def eot_id(self) -> int:
        """The ``<|endoftext|>`` id in the model's id space."""
        return self.to_model_ids(np.array([self.encoding.eot_token]))[0].item()

    def to_model_ids(self, gpt2_ids: np.ndarray) -> np.ndarray:
        """GPT-2 ids -> model ids (identity without ``keep_ids``)."""
        gpt2_ids = np.asarray(gpt2_ids, dtype=np.int64)
        return gpt2_ids if self.keep_ids is None else self._to_compact[gpt2_ids]

    def encode(self, text: str) -> list[int]:
        """Model ids of ``text`` (special tokens are treated as plain text)."""
        return self.to_model_ids(np.array(self.encoding.encode_ordinary(text), dtype=np.int64)).tolist()

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of model ids (``<unk>`` decodes as ``\\ufffd``)."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        if self.keep_ids is None:
            return self.encoding.decode(ids)
        unk = len(self.keep_ids)
        return "".join("\ufffd" if i >= unk else self.encoding.decode([self.keep_ids[i]]) for i in ids)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``sharezoo_tokenizer.json`` into a model folder (the BPE file's hash, the kept ids)."""
        path = Path(folder) / _TOKENIZER_FILE
        path.write_text(json.dumps({"encoding": "gpt2", "bpe_sha256": GPT2_BPE_SHA256, "keep_ids": self.keep_ids}))
        return path

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ReferenceTokenizer:
        """The tokenizer saved beside a reference LM (:meth:`save`)."""
        path = Path(folder) / _TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: a reference-LM folder holds the tokenizer written by "
                                    "ReferenceTokenizer.save (tasks/llm/reference_lm_train.py writes it)")
        meta = json.loads(path.read_text())
        if meta.get("bpe_sha256") != GPT2_BPE_SHA256:
            raise ValueError(f"{path}: BPE hash {meta.get('bpe_sha256')} is not the bundled gpt2.tiktoken's")
        return cls(meta.get("keep_ids"))


def _stdlib_root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])


def stdlib_documents(root: str | os.PathLike | None = None, include_tests: bool = True,
                     include_topics: bool = True) -> dict[str, str]:
    """``{name: text}`` of the corpus, sorted by name: stdlib ``.py`` files (names relative to the stdlib root) and,
    when ``root`` is None, the running interpreter's ``pydoc_data.topics`` (names ``pydoc_data.topics:<key>``).

    Args:
        root: the stdlib folder (None: this interpreter's).
        include_tests: keep the stdlib's own test suites (``test/``, ``tests/``, ``idle_test/``).
        include_topics: add the ``pydoc_data`` help topics.
    """
    base = _stdlib_root(root)
    docs: dict[str, str] = {}
    for f in sorted(base.rglob("*.py")):
        parts = f.relative_to(base).parts
        if _SKIP_PARTS & set(parts) or (not include_tests and _TEST_PARTS & set(parts)):
            continue
        docs[f.relative_to(base).as_posix()] = f.read_bytes().decode("utf-8", errors="replace")
    if include_topics and root is None:
        import pydoc_data.topics

        for key in sorted(pydoc_data.topics.topics):
            docs[f"pydoc_data.topics:{key}"] = pydoc_data.topics.topics[key]
    if not docs:
        raise FileNotFoundError(f"no *.py files under {base}: give the CPython standard-library folder (the one "
                                "holding os.py, json/, email/ ...), or None for this interpreter's")
    return dict(sorted(docs.items()))


def is_held_out(name: str, val_fraction: float) -> bool:
    """The by-file split: ``sha1(name) mod 1000 < 1000 * val_fraction``."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 1000 < round(1000 * val_fraction)


def stdlib_manifest(docs: dict[str, str], val_fraction: float = 0.03) -> dict[str, Any]:
    """What the corpus is, for reproducibility: Python version, per-document sha256, byte size and split.

    Args:
        docs: :func:`stdlib_documents`'s output.
        val_fraction: share of documents held out (by file).
    """
    files = [{"name": n, "sha256": hashlib.sha256(t.encode()).hexdigest(), "bytes": len(t.encode()),
              "split": "val" if is_held_out(n, val_fraction) else "train"} for n, t in docs.items()]
    return {"python": sys.version, "implementation": sys.implementation.name, "val_fraction": val_fraction,
            "bpe_sha256": GPT2_BPE_SHA256, "files": files}


def manifest_key(manifest: dict[str, Any], extra: Any = None) -> str:
    """A short hash of the manifest (and of anything else the derived data depends on)."""
    blob = json.dumps({"files": [(f["name"], f["sha256"], f["split"]) for f in manifest["files"]], "extra": extra},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokenize_corpus(docs: dict[str, str], manifest: dict[str, Any], tokenizer: ReferenceTokenizer | None = None,
                    cache: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """GPT-2 ids (int32, uint16-safe) of the train and val documents, each followed by ``<|endoftext|>``; cached as
    ``<cache>/<manifest_key>.npz`` (default ``cache_dir('derived/stdlib_text')``).

    Args:
        docs: the documents.
        manifest: their manifest (the split).
        tokenizer: a full-vocabulary tokenizer (None: built).
        cache: the cache folder (None: the sharezoo derived cache).
    """
    folder = Path(cache) if cache is not None else cache_dir("derived/stdlib_text")
    path = folder / f"gpt2_{manifest_key(manifest)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {"train": z["train"], "val": z["val"]}
    tok = tokenizer or ReferenceTokenizer()
    eot = tok.encoding.eot_token
    out: dict[str, list[int]] = {"train": [], "val": []}
    for f in manifest["files"]:
        out[f["split"]].extend(tok.encoding.encode_ordinary(docs[f["name"]]) + [eot])
    arrays = {k: np.asarray(v, dtype=np.int32) for k, v in out.items()}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def frequent_ids(ids: np.ndarray, limit: int, always: tuple[int, ...] = ()) -> list[int]:
    """The ``limit - 1`` most frequent ids of ``ids`` (``always`` first), ties broken by id: a compact vocabulary
    whose last id is ``<unk>``."""
    counts = np.bincount(ids)
    order = np.lexsort((np.arange(len(counts)), -counts))  # by count descending, then id
    ranked = [int(i) for i in order if counts[i] > 0 and int(i) not in always]
    return list(always) + ranked[: limit - 1 - len(always)]


class TokenWindows(Dataset):
    """Windows of ``seq_len + 1`` tokens of one long id array: random starts (training) or consecutive, non-overlapping
    ones (evaluation).

    Args:
        ids: the token ids.
        seq_len: tokens per window input (the target is shifted by one).
        num_samples: random windows per epoch; None: consecutive windows covering the array.
        seed: seed of the random starts.
    """

    def __init__(self, ids: np.ndarray, seq_len: int, num_samples: int | None = None, seed: int = 0) -> None:
        if len(ids) < seq_len + 1:
            raise ValueError(f"{len(ids)} tokens are fewer than one window of {seq_len + 1}")
        self.ids, self.seq_len, self.num_samples = torch.as_tensor(ids.astype(np.int64)), seq_len, num_samples
        gen = torch.Generator().manual_seed(seed)
        self.starts = (torch.randint(0, len(ids) - seq_len, (num_samples,), generator=gen) if num_samples
                       else torch.arange(0, len(ids) - seq_len, seq_len))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> torch.Tensor:
        s = int(self.starts[i])
        return self.ids[s:s + self.seq_len + 1]


@dataclass
class _Corpus:
    manifest: dict[str, Any]
    train: np.ndarray
    val: np.ndarray
    tokenizer: ReferenceTokenizer


class StdlibTextDataModule(pl.LightningDataModule):
    """CPython stdlib + ``pydoc_data`` text as GPT-2 tokens; a by-file held-out split (module docstring).

    Args:
        seq_len: tokens per training window.
        batch_size: windows per batch.
        train_samples: random training windows per epoch.
        val_fraction: share of documents (files) held out for perplexity.
        vocab_limit: keep the most frequent training tokens (+ ``<unk>``); None: GPT-2's full 50257.
        max_train_tokens: use only the first this-many training tokens (tiny CPU runs); None: all.
        stdlib_root: the stdlib folder; None: this interpreter's (with its ``pydoc_data`` topics).
        include_tests: keep the stdlib's own test suites in the corpus.
        num_workers: data-loader workers.
        seed: seed of the random training windows.
    """

    def __init__(self, seq_len: int = 512, batch_size: int = 16, train_samples: int = 10_000,
                 val_fraction: float = 0.03,
                 vocab_limit: int | None = None, max_train_tokens: int | None = None,
                 stdlib_root: str | None = None, include_tests: bool = True, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        self.seq_len, self.batch_size, self.train_samples = seq_len, batch_size, train_samples
        self.val_fraction, self.vocab_limit, self.max_train_tokens = val_fraction, vocab_limit, max_train_tokens
        self.stdlib_root, self.include_tests = stdlib_root, include_tests
        self.num_workers, self.seed = num_workers, seed

    @cached_property
    def corpus(self) -> _Corpus:
        """The documents' manifest, train/val ids in the model's id space, and the tokenizer."""
        docs = stdlib_documents(self.stdlib_root, include_tests=self.include_tests)
        manifest = stdlib_manifest(docs, self.val_fraction)
        arrays = tokenize_corpus(docs, manifest)
        train = arrays["train"][: self.max_train_tokens] if self.max_train_tokens else arrays["train"]
        tok = ReferenceTokenizer()
        if self.vocab_limit:
            tok = ReferenceTokenizer(frequent_ids(train, self.vocab_limit, always=(tok.encoding.eot_token,)))
        return _Corpus(manifest, tok.to_model_ids(train), tok.to_model_ids(arrays["val"]), tok)

    @property
    def tokenizer(self) -> ReferenceTokenizer:
        """The tokenizer (compact when ``vocab_limit`` is set)."""
        return self.corpus.tokenizer

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary size."""
        return self.corpus.tokenizer.vocab_size

    def prepare_data(self) -> None:
        self.corpus  # noqa: B018 — reads and tokenises (cached) the corpus

    def train_dataloader(self) -> DataLoader:
        ds = TokenWindows(self.corpus.train, self.seq_len, self.train_samples, self.seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TokenWindows(self.corpus.val, self.seq_len), batch_size=self.batch_size,
                          num_workers=self.num_workers)
