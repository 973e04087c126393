"""Merging / clustering KV caches (issue 22): MiniCache, KVMerger, EMS, Chelsea — the papers' cheap correctness
checks, lossless settings equal the full cache on every family (generate + manual loop), bytes held equal hand
counts, default settings keep perplexity within the stated bound on the trained tiny reference LM."""
import math
import sys

import pytest
import torch
from transformers import DynamicCache

from tasks.llm.engines.generation import cache_kwarg
from tasks.llm.kv_eval import cached_nll, greedy_decode
from tasks.llm.reference_lm_train import cached_reference_lm
from zoo.llm import build_causal_lm
from zoo.llm.cache.base import FullCache
from zoo.llm.cache.cachegen import CacheGenCache
from zoo.llm.cache.chelsea import ChelseaCache, cluster_chunk, soft_matching_round
from zoo.llm.cache.ems import EMSCache, evict_then_merge, global_local_score
from zoo.llm.cache.kvmerger import KVMergerCache, merge_sets
from zoo.llm.cache.minicache import MiniCache, _Merged, slerp_merge
from zoo.llm.cache.scores import ScoredCache, ScoredLayer, attention_probs, enable_query_observation
from kv_cache_helpers import FAMILIES, generate, tiny_decoder



def _tiny(family):
    return enable_query_observation(tiny_decoder(family))




def _prefill(model, cache, n, b=2):
    with torch.no_grad():
        model(torch.randint(1, 128, (b, n)), **{cache_kwarg(model): cache}, use_cache=True)
    return cache


# --- lossless settings, every family, generate + manual loop ------------------------------------------------------
def _lossless(config):
    return {
        "minicache": MiniCache(config, gamma=1.0),
        "kvmerger": KVMergerCache(ratio=1.0),
        "ems": EMSCache(budget=128, window=16),
        "chelsea": ChelseaCache(chunk_size=8, merge_ratio=0.0, recent=0),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_lossless_settings_equal_full_cache(family):
    model = _tiny(family)
    x = torch.randint(1, 128, (2, 40))
    ref = generate(model, x, DynamicCache())
    for name, cache in _lossless(model.config).items():
        assert torch.equal(generate(model, x, cache), ref), name
    for name, cache in _lossless(model.config).items():
        assert torch.equal(greedy_decode(model, x, cache, 12), ref[:, 40:]), name


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_compressed_defaults_run_ingenerate(family):
    model = _tiny(family)
    x = torch.randint(1, 128, (1, 70))
    for cache in (MiniCache(model.config), MiniCache(model.config, bits=4), KVMergerCache(),
                  EMSCache(budget=32, window=8, interval=8), ChelseaCache(chunk_size=16)):
        out = generate(model, x, cache, n=20)
        assert out.shape == (1, 90) and cache.get_seq_length() == 89
        assert all(s <= 89 for s in cache.stored_lengths())


# --- the query hooks see the model's real queries ---------------------------------------------------------------
class _Probe(ScoredCache):
    def __init__(self):
        self.probs = {}

        class Layer(ScoredLayer):
            def __init__(s, i):
                super().__init__()
                s.i, s.k, s.v = i, None, None

            def restore(s):
                return s.k, s.v

            def append_scored(s, k, v, q, scaling, keys, values):
                self.probs[s.i] = attention_probs(q, keys, scaling)
                s.k, s.v = keys, values

        super().__init__(Layer)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_observed_queries_reproduce_the_attention(family):
    model = _tiny(family)
    model.set_attn_implementation("eager")
    x = torch.randint(1, 128, (2, 20))
    probe = _Probe()
    with torch.no_grad():
        out = model(x, **{cache_kwarg(model): probe}, use_cache=True, output_attentions=True)
    h = model.config.num_key_value_heads
    for i, att in enumerate(out.attentions):
        ref = att.view(2, h, -1, 20, 20).sum(2)
        torch.testing.assert_close(probe.probs[i], ref, atol=1e-5, rtol=1e-4)


# --- MiniCache ----------------------------------------------------------------------------------------------------
def test_slerp_properties():
    x0, x1 = torch.randn(5, 16), torch.randn(5, 16)
    e, m0, m1, omega = slerp_merge(x0, x1)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(m0, x0.norm(dim=-1))
    u0, u1 = x0 / m0[:, None], x1 / m1[:, None]
    torch.testing.assert_close(slerp_merge(x0, x1, 0.0)[0], u0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slerp_merge(x0, x1, 1.0)[0], u1, atol=1e-5, rtol=1e-5)
    e_same, *_ = slerp_merge(x0, 3 * x0)  # Ω = 0: the linear fallback
    torch.testing.assert_close(e_same, u0, atol=1e-5, rtol=1e-5)


def test_minicache_identical_layers_restore_exactly_and_retention():
    x = torch.randn(1, 2, 30, 16)
    m = _Merged(0.5, 0.0, None, None)
    m.add(x, x.clone())
    assert m.idx.numel() == 0  # nothing dissimilar, nothing retained
    torch.testing.assert_close(m.read(0, x.dtype), x)
    torch.testing.assert_close(m.read(1, x.dtype), x)
    y0, y1 = torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 16)
    every = _Merged(0.5, 1.0, None, None)
    every.add(y0, y1)
    assert torch.equal(every.read(0, y0.dtype), y0) and torch.equal(every.read(1, y1.dtype), y1)
    some = _Merged(0.5, 0.3, None, None)
    some.add(y0, y1)
    _, _, _, omega = slerp_merge(y0, y1)
    lo, hi = omega.amin(-1, keepdim=True), omega.amax(-1, keepdim=True)
    kept = ((omega - lo) / (hi - lo) > 0.7)
    assert some.idx.numel() == kept.sum()
    assert torch.equal(some.read(0, y0.dtype)[kept], y0[kept])  # retained tokens exact


# --- KVMerger -----------------------------------------------------------------------------------------------------
def test_kvmerger_merge_math_and_budget():
    k = torch.randn(1, 1, 1, 8).repeat(1, 1, 6, 1)
    v = torch.randn(1, 1, 1, 8).repeat(1, 1, 6, 1)
    mk, mv = merge_sets(k, v, torch.rand(1, 1, 6), budget=1, protect_top=0, recent=0)
    torch.testing.assert_close(mk[0, 0, 0], k[0, 0, 0]) and torch.testing.assert_close(mv[0, 0, 0], v[0, 0, 0])
    # one set of 3 tokens, pivot = most attention; weights exp(-d^2 / 2 sigma^2), sigma^2 = mean non-pivot d^2
    k = torch.tensor([[1.0, 0.0], [1.0, 0.2], [1.0, 0.5]])[None, None]
    v = torch.tensor([[1.0], [2.0], [3.0]])[None, None]
    mk, mv = merge_sets(k, v, torch.tensor([[[0.1, 0.8, 0.1]]]), budget=1, protect_top=0, recent=0)
    d2 = ((k[0, 0] - k[0, 0, 1]) ** 2).sum(-1)
    w = torch.exp(-d2 / (2 * d2.sum() / 2))
    assert w.argmax() == 1
    torch.testing.assert_close(mv[0, 0, 0], (w[:, None] * v[0, 0]).sum(0) / w.sum())
    # fixed budget on every head; protected (recent, top-attention) tokens are untouched
    torch.manual_seed(0)
    k, v, imp = torch.randn(2, 3, 40, 8), torch.randn(2, 3, 40, 8), torch.rand(2, 3, 40)
    mk, mv = merge_sets(k, v, imp, budget=20, protect_top=2, recent=4)
    assert mk.shape == (2, 3, 20, 8) and mv.shape == (2, 3, 20, 8)
    torch.testing.assert_close(mk[..., -4:, :], k[..., -4:, :])
    for bi in range(2):
        for hi in range(3):
            for p in imp[bi, hi].topk(2).indices:
                assert (mk[bi, hi] == k[bi, hi, p]).all(-1).any()
    assert torch.equal(merge_sets(k, v, imp, budget=40)[0], k)


# --- EMS ----------------------------------------------------------------------------------------------------------
def test_ems_global_score_removes_the_causal_bias():
    n = 10
    pos = torch.arange(n, dtype=torch.int32)[None, None]
    acc = 0.1 * (n - pos).float()  # every query pays each visible token the same attention
    score = global_local_score(acc, pos, n, torch.ones(1, 1, n), alpha=1.0)
    torch.testing.assert_close(score, torch.full((1, 1, n), 1 / n))
    assert (acc[..., 0] > acc[..., -1]).all()  # the raw accumulation would favour early tokens


def test_ems_zero_class_evicts_and_merges_into_centres():
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.99, 0.01], [-1.0, 0.0]])[None, None]
    v = torch.tensor([[1.0], [2.0], [3.0], [4.0]])[None, None]
    score = torch.tensor([[[0.4, 0.3, 0.2, 0.1]]])
    keep = torch.tensor([[[True, True, False, False]]])
    mk, mv, assign, _ = evict_then_merge(k, v, score, keep, 2, tau=0.5)
    assert assign.tolist() == [[[1, 0]]]  # token 2 joins centre 0 (class 1), token 3 the zero class
    torch.testing.assert_close(mv[0, 0, :, 0], torch.tensor([(0.4 * 1 + 0.2 * 3) / 0.6, 2.0]))
    torch.testing.assert_close(mk.norm(dim=-1), k[..., :2, :].norm(dim=-1))  # the centre's norm kept
    only_evict = evict_then_merge(k, v, score, keep, 2, tau=1.5)
    assert torch.equal(only_evict[1], v[..., :2, :]) and (only_evict[2] == 0).all()


def test_ems_budget_every_head():
    model = _tiny("qwen2")
    cache = _prefill(model, EMSCache(budget=24, window=8), 70)
    assert cache.stored_lengths() == [24] * 4


# --- Chelsea ------------------------------------------------------------------------------------------------------
def test_chelsea_soft_matching():
    torch.manual_seed(0)
    k, v = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    ones, pos = torch.ones(1, 2, 16), torch.arange(16).expand(1, 2, 16)
    same = soft_matching_round(k, v, ones, pos, 0)
    assert torch.equal(same[0], k) and torch.equal(same[1], v)
    k2 = k.clone()
    k2[..., 4, :] = k2[..., 5, :]  # a duplicated A/B pair merges first
    mk, mv, size, p = soft_matching_round(k2, v, ones, pos, 1)
    assert mk.shape == (1, 2, 15, 8) and (size == 2).sum() == 2 and not (p == 4).any()
    torch.testing.assert_close(mk[..., 4, :], k2[..., 5, :])
    torch.testing.assert_close(mv[..., 4, :], (v[..., 4, :] + v[..., 5, :]) / 2)
    assert cluster_chunk(k, v, 4)[0].shape == (1, 2, 4, 8)  # several rounds
    ident = torch.ones(1, 1, 8, 4)
    assert torch.equal(cluster_chunk(ident, 2 * ident, 3)[1], 2 * torch.ones(1, 1, 3, 4))


# --- bytes held == hand count -------------------------------------------------------------------------------------
def test_memory_bytes_hand_count():
    model = _tiny("llama")  # 4 layers, 4 query / 2 KV heads, head dim 16, fp32
    L, b, h, hq, d, n = 4, 2, 2, 4, 16, 70
    full = L * 2 * b * h * n * d * 4
    assert _prefill(model, FullCache(), n).memory_bytes() == full

    mc = _prefill(model, MiniCache(model.config), n)  # layers 0, 1 full; one pair (2, 3)
    pair = mc.layers[2].pair
    per = [b * h * n * d * 4 + 2 * b * h * n * 4 + b * h * 4 + m.idx.numel() * (4 + 2 * d * 4)
           for m in (pair.k, pair.v)]
    assert mc.memory_bytes() == full // 2 + sum(per)
    mq = _prefill(model, MiniCache(model.config, bits=4), n)
    pair = mq.layers[2].pair
    per = [b * h * n * (d // 2 + 2 * 2) + 2 * b * h * n * 4 + b * h * 4 + m.idx.numel() * (4 + 2 * d * 4)
           for m in (pair.k, pair.v)]
    assert mq.memory_bytes() == full // 2 + sum(per)

    kvm = _prefill(model, KVMergerCache(ratio=0.5), n)
    assert kvm.stored_lengths() == [35] * L and kvm.memory_bytes() == full * 35 // n

    ems = _prefill(model, EMSCache(budget=32, window=8), n)
    assert ems.memory_bytes() == L * (2 * b * h * 32 * d * 4 + 2 * b * h * 32 * 4 + b * hq * 8 * d * 4)

    ch = _prefill(model, ChelseaCache(chunk_size=16, merge_ratio=0.5, sink=4, recent=16), n)
    # 4 sink + 3 chunks of 16 -> 8 centroids each; 18 tokens wait in the window
    assert ch.stored_lengths() == [4 + 24 + 18] * L and ch.memory_bytes() == L * 2 * b * h * 46 * d * 4
    assert ch.get_seq_length() == n


# --- quality on the trained tiny reference LM ---------------------------------------------------------------------
@pytest.mark.xfail(sys.version_info[:2] != (3, 11), strict=False,
                   reason="the 5 % bounds were measured on the tiny reference LM trained on CPython 3.11's stdlib (CI); another Python trains another LM (3.12 on the H200 image: MiniCache 30.39 vs full 28.45, +6.8 %; docs/testing.md)")
def test_default_settings_keep_perplexity():
    folder = cached_reference_lm("tiny")
    model = enable_query_observation(build_causal_lm(str(folder)).float().eval())
    from datamodules.stdlib_text import ReferenceTokenizer
    from tasks.llm.kv_eval import held_out_ids

    ids = held_out_ids(folder, ReferenceTokenizer.from_folder(folder), max_tokens=5000)
    x = torch.stack([ids[i * 256:(i + 1) * 256] for i in range(2)])

    def ppl(cache):
        nll, n = cached_nll(model, x, cache, 192, 16)
        return math.exp(nll / n)

    full = ppl(FullCache())
    # stated bounds: each method's default setting within 5 % of the full cache's perplexity (EMS at budget 96 of
    # 192); CacheGen's default level within 2 % (its test module trains no LM, so it is checked here)
    for name, cache in {"minicache": MiniCache(model.config), "minicache_4bit": MiniCache(model.config, bits=4),
                        "kvmerger": KVMergerCache(), "ems": EMSCache(budget=96), "chelsea": ChelseaCache()}.items():
        assert ppl(cache) <= 1.05 * full, name
    assert ppl(CacheGenCache(model.config)) <= 1.02 * full
