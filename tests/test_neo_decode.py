"""NEO's fixed-shape decoding (static KV cache, one fixed-shape step: compiled / CUDA-graph capturable) equals the
dynamic-cache decode and full forwards without a cache."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.bench_loader import load_benchmark
from tests.test_neo import _AtenLog, _doc, _greedy_no_cache, _images, _model
from zoo.neo_layers import attend_masked


def _packed():
    # two documents with images; the first is longer (larger t) than the last one, which decoding continues
    ids = torch.tensor([_doc(9, (2, 3), answer=4) + _doc(1, (3, 2), answer=0)])
    doc = torch.tensor([[0] * (9 + 8 + 4) + [1] * (1 + 8)])
    return ids, doc, _images((2, 3), (3, 2))


def _padded():
    # two rows, the shorter one left-padded (padding is document -1)
    a, b = _doc(3, (2, 3), answer=2), _doc(5, (3, 2), answer=3)
    n = len(b) - len(a)
    ids = torch.tensor([[0] * n + a, b])
    doc = torch.tensor([[-1] * n + [0] * len(a), [0] * len(b)])
    return ids, doc, _images((2, 3), (3, 2))


class _HeadLog:
    """The last-position logits of every LM-head call (prefill, then one per decode step)."""

    def __init__(self, m) -> None:
        self.rows: list[torch.Tensor] = []
        self.hook = m.lm.lm_head.register_forward_hook(self)

    def __call__(self, mod, args, out) -> None:
        self.rows.append((out[:, -1] if out.ndim == 3 else out).clone())

    def __enter__(self) -> _HeadLog:
        return self

    def __exit__(self, *exc) -> None:
        self.hook.remove()


@pytest.mark.parametrize("case", [_packed, _padded])
def test_static_greedy_equals_dynamic_and_no_cache_greedy(case):
    m = _model()
    ids, doc, ims = case()
    n = 7
    with torch.no_grad():
        with _HeadLog(m) as dyn_log:
            dyn = m.generate(ids, ims, max_new_tokens=n, doc_ids=doc, static_cache=False)
        with _HeadLog(m) as st_log:
            static = m.generate(ids, ims, max_new_tokens=n, doc_ids=doc)
        if case is _packed:
            plain = _greedy_no_cache(m, ids, ims, doc, n)
        else:  # each row alone, without padding and without a cache
            plain = torch.cat([_greedy_no_cache(m, ids[i: i + 1, doc[i] >= 0], ims[i: i + 1],
                                                doc[i: i + 1, doc[i] >= 0], n) for i in range(2)])
    assert torch.equal(static, dyn) and torch.equal(static, plain)
    # the dynamic path runs one more (discarded) step; the static one stops at the last kept token
    dyn_logits, st_logits = torch.stack(dyn_log.rows[:n]), torch.stack(st_log.rows)
    assert st_logits.shape == (n, *dyn_logits.shape[1:])
    torch.testing.assert_close(st_logits, dyn_logits, atol=1e-5, rtol=1e-5)


def test_static_eos_cut_equals_dynamic_and_decoders_are_reused():
    m = _model()
    ids, doc, ims = _padded()
    with torch.no_grad():
        free = m.generate(ids, ims, max_new_tokens=8, doc_ids=doc, static_cache=False)
        for eos in (int(free[0, 2]), int(free[1, 1]), 9999):  # row 0 ends at 3, row 1 at 2, never
            dyn = m.generate(ids, ims, max_new_tokens=8, doc_ids=doc, eos_id=eos, static_cache=False)
            static = m.generate(ids, ims, max_new_tokens=8, doc_ids=doc, eos_id=eos)
            assert torch.equal(static, dyn), eos
        # a decoder is kept per (batch, slots, eos, ...): calls of other lengths within the slots reuse it
        kept = m._static_decoders.items
        before = dict(kept)
        again = m.generate(ids[:, 2:], ims, max_new_tokens=5, doc_ids=doc[:, 2:], eos_id=9999)
        assert dict(kept) == before
        assert torch.equal(again, m.generate(ids[:, 2:], ims, max_new_tokens=5, doc_ids=doc[:, 2:], eos_id=9999,
                                             static_cache=False))
    with pytest.raises(ValueError, match="static_cache"):
        m.generate(ids, ims, doc_ids=doc, static_cache=False, cuda_graphs=True)


def _forced_no_cache(m, ids, ims, doc, toks):
    """(n, B, vocab) logits of one full forward without a cache over the prompt + ``toks[:, :-1]`` (continuing the
    last document): [i] predicts ``toks[:, i]``."""
    n = toks.shape[1]
    full = torch.cat((ids, toks[:, :-1]), 1)
    fdoc = torch.cat((doc, doc[:, -1:].expand(-1, n - 1)), 1)
    return m(full, ims, doc_ids=fdoc).logits[:, ids.shape[1] - 1:].transpose(0, 1)


@pytest.mark.parametrize("case", [_packed, _padded])
def test_static_teacher_forced_logits_equal_full_forward(case):
    m = _model()
    ids, doc, ims = case()
    toks = torch.randint(0, 500, (ids.shape[0], 6), generator=torch.Generator().manual_seed(3))  # not the greedy
    with torch.no_grad():
        want = _forced_no_cache(m, ids, ims, doc, toks)
        dec = m.static_decoder(ids.shape[0], 64)
        got = dec.teacher_forced(ids, toks, ims, doc_ids=doc)
        # the decoder generates as before afterwards (teacher forcing leaves no state behind)
        greedy = m.generate(ids, ims, max_new_tokens=6, doc_ids=doc, max_cache_len=64)
        assert torch.equal(greedy, m.generate(ids, ims, max_new_tokens=6, doc_ids=doc, static_cache=False))
    assert got.dtype == torch.float32 and got.shape == (6, ids.shape[0], 512)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bench_teacher_forced_dynamic_and_compiled_equal_greedy_logits():
    bench = load_benchmark("bench_neo")
    bench.DECODE_MODES["static_compile_eager"] = {"compile_decode": "eager"}  # a cheap compile backend
    m = _model()
    ids, ims = torch.tensor([_doc(5, (2, 3), answer=2)] * 2), _images((2, 3), (2, 3))
    with torch.no_grad():
        toks = m.generate(ids, ims, max_new_tokens=5, static_cache=False)
        dyn = bench.dynamic_teacher_forced(m, ids, ims, toks)
        gen = bench._gen(bench.DECODE_MODES["static_compile_eager"], ids.shape[1], 5)
        m.generate(ids, ims, max_new_tokens=5, **gen)
        kept = dict(m._static_decoders.items)
        comp = bench.teacher_forced(m, "static_compile_eager", ids, ims, toks,
                                    bench.cache_slots(ids.shape[1], 5, gen["max_cache_len"]))
    assert dict(m._static_decoders.items) == kept  # the generate() call's decoder (compiled step) was reused
    assert torch.equal(dyn.argmax(-1), toks.T)  # teacher-forced on its own greedy tokens: its own logits
    torch.testing.assert_close(comp, dyn, atol=1e-5, rtol=1e-5)


def test_bench_agreement_fields():
    bench = load_benchmark("bench_neo")
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(6, 2, 40, generator=g)
    ref_tokens = ref.argmax(-1).T
    same = bench.agreement(ref_tokens, ref, ref_tokens, ref)
    assert same["first_divergence_step"] is None and same["tf_argmax_agreement"] == 1.0
    assert same["tf_max_abs_logit_diff"] == 0 and same["tf_flip_max_ref_margin_rel"] is None
    # a near-tie at step 3 of row 1 (runner-up 1e-3 below), which the other mode's rounding (+2e-3) flips
    top = int(ref[3, 1].argmax())
    j = (top + 1) % 40
    ref[3, 1, j] = ref[3, 1, top] - 1e-3
    other = ref.clone()
    other[3, 1, j] += 2e-3
    tokens = ref_tokens.clone()
    tokens[1, 3:] = j
    a = bench.agreement(ref_tokens, ref, tokens, other)
    sd = float(ref[3, 1].std())
    assert a["first_divergence_step"] == 3 and a["tf_argmax_flips"] == 1
    assert a["tf_argmax_agreement"] == pytest.approx(11 / 12, abs=1e-3)
    assert a["tf_max_abs_logit_diff"] == pytest.approx(2e-3, rel=1e-2)
    assert a["tf_flip_max_ref_margin_rel"] == pytest.approx(1e-3 / sd, rel=1e-2)
    assert a["ref_margin_rel_at_divergence"] == pytest.approx(1e-3 / sd, rel=1e-2)
    assert a["tf_rel_logit_diff_at_divergence"] == pytest.approx(2e-3 / sd, rel=1e-2)
    assert a["ref_margin_rel_median"] > 10 * a["tf_flip_max_ref_margin_rel"]
    assert bench.logit_diff(ref, other)["argmax_agreement"] == pytest.approx(11 / 12, abs=1e-3)


def test_bf16_static_and_dynamic_differ_by_rounding_only():
    """bf16 weights: the static step's attention (bf16 matmuls) and the dynamic path's (SDPA's math path, float32
    inside) round differently, so greedy tokens may flip at near-ties; teacher-forced on the same tokens the two
    paths' logits differ by a few % of the logit scale, the prefill not at all, and each is as close to float32 as
    the other (a position / mask / cache bug would show as a difference of the logit scale's order)."""
    import copy

    bench = load_benchmark("bench_neo")
    m = _model().to(torch.bfloat16)
    ids, ims = torch.tensor([_doc(8, (4, 4), answer=16)]), [im.bfloat16() for im in _images((4, 4))]
    with torch.no_grad():
        toks = m.generate(ids, ims, max_new_tokens=24, static_cache=False)
        dyn = bench.dynamic_teacher_forced(m, ids, ims, toks)
        static = m.static_decoder(1, 128).teacher_forced(ids, toks, ims)
        m32 = copy.deepcopy(m).float()
        fp32 = bench.dynamic_teacher_forced(m32, ids, [im.float() for im in ims], toks)
        assert torch.equal(m32.static_decoder(1, 128).teacher_forced(ids, toks, [im.float() for im in ims]).argmax(-1),
                           fp32.argmax(-1))
    between, err_dyn, err_static = bench.logit_diff(dyn, static), bench.logit_diff(fp32, dyn), bench.logit_diff(
        fp32, static)
    assert torch.equal(static[0], dyn[0])  # the same prefill
    assert 0 < between["max_rel"] < 0.1 and between["argmax_agreement"] >= 0.9, between
    assert err_dyn["max_rel"] < 0.1 and err_static["max_rel"] < 0.1, (err_dyn, err_static)
    assert err_static["median_rel"] <= 1.5 * err_dyn["median_rel"], (err_dyn, err_static)


def test_attend_masked_equals_sdpa_with_gqa():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 3, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 5, 6,
                                                                                                      generator=g)
    allowed = torch.rand(2, 1, 3, 5, generator=g) > 0.4
    allowed[..., 0] = True
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(attend_masked(q, k, v, allowed, 0.3), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attend_masked(q[:, :, :1], k, v, allowed[:, :, :1], 0.3), ref[:, :, :1],
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_decode_step_compiles_as_one_graph_without_recompiles(backend):
    import torch._dynamo
    from torch._dynamo.utils import counters

    m = _model()
    ids, doc, ims = _packed()
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        want = m.generate(ids, ims, max_new_tokens=6, doc_ids=doc, static_cache=False)
        got = m.generate(ids, ims, max_new_tokens=6, doc_ids=doc, compile_decode=backend, max_cache_len=64)
        # another prompt length in the same slots: the same compiled step, no recompile
        short = m.generate(ids[:, 21:], ims[1:], max_new_tokens=4, doc_ids=doc[:, 21:], compile_decode=backend,
                           max_cache_len=64)
    assert torch.equal(got, want)
    assert torch.equal(short, m.generate(ids[:, 21:], ims[1:], max_new_tokens=4, doc_ids=doc[:, 21:],
                                         static_cache=False))
    assert counters["stats"]["unique_graphs"] == 1  # fullgraph: one graph for every step of both calls
    torch._dynamo.reset()


def test_static_decode_step_has_fewer_ops_and_no_host_sync():
    m = _model()
    ids, doc, ims = _packed()
    with torch.no_grad():
        dec = m.static_decoder(1, 64)
        dec.generate(ids, ims, max_new_tokens=3, doc_ids=doc)
        with _AtenLog() as static:
            dec.run_step()
        out = m(ids, ims, doc_ids=doc, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        with _AtenLog() as dynamic:
            m(tok, doc_ids=doc[:, -1:], cache=out.cache, use_cache=True)
    assert not {"_local_scalar_dense", "is_nonzero", "item"} & set(static.ops)
    assert len(static.ops) < len(dynamic.ops), (len(static.ops), len(dynamic.ops))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_decode", [False, True])
def test_cuda_graph_decode_equals_dynamic_cuda(compile_decode):
    m = _model().cuda()
    ids, doc, ims = _padded()
    ids, doc, ims = ids.cuda(), doc.cuda(), [i.cuda() for i in ims]
    with torch.no_grad():
        want = m.generate(ids, ims, max_new_tokens=6, doc_ids=doc, static_cache=False)
        for _ in range(2):  # captured once, replayed by the second call
            got = m.generate(ids, ims, max_new_tokens=6, doc_ids=doc, cuda_graphs=True, compile_decode=compile_decode)
            assert torch.equal(got, want)
    dec = next(iter(m._static_decoders.items.values()))
    assert dec.graphed and dec._graph is not None
    with torch.no_grad():  # teacher forcing replays the same graph; each step's logits are copied out of it
        forced = dec.teacher_forced(ids, want, ims, doc_ids=doc)
    assert torch.equal(forced.argmax(-1), want.T) and len(m._static_decoders.items) == 1


@pytest.mark.script
def test_bench_decode_tiny_smoke(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "neo.jsonl"
    subprocess.run([sys.executable, "benchmarks/bench_neo.py", "decode", "--tiny", "--device", "cpu", "--out", str(out),
                    "--decode-modes", "dynamic,static,static_compile"], check=True, timeout=300)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["dynamic", "static", "static_compile"]
    assert all("error" not in r and r["same_tokens_as_dynamic"] for r in rows), rows
    assert all(r["first_divergence_step"] is None and r["tf_argmax_agreement"] == 1.0 and r["dtype"] == "float32"
               for r in rows), rows
    # bf16 weights: the agreement fields, then the float32 check's row
    bf16 = tmp_path / "bf16.jsonl"
    subprocess.run([sys.executable, "benchmarks/bench_neo.py", "decode", "--tiny", "--device", "cpu", "--out",
                    str(bf16), "--decode-modes", "dynamic,static", "--dtype", "bfloat16"], check=True, timeout=300)
    rows = [json.loads(line) for line in bf16.read_text().splitlines()]
    assert [r["bench"] for r in rows] == ["decode", "decode", "decode_fp32"], rows
    assert all("agreement_error" not in r and 0 <= r["tf_max_rel_logit_diff"] < 0.1 for r in rows[:2]), rows
    fp32 = rows[2]
    assert "error" not in fp32 and fp32["modes"]["static"]["same_tokens"] and fp32["low_precision"] == "bfloat16"
    assert set(fp32["low_precision_vs_fp32"]) == {"dynamic", "static"}
