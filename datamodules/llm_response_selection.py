"""Response-selection data in the Ubuntu / Douban text format used by Uni-Encoder, BERT-FP and ESIM.

On-disk layout::

    data_dir/
      train.txt   label \t utterance_1 \t ... \t utterance_k \t response      (one candidate per line)
      valid.txt   consecutive lines with the same context form one example (e.g. 10 lines: 1 positive, 9 negatives)
      test.txt

Douban's test set has contexts with several positives and some with none: labels are kept multi-hot (``labels``), and
contexts without a positive are skipped and counted (as the Douban evaluation scripts do; ``dm.skipped[split]``).

Utterances may also be joined inside one field with ``__eou__`` (Ubuntu V2). Tokenisation is whitespace/word level with
a vocabulary built from ``train.txt`` (``[PAD] [CLS] [SEP] [UNK]`` + the most frequent words); utterances are joined
with ``[SEP]``. :func:`write_synthetic_response_selection` writes a small learnable set in this format.

``candidate_format`` (the Uni-Encoder input, spec step 1, ``[CLS] c [SEP] r_1 [SEP] r_2 ...``):

* ``official`` (default) — as the released dataset code: the context is ``[CLS] u_1 [SEP] ... u_k [SEP]`` and every
  candidate is wrapped as ``[CLS] r_j [SEP]`` (``max_response_len`` counts both specials; the response keeps its
  first ``max_response_len - 2`` words). The model gives the candidate tokens token type 1
  (:class:`tasks.llm.uni_encoder.UniEncoderTask` reads the format from the datamodule);
* ``plain`` — candidates are bare words (the earlier layout, no token types).
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ._base import SplitDataModule

SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
PAD_ID, CLS_ID, SEP_ID, UNK_ID = 0, 1, 2, 3
CANDIDATE_FORMATS = ("official", "plain")


def check_candidate_format(candidate_format: str) -> str:
    if candidate_format not in CANDIDATE_FORMATS:
        raise ValueError(f"unknown candidate_format {candidate_format!r} (one of {CANDIDATE_FORMATS})")
    return candidate_format


def read_response_file(path: Path, counts: dict | None = None) -> list[dict]:
    """Examples ``{'context': [utterances], 'candidates': [str], 'labels': [0/1 per candidate], 'label': index of the
    first positive}``.

    Contexts with several positives (Douban test) keep them all in ``labels``; contexts with no positive are skipped
    and counted in ``counts['skipped_no_positive']`` when ``counts`` is given.
    """
    examples: list[dict] = []
    cur_ctx, cands, labels = None, [], []
    skipped = 0

    def flush():
        nonlocal skipped
        if cur_ctx is None:
            return
        if not any(labels):
            skipped += 1
            return
        examples.append({"context": list(cur_ctx), "candidates": list(cands), "labels": list(labels),
                         "label": labels.index(1)})

    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3 or fields[0] not in ("0", "1"):
            raise ValueError(f"{path}:{n}: expected 'label<TAB>utterance...<TAB>response' with label 0/1")
        ctx = tuple(u for f in fields[1:-1] for u in f.split("__eou__") if u.strip())
        if ctx != cur_ctx:
            flush()
            cur_ctx, cands, labels = ctx, [], []
        cands.append(fields[-1])
        labels.append(int(fields[0]))
    flush()
    if counts is not None:
        counts["skipped_no_positive"] = counts.get("skipped_no_positive", 0) + skipped
    if not examples:
        raise ValueError(f"{path}: no examples with a positive response ({skipped} without)")
    return examples


class WordVocab:
    """Word-level vocabulary: specials + the most frequent words of the training texts."""

    def __init__(self, words: list[str]) -> None:
        self.itos = SPECIALS + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def from_examples(cls, examples: list[dict], max_size: int = 30000) -> WordVocab:
        counts = Counter(w for e in examples for t in (*e["context"], *e["candidates"]) for w in t.split())
        return cls([w for w, _ in counts.most_common(max_size)])

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, 3) for w in text.split()]

    def __len__(self) -> int:
        return len(self.itos)


class ResponseSelectionDataset(Dataset):
    """Token ids of one context and its candidates (``candidate_format``: see the module docstring)."""

    def __init__(self, examples: list[dict], vocab: WordVocab, max_context_len: int, max_response_len: int,
                 candidate_format: str = "official") -> None:
        self.examples, self.vocab = examples, vocab
        self.max_context_len, self.max_response_len = max_context_len, max_response_len
        self.candidate_format = check_candidate_format(candidate_format)
        if candidate_format == "official" and max_response_len < 3:
            raise ValueError("candidate_format='official' needs max_response_len >= 3 ([CLS] word [SEP])")

    def encode_candidate(self, text: str) -> list[int]:
        if self.candidate_format == "official":
            return [CLS_ID] + (self.vocab.encode(text) or [UNK_ID])[: self.max_response_len - 2] + [SEP_ID]
        return (self.vocab.encode(text) or [UNK_ID])[: self.max_response_len]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        ctx = [CLS_ID]
        for u in e["context"]:
            ctx += self.vocab.encode(u) + [SEP_ID]
        ctx = [CLS_ID] + ctx[1:][-(self.max_context_len - 1) :]  # keep [CLS] and the most recent turns
        cands = [torch.tensor(self.encode_candidate(c)) for c in e["candidates"]]
        labels = torch.tensor(e.get("labels", [int(j == e["label"]) for j in range(len(cands))]), dtype=torch.bool)
        return {"context_ids": torch.tensor(ctx), "candidate_ids": cands, "label": e["label"], "labels": labels}


def collate_response_selection(items: list[dict]) -> dict:
    """Lists of ids; ``label`` ``[b]`` (first positive) and multi-hot ``labels`` ``[b, N_max]`` (False = padding)."""
    n_max = max(len(it["candidate_ids"]) for it in items)
    labels = torch.zeros(len(items), n_max, dtype=torch.bool)
    for i, it in enumerate(items):
        labels[i, : it["labels"].numel()] = it["labels"]
    return {
        "context_ids": [it["context_ids"] for it in items],
        "candidate_ids": [it["candidate_ids"] for it in items],
        "label": torch.tensor([it["label"] for it in items]),
        "labels": labels,
    }


class ResponseSelectionDataModule(SplitDataModule):
    """Ubuntu/Douban-format response selection (``train.txt``/``valid.txt``/``test.txt``).

    Args:
        data_dir: folder holding the three files.
        batch_size: contexts per batch.
        max_context_len: context tokens kept (the most recent).
        max_response_len: tokens kept per candidate (with ``official``: including its ``[CLS]``/``[SEP]``).
        max_vocab: vocabulary size cap (most frequent training words).
        num_workers: DataLoader workers.
        synthetic: demo only: write the synthetic set into ``data_dir`` when its files are missing.
        candidate_format: ``official`` (``[CLS] r [SEP]`` per candidate, token type 1 in the model) or ``plain``
            (bare candidate words, no token types).
    """

    def __init__(
        self,
        data_dir: str = "data/response_selection",
        batch_size: int = 8,
        max_context_len: int = 128,
        max_response_len: int = 32,
        max_vocab: int = 30000,
        num_workers: int = 0,
        synthetic: bool = False,
        candidate_format: str = "official",
    ) -> None:
        super().__init__()
        self.candidate_format = check_candidate_format(candidate_format)
        self.synthetic = synthetic
        self.data_dir = Path(data_dir)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_context_len, self.max_response_len, self.max_vocab = max_context_len, max_response_len, max_vocab
        self._vocab: WordVocab | None = None
        self.sets: dict[str, ResponseSelectionDataset] = {}
        self.skipped: dict[str, int] = {}  # contexts without a positive response, per split

    def prepare_data(self) -> None:
        missing = [f for f in ("train.txt", "valid.txt", "test.txt") if not (self.data_dir / f).is_file()]
        if missing and self.synthetic:
            write_synthetic_response_selection(self.data_dir)
            missing = []
        if missing:
            raise FileNotFoundError(
                f"{self.data_dir}: missing {missing}. Expected\n  {self.data_dir}/train.txt|valid.txt|test.txt with "
                "lines 'label<TAB>utterance...<TAB>response' (Ubuntu V1/V2, Douban: see the Uni-Encoder repo, "
                "HF hub ChiyuSONG/Uni-Encoder). A synthetic set: "
                "datamodules.llm_response_selection.write_synthetic_response_selection(dir)"
            )

    @property
    def vocab(self) -> WordVocab:
        if self._vocab is None:
            self.prepare_data()
            self._vocab = WordVocab.from_examples(read_response_file(self.data_dir / "train.txt"), self.max_vocab)
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def setup(self, stage: str | None = None) -> None:
        for split, fname in (("train", "train.txt"), ("val", "valid.txt"), ("test", "test.txt")):
            if split not in self.sets:
                counts: dict = {}
                ex = read_response_file(self.data_dir / fname, counts)
                self.skipped[split] = counts["skipped_no_positive"]
                self.sets[split] = ResponseSelectionDataset(ex, self.vocab, self.max_context_len, self.max_response_len,
                                                             self.candidate_format)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        return DataLoader(self.sets[split], batch_size=self.batch_size, shuffle=shuffle,
                          collate_fn=collate_response_selection, num_workers=self.num_workers)


def write_synthetic_response_selection(
    root: str | Path, num_train: int = 1000, num_val: int = 50, num_test: int = 50, num_candidates: int = 10,
    train_candidates: int = 5, vocab_words: int = 40, seed: int = 0,
) -> Path:
    """A learnable toy set in the on-disk format: the true response repeats words of the last utterance."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab_words)]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    def utt():
        return " ".join(rng.choice(words) for _ in range(rng.randint(3, 6)))

    def write(name, n, n_cand):
        lines = []
        for _ in range(n):
            ctx = [utt() for _ in range(rng.randint(1, 3))]
            last = ctx[-1].split()
            pos = " ".join(rng.sample(last, k=min(3, len(last))) + [rng.choice(words)])
            cands = [(1, pos)] + [(0, utt()) for _ in range(n_cand - 1)]
            rng.shuffle(cands)
            lines += [f"{lab}\t" + "\t".join(ctx) + f"\t{c}" for lab, c in cands]
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    write("train.txt", num_train, train_candidates)
    write("valid.txt", num_val, num_candidates)
    write("test.txt", num_test, num_candidates)
    return root
