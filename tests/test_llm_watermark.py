"""Codable watermarks: the message round-trips on unattacked text; Balance-Marking's partition; key dependence;
MajorMark's complement invariance; MajorMark+ blocks decode independently."""
import random
import sys
import warnings

import pytest
import torch
from transformers import LogitsProcessorList

from tasks.llm.methods.watermark import (BalanceMarking, MajorMark, MajorMarkPlus, VanillaMarking, bits_to_int,
                                         hash32, int_to_bits)
from zoo.llm import build_causal_lm

V = 200


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return build_causal_lm("llama", vocab_size=V).eval()


def _gen(model, scheme, msgs, prompt, n, sample=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=sample, top_k=0,
                             logits_processor=LogitsProcessorList([scheme.processor(msgs, prompt.shape[1])]),
                             max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    return out[:, prompt.shape[1]:]


def _hash32_py(x):
    x &= 0xFFFFFFFF
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


def test_hash_is_fixed():
    xs = [0, 1, 2 ** 40 + 7, 123456789, 2 ** 32 - 1]
    assert hash32(torch.tensor(xs)).tolist() == [_hash32_py(x) for x in xs]
    assert bits_to_int(int_to_bits(11, 4)) == 11


@pytest.mark.parametrize("cls", [VanillaMarking, BalanceMarking])
def test_all_4bit_messages_round_trip_greedy(lm, cls):
    scheme = cls(delta=4.0) if cls is VanillaMarking else cls(lm, delta=4.0)
    msgs = [int_to_bits(m, 4) for m in range(16)]
    prompt = torch.randint(0, V, (16, 12), generator=torch.Generator().manual_seed(1))
    out = _gen(lm, scheme, msgs, prompt, 80)
    assert [scheme.extract(o, 4, V) for o in out] == msgs
    wrong_key = type(scheme)(delta=4.0, key=7) if cls is VanillaMarking else cls(lm, delta=4.0, key=7)
    assert sum(wrong_key.extract(o, 4, V) == m for o, m in zip(out, msgs)) <= 4  # chance level: 1 in 16


def test_balance_partition_holds_half_the_proxy_mass(lm):
    scheme = BalanceMarking(lm)
    ids = torch.randint(0, V, (5, 10), generator=torch.Generator().manual_seed(2))
    probs = scheme._proxy_probs(ids)
    fav = scheme.favoured(ids[:, -1], torch.arange(16), V, probs)  # [5, 16, V]
    mass = (fav.float() * probs[:, None, :V]).sum(-1)
    pmax = probs.max(-1).values[:, None]
    assert (mass > 0.5 - 1e-6).all() and (mass <= 0.5 + pmax + 1e-6).all()
    tok = torch.randint(0, V, (5,))
    assert torch.equal(scheme.favoured_token(ids[:, -1], torch.arange(16), V, probs, tok),
                       fav.gather(-1, tok[:, None, None].expand(-1, 16, 1))[..., 0])


def test_paper_length_20_bits_200_tokens(lm):
    """The paper's setting: a 20-bit message in 200 tokens (five 4-bit segments at encode ratio 10), sampled."""
    rng = random.Random(0)
    msgs = [[rng.randint(0, 1) for _ in range(20)] for _ in range(4)]
    prompt = torch.randint(0, V, (4, 12), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    for scheme in (VanillaMarking(delta=4.0), BalanceMarking(lm, delta=4.0)):
        out = _gen(lm, scheme, msgs, prompt, 200, sample=True)
        assert [scheme.extract(o, 20, V) for o in out] == msgs


def test_majormark_round_trip_skewed_and_complement(lm):
    msgs = [[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 1, 0, 1, 0], [0, 1, 1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0, 1, 0]]
    msgs += [[1 - b for b in m] for m in msgs]  # the complement flips the majority bit
    prompt = torch.randint(0, V, (len(msgs), 12), generator=torch.Generator().manual_seed(4))
    scheme = MajorMark(delta=4.0)
    torch.manual_seed(0)
    out = _gen(lm, scheme, msgs, prompt, 120, sample=True)
    assert [scheme.extract(o, 8, V) for o in out] == msgs
    with pytest.raises(ValueError):
        scheme.check_message([1] * 8)


def test_majormark_plus_blocks_decode_independently(lm):
    msgs = [[1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1], [0, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1]]
    prompt = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(5))
    plus = MajorMarkPlus(block_bits=4, delta=4.0)
    torch.manual_seed(0)
    out = _gen(lm, plus, msgs, prompt, 240, sample=True)
    assert [plus.extract(o, 12, V) for o in out] == msgs
    blocks = plus.extract_blocks(out[0], 12, V)
    assert sum(b["positions"] for b in blocks) == 239 and [x for b in blocks for x in b["bits"]] == msgs[0]


@pytest.mark.xfail(sys.version_info[:2] != (3, 11), strict=False,
                   reason="measured on the tiny reference LM trained on CPython 3.11's stdlib (CI); the 3.12 stdlib trains another LM (H200 image: Balance-Marking recovered 1 of 4 messages at 200 tokens, bit accuracy 0.91; docs/testing.md)")
def test_trained_reference_lm_round_trip(reference_lm):
    """On the trained tiny reference LM (sampling at temperature 1): 20 bits / 200 tokens and MajorMark's 8 bits."""
    from tasks.llm.watermark_eval import evaluate

    res = evaluate(str(reference_lm), prompts=4, prompt_len=32, tokens=200, lengths=(200,), delta=4.0,
                   schemes=("vanilla", "balance", "majormark"), attacks=())
    assert all(r["success@200"] == 1.0 for r in res["rows"]), res["rows"]


@pytest.fixture(scope="module")
def reference_lm():
    from tasks.llm.reference_lm_train import cached_reference_lm

    return cached_reference_lm("tiny")
