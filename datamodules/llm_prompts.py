"""Prompt datasets for GRPO: JSON lines ``{"prompt": ..., "answer": ...}``, or a generated toy arithmetic task.

On-disk format (one object per line; the common RL prompt-set layout)::

    data_dir/
      train.jsonl   {"prompt": "12+7=", "answer": "19"}
      val.jsonl

When ``data_dir`` is not given the datamodule generates the toy task ``a+b=`` (operands ``0..max_operand``) with a
fixed seed, and holds out a validation split of prompts never seen in training.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.llm import CharTokenizer


def arithmetic_examples(max_operand: int = 9, ops: str = "+", seed: int = 0) -> list[dict]:
    """Every ``a<op>b=`` prompt with operands ``0..max_operand`` and its answer, shuffled with ``seed``."""
    ex = []
    for op in ops:
        for a in range(max_operand + 1):
            for b in range(max_operand + 1):
                val = {"+": a + b, "-": a - b, "*": a * b}[op]
                ex.append({"prompt": f"{a}{op}{b}=", "answer": str(val)})
    random.Random(seed).shuffle(ex)
    return ex


def write_prompt_jsonl(path: str | Path, examples: list[dict]) -> Path:
    """Write examples in the on-disk format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


def read_prompt_jsonl(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(obj, dict) or "prompt" not in obj or "answer" not in obj:
            raise ValueError(f'{path}:{n}: expected {{"prompt": ..., "answer": ...}}')
        out.append({"prompt": str(obj["prompt"]), "answer": str(obj["answer"])})
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


class PromptDataset(Dataset):
    """Tokenised prompts (``<bos>`` + characters) with their answer text and answer ids (+ ``<eos>``)."""

    def __init__(self, examples: list[dict], tokenizer: CharTokenizer) -> None:
        self.examples = examples
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        return {
            "prompt_ids": self.tokenizer.encode(e["prompt"], bos=True),
            "answer_ids": self.tokenizer.encode(e["answer"], eos=True),
            "prompt": e["prompt"],
            "answer": e["answer"],
        }


def collate_prompts(items: list[dict]) -> dict:
    """Ragged prompts stay a list of tensors (the task packs or pads them itself)."""
    return {k: [it[k] for it in items] for k in items[0]}


class DrawWithReplacement(torch.utils.data.Sampler[int]):
    """``num_samples`` indices of ``range(n)`` drawn uniformly with replacement, new draws every epoch.

    The same draws as ``RandomSampler(replacement=True, num_samples=..., generator=Generator().manual_seed(seed))``,
    but not a ``RandomSampler``: Lightning replaces a ``RandomSampler`` under DDP with a ``DistributedSampler`` over
    the dataset (one pass over the prompts, ``steps_per_epoch`` lost), whereas it wraps any other sampler in a
    ``DistributedSamplerWrapper`` that splits these draws (identical on every rank: same seed) between the ranks.
    """

    def __init__(self, n: int, num_samples: int, seed: int = 0) -> None:
        if n <= 0 or num_samples <= 0:
            raise ValueError(f"need a non-empty set and num_samples > 0 (got n={n}, num_samples={num_samples})")
        self.n, self.num_samples = n, num_samples
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        full, rest = divmod(self.num_samples, 32)  # RandomSampler's chunking, so the sequence is the same
        for _ in range(full):
            yield from torch.randint(self.n, (32,), dtype=torch.int64, generator=self.generator).tolist()
        yield from torch.randint(self.n, (rest,), dtype=torch.int64, generator=self.generator).tolist()


class PromptDataModule(pl.LightningDataModule):
    """Prompt/answer pairs for GRPO with a character tokenizer.

    Args:
        data_dir: folder with ``train.jsonl`` / ``val.jsonl``; None generates the toy arithmetic task.
        max_operand: toy task: largest operand.
        ops: toy task: operators used (``+``, ``-``, ``*``).
        num_val: toy task: prompts held out for validation.
        batch_size: prompts per training batch (each gets ``group_size`` completions in the task).
        val_batch_size: prompts per validation batch.
        alphabet: characters of the tokenizer.
        seed: shuffling seed of the toy task.
        steps_per_epoch: training prompts drawn (with replacement) per epoch; None = one pass over the set.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        max_operand: int = 9,
        ops: str = "+",
        num_val: int = 20,
        batch_size: int = 16,
        val_batch_size: int = 64,
        alphabet: str = "0123456789+-*=?:, abcdefghijklmnopqrstuvwxyz",
        seed: int = 0,
        steps_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.max_operand = max_operand
        self.ops = ops
        self.num_val = num_val
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch
        self.tokenizer = CharTokenizer(alphabet)
        self.train_set: PromptDataset | None = None
        self.val_set: PromptDataset | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def prepare_data(self) -> None:
        if self.data_dir is None:
            return
        root = Path(self.data_dir)
        if not (root / "train.jsonl").is_file():
            raise FileNotFoundError(
                f"{root}: expected\n  {root}/train.jsonl  ({{\"prompt\": ..., \"answer\": ...}} per line)\n"
                f"  {root}/val.jsonl    (optional)\nwrite one with datamodules.llm_prompts.write_prompt_jsonl"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.data_dir is None:
            ex = arithmetic_examples(self.max_operand, self.ops, self.seed)
            train, val = ex[self.num_val :], ex[: self.num_val]
        else:
            self.prepare_data()
            root = Path(self.data_dir)
            train = read_prompt_jsonl(root / "train.jsonl")
            val = read_prompt_jsonl(root / "val.jsonl") if (root / "val.jsonl").is_file() else train[: self.num_val]
        self.train_set = PromptDataset(train, self.tokenizer)
        self.val_set = PromptDataset(val, self.tokenizer)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = None
        if self.steps_per_epoch:
            sampler = DrawWithReplacement(len(self.train_set), self.steps_per_epoch * self.batch_size, self.seed)
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=sampler is None, sampler=sampler,
            collate_fn=collate_prompts, drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.val_set, batch_size=self.val_batch_size, collate_fn=collate_prompts)
