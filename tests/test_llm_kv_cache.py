"""KV-cache methods that really compress (issue 22): packed storage, lossless settings equal the full cache, byte
counts equal hand counts, quality within stated bounds on the trained tiny reference LM."""

import pytest
import torch
from transformers import DynamicCache

from tasks.llm.engines.generation import cache_kwarg
from tasks.llm.kv_eval import EvalSettings, cached_nll, greedy_decode, run_grid
from tasks.llm.reference_lm_train import cached_reference_lm
from zoo.llm import build_causal_lm
from zoo.llm.cache.base import FullCache
from zoo.llm.cache.eviction import StreamingLLMCache
from zoo.llm.cache.gear import GEARCache, gear_compress, low_rank_power
from zoo.llm.cache.quant import pack_bits, quantize_groups, unpack_bits
from zoo.llm.cache.xkv import XKVCache, _Rope
from kv_cache_helpers import FAMILIES, generate, tiny_decoder







@pytest.fixture(scope="module")
def reference_lm():
    """The tiny reference LM, trained once and cached (cache_dir('derived/reference_lm'))."""
    return cached_reference_lm("tiny")


# --- storage primitives ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_unpack_and_quantisation_error(bits):
    codes = torch.randint(0, 2 ** bits, (3, 5, 37))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == -(-37 * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, 37), codes.to(torch.uint8))
    x = torch.randn(2, 3, 64)
    q = quantize_groups(x, bits, 16)
    err = (q.dequantize() - x).abs().reshape(2, 3, 4, 16)
    assert (err <= q.scale.float() / 2 + 1e-3).all()


def test_gear_error_ordering_and_low_rank_recovery():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 128, 32)
    x[..., 3] *= 8  # an outlier channel, as keys have
    errs = {}
    for name, (r, s) in {"Q": (0, 0.0), "Q+S": (0, 0.02), "Q+L": (4, 0.0), "Q+L+S": (4, 0.02)}.items():
        m = gear_compress(x, 2, 32, r, s, per_channel=True)
        errs[name] = ((m.decompress(torch.float32) - x).norm() / x.norm()).item()
    assert errs["Q"] > errs["Q+S"] > errs["Q+L+S"] and errs["Q"] > errs["Q+L"] > errs["Q+L+S"]
    low = torch.randn(2, 50, 3) @ torch.randn(2, 3, 20)
    a, b = low_rank_power(low, 3, iters=3)
    assert torch.allclose(a @ b.transpose(-1, -2), low, atol=1e-4)


# --- lossless settings equal the full cache, on every family, generate + manual loop ----------------------------
def _lossless(family, config):
    return {
        "full": FullCache(),
        "gear": GEARCache(compress_prefill=False, buffer_size=128),
        "streamingllm": StreamingLLMCache(sink=4, window=200),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_lossless_settings_equal_full_cache(family):
    model = tiny_decoder(family)
    x = torch.randint(1, 128, (2, 40))
    ref = generate(model, x, DynamicCache())
    for name, cache in _lossless(family, model.config).items():
        assert torch.equal(generate(model, x, cache), ref), name
    # xKV at full rank in fp32: equal up to the SVD's fp32 rounding
    xkv = XKVCache(model.config, group_size=2, rank_k=None, rank_v=None, factor_dtype="float32")
    assert torch.equal(generate(model, x, xkv), ref)
    with torch.no_grad():
        full = model(x, **{cache_kwarg(model): DynamicCache()}, use_cache=True)
        c = XKVCache(model.config, group_size=2, rank_k=None, rank_v=None, factor_dtype="float32")
        model(x[:, :30], **{cache_kwarg(model): c}, use_cache=True)
        step = model(x[:, 30:], **{cache_kwarg(model): c}, use_cache=True)
    torch.testing.assert_close(step.logits, full.logits[:, 30:], atol=1e-4, rtol=1e-4)


def test_manual_loop_matchesgenerate():
    model = tiny_decoder("llama")
    x = torch.randint(1, 128, (1, 33))
    ref = generate(model, x, DynamicCache(), n=10)[:, 33:]
    cache = GEARCache(group_size=16, buffer_size=16)
    assert torch.equal(greedy_decode(model, x, FullCache(), 10), ref)
    out = greedy_decode(model, x, cache, 10)
    assert out.shape == (1, 10) and cache.get_seq_length() == 43


def test_xkv_unrotates_keys_exactly():
    cfg = tiny_decoder("llama").config
    rope = _Rope(cfg)
    k = torch.randn(1, 2, 10, 16)
    torch.testing.assert_close(rope.rotate(rope.unrotate(k, 3), 3), k, atol=1e-5, rtol=1e-5)


# --- bytes held == hand count ---------------------------------------------------------------------------------
def _prefill(model, cache, n, b=2):
    with torch.no_grad():
        model(torch.randint(1, 128, (b, n)), **{cache_kwarg(model): cache}, use_cache=True)
    return cache


def test_memory_bytes_hand_count():
    model = tiny_decoder("llama")  # 4 layers, 2 KV heads, head dim 16, fp32
    L, b, h, d, n = 4, 2, 2, 16, 70
    assert _prefill(model, FullCache(), n).memory_bytes() == L * 2 * b * h * n * d * 4

    # GEAR 2-bit, g 16, ranks 4, s 2 % (k = 1 per side and group), buffer 16: 64 tokens compressed, 6 in the buffer
    g, r, m = 16, 4, 64
    per_matrix = (b * h * m * d * 2 // 8  # packed codes
                  + 2 * 2 * b * h * (m * d // g)  # fp16 scale + min per group
                  + 2 * b * h * (m + d) * r  # fp16 A, B
                  + (2 + 1) * 2 * b * h * (m * d // g))  # fp16 values + uint8 positions, 2 per group
    gear = _prefill(model, GEARCache(bits=2, group_size=g, buffer_size=g, rank_prefill=r), n)
    assert gear.memory_bytes() == L * (2 * per_matrix + 2 * b * h * (n - m) * d * 4)

    # xKV G=2, ranks 8/12, fp16 factors: per group A (b, n, r) shared + B_l (b, r, h d) per layer
    xkv = _prefill(model, XKVCache(model.config, group_size=2, rank_k=8, rank_v=12), n)
    assert xkv.memory_bytes() == (L // 2) * sum(2 * b * (n * r + 2 * r * h * d) for r in (8, 12))

    ev = _prefill(model, StreamingLLMCache(sink=4, window=20), n)
    assert ev.memory_bytes() == L * 2 * b * h * 24 * d * 4 and ev.stored_lengths() == [24] * L


# --- quality on the trained tiny reference LM ------------------------------------------------------------------
def test_default_settings_keep_perplexity(reference_lm):
    model = build_causal_lm(str(reference_lm)).float().eval()
    from datamodules.stdlib_text import ReferenceTokenizer
    from tasks.llm.kv_eval import held_out_ids

    ids = held_out_ids(reference_lm, ReferenceTokenizer.from_folder(reference_lm), max_tokens=5000)
    x = torch.stack([ids[i * 256:(i + 1) * 256] for i in range(2)])

    def ppl(cache):
        nll, n = cached_nll(model, x, cache, 192, 16)
        return torch.tensor(nll / n).exp().item()

    full = ppl(FullCache())
    # stated bounds: GEAR 2-bit / xKV default within 5 %, 4-bit GEAR within 2 % of the full cache
    assert ppl(GEARCache(group_size=16, buffer_size=16)) <= 1.05 * full
    assert ppl(GEARCache(bits=4, group_size=16, buffer_size=16)) <= 1.02 * full
    assert ppl(XKVCache(model.config, group_size=2)) <= 1.05 * full


def test_harness_grid_writes_table(reference_lm, tmp_path):
    s = EvalSettings(context=96, continuation=16, step=8, windows=1, passkey_lengths=(128,), passkey_trials=1,
                     greedy_prompts=2, greedy_tokens=8, batch=2, speed_tokens=4)
    methods = [{"name": "gear", "class_path": "zoo.llm.cache.gear.GEARCache",
                "init_args": {"group_size": 16, "buffer_size": 16}},
               {"name": "xkv", "class_path": "zoo.llm.cache.xkv.XKVCache", "init_args": {"group_size": 2}}]
    rows = run_grid(reference_lm, methods, s, tmp_path, device="cpu")
    assert [r["method"] for r in rows] == ["full", "gear", "xkv"]
    assert all(r["ratio"] > 1 for r in rows[1:]) and rows[0]["bytes"] > rows[1]["bytes"]
    for f in ("results.csv", "results.md", "results.json", "quality_vs_compression.png"):
        assert (tmp_path / f).is_file()


def test_shipped_grid_configs_build_every_method():
    from pathlib import Path

    import yaml

    from tasks.llm.kv_eval import method_factory

    config = tiny_decoder("llama").config
    paths = sorted((Path(__file__).resolve().parents[1] / "configs" / "kv_cache").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = yaml.safe_load(path.read_text())
        assert "model" not in cfg  # `model:` marks LightningCLI configs (tests/test_configs.py)
        EvalSettings(**(cfg.get("settings") or {}))
        for m in cfg["methods"]:
            assert hasattr(method_factory(m, config)(), "memory_bytes"), (path.name, m["name"])
