"""A character-level tokenizer for the toy tasks (no download, fully determined by its alphabet)."""
from __future__ import annotations

from collections.abc import Iterable

import torch

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


class CharTokenizer:
    """Characters of ``alphabet`` plus ``<pad> <bos> <eos> <unk>`` (ids 0-3).

    Args:
        alphabet: the characters the tokenizer knows; anything else maps to ``<unk>``.
    """

    def __init__(self, alphabet: str = "0123456789+-*=?:, abcdefghijklmnopqrstuvwxyz") -> None:
        self.alphabet = "".join(dict.fromkeys(alphabet))
        self.itos = list(SPECIALS) + list(self.alphabet)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> torch.Tensor:
        ids = [self.stoi.get(c, self.unk_id) for c in text]
        return torch.tensor(([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else []), dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        """Text up to the first ``<eos>``; specials are dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return "".join(out)
