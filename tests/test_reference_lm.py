"""The reference LM (issue 22): real stdlib text, a by-file held-out split never seen in training, the bundled GPT-2
BPE, and a tiny trained LM that loads through the one causal-LM builder and beats an untrained one on held-out text."""
import json
import math
import sys

import pytest
import torch

from datamodules.stdlib_text import (GPT2_BPE_FILE, ReferenceTokenizer, StdlibTextDataModule, stdlib_documents,
                                     stdlib_manifest)
from tasks.llm.reference_lm_train import cached_reference_lm, evaluate_perplexity
from zoo.llm import build_causal_lm
from zoo.llm.reference_lm import build_reference_lm, reference_lm_config


@pytest.fixture(scope="module")
def reference_lm():
    return cached_reference_lm("tiny")


def test_tokenizer_is_gpt2_bpe():
    tok = ReferenceTokenizer()
    assert GPT2_BPE_FILE.is_file() and (GPT2_BPE_FILE.parent / "LICENSE-whisper.txt").is_file()
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's ids
    text = "def f(x):\n    return x  # ünïcode\n"
    assert tok.decode(tok.encode(text)) == text
    compact = ReferenceTokenizer(keep_ids=[50256, 15496])
    assert compact.encode("Hello world") == [1, 2] and compact.vocab_size == 3 and compact.eot_id == 0


def test_split_by_file_without_overlap():
    docs = stdlib_documents()
    man = stdlib_manifest(docs, 0.03)
    assert man["python"] == sys.version and any(n.startswith("pydoc_data.topics:") for n in docs)
    train = {f["name"] for f in man["files"] if f["split"] == "train"}
    val = {f["name"] for f in man["files"] if f["split"] == "val"}
    assert val and train and not train & val and len(train | val) == len(docs)
    assert 0.01 < len(val) / len(docs) < 0.06
    # no held-out text is in training, even as a duplicate file under another name
    train_hashes = {f["sha256"] for f in man["files"] if f["split"] == "train"}
    assert not any(f["sha256"] in train_hashes for f in man["files"] if f["split"] == "val" and f["bytes"] > 200)
    assert stdlib_manifest(docs, 0.03) == man  # deterministic


def test_config_sizes():
    assert reference_lm_config("base", 50257)["vocab_size"] == 50304
    base = build_reference_lm("base", vocab_size=50257)
    n = sum(p.numel() for p in base.parameters())
    assert 50e6 < n < 150e6 and base.config.max_position_embeddings >= 2048
    assert type(base).__name__ == "LlamaForCausalLM"


def test_trained_tiny_lm(reference_lm):
    log = json.loads((reference_lm / "train_log.json").read_text())
    model = build_causal_lm(str(reference_lm)).float().eval()
    tok = ReferenceTokenizer.from_folder(reference_lm)
    assert model.config.vocab_size >= tok.vocab_size and log["python"] == sys.version
    dm = StdlibTextDataModule(seq_len=128, batch_size=4, vocab_limit=tok.vocab_size,
                              max_train_tokens=log["recipe"]["max_train_tokens"])
    assert dm.tokenizer.keep_ids == tok.keep_ids
    ppl = evaluate_perplexity(model, dm.val_dataloader(), torch.device("cpu"), max_batches=4)
    torch.manual_seed(0)
    untrained = build_causal_lm("llama", **reference_lm_config("tiny", tok.vocab_size)).eval()
    ppl0 = evaluate_perplexity(untrained, dm.val_dataloader(), torch.device("cpu"), max_batches=4)
    assert ppl < 100 < tok.vocab_size / 2 < ppl0, (ppl, ppl0)  # trained: 17.9 over the val set, ~57 here
    assert math.isfinite(log["val_perplexity"]) and log["val_perplexity"] < 40
