"""APE: single-context exactness, cached-context round trip, T/S behaviour, merge weights."""
import pytest
import torch

from tasks.llm.methods.ape import APE, ContextKV, sequential_logits
from zoo.llm.prefix import attention_with_lse, merge_partials
from zoo.llm import tiny_causal_lm


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_single_context_t1_s1_equals_sequential(family):
    model = tiny_causal_lm(family, vocab_size=50)
    prefix, ctx, query = torch.randint(0, 50, (4,)), torch.randint(0, 50, (7,)), torch.randint(0, 50, (3,))
    ape = APE(model, temperature=1.0, scale=1.0)
    pre = ape.encode_prefix(prefix)
    cached = ape.encode_contexts([ctx], pre)
    got = ape.query_logits(query, pre, cached)
    torch.testing.assert_close(got, sequential_logits(model, prefix, [ctx], query), atol=1e-5, rtol=1e-5)
    # generation: the same greedy tokens as the plain model over the sequential prompt
    gen = ape.generate(query, pre, cached, max_new_tokens=5)
    x = torch.cat([prefix, ctx, query])
    for _ in range(5):
        x = torch.cat([x, model(x[None]).logits[0, -1].argmax()[None]])
    assert gen.tolist() == x[-5:].tolist()


def test_parallel_contexts_positions_reused_and_cache_roundtrip(tmp_path):
    model = tiny_causal_lm("qwen2", vocab_size=50)
    ape = APE(model, temperature=0.9, scale=0.9)
    prefix = torch.randint(0, 50, (3,))
    ctxs = [torch.randint(0, 50, (n,)) for n in (5, 2, 4)]
    pre = ape.encode_prefix(prefix)
    cached = ape.encode_contexts(ctxs, pre)
    assert [c.length for c in cached] == [5, 2, 4] and ape.query_start(pre, cached) == 3 + 5
    # each context's KV equals encoding [prefix ; context] alone (position reuse, prefix shared)
    alone = ape.encode_contexts([ctxs[1]], pre)[0]
    for a, b in zip(alone.keys, cached[1].keys):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.save([c.state_dict() for c in cached], tmp_path / "ctx.pt")
    loaded = [ContextKV.from_state_dict(d) for d in torch.load(tmp_path / "ctx.pt", weights_only=True)]
    q = torch.randint(0, 50, (2,))
    torch.testing.assert_close(ape.query_logits(q, pre, loaded), ape.query_logits(q, pre, cached))
    # order of the contexts does not matter (same positions, non-causal context attention)
    perm = ape.query_logits(q, pre, [cached[2], cached[0], cached[1]])
    torch.testing.assert_close(perm, ape.query_logits(q, pre, cached), atol=1e-5, rtol=1e-5)


def test_temperature_sharpens_and_scale_raises_context_mass():
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    ent = []
    for t in (1.0, 0.5):
        scores = (q @ k.transpose(-1, -2)) / (8**0.5 * t)
        p = scores.softmax(-1)
        ent.append(-(p * p.log()).sum(-1).mean())
        o, _ = attention_with_lse(q, k, v, None, 8**-0.5, temperature=t)
        torch.testing.assert_close(o, p @ v, atol=1e-6, rtol=1e-5)
    assert ent[1] < ent[0]
    # context mass w_c grows with S when lambda_c > 0
    lc, lo = torch.tensor([2.0]), torch.tensor([1.5])
    oc, oo = torch.ones(1, 1), torch.zeros(1, 1)
    w = [merge_partials([oc, oo], [lc, lo], [s, 1.0])[0].item() for s in (0.8, 1.0, 1.2)]
    assert w[0] < w[1] < w[2]


@pytest.mark.parametrize("family,t,s", [("qwen2", 0.9, 0.9), ("llama", 1.0, 1.0), ("gemma2", 0.8, 1.1)])
def test_flex_backend_equals_eager_reference(family, t, s):
    """One FlexAttention call per segment (LSE returned, T / soft-cap as score_mod) gives the eager LSE-merge
    reference's query logits and the same greedy generation (own K/V growing per step)."""
    kw = {"attn_logit_softcapping": 1.0, "initializer_range": 0.2} if family == "gemma2" else {}
    model = tiny_causal_lm(family, vocab_size=50, **kw)
    prefix, query = torch.randint(0, 50, (4,)), torch.randint(0, 50, (3,))
    ctxs = [torch.randint(0, 50, (n,)) for n in (5, 2, 7)]
    ref, flex = APE(model, t, s, backend="eager"), APE(model, t, s, backend="flex")
    pre = ref.encode_prefix(prefix)
    cached = ref.encode_contexts(ctxs, pre)
    torch.testing.assert_close(flex.query_logits(query, pre, cached), ref.query_logits(query, pre, cached),
                               atol=1e-5, rtol=1e-5)
    assert flex.generate(query, pre, cached, 4).tolist() == ref.generate(query, pre, cached, 4).tolist()
    if t == s == 1.0:  # and both equal sequential encoding with one context
        one = ref.encode_contexts(ctxs[:1], pre)
        seq = sequential_logits(model, prefix, ctxs[:1], query)
        torch.testing.assert_close(flex.query_logits(query, pre, one), seq, atol=1e-5, rtol=1e-5)


def test_segment_flex_masks_padded_segment_rows():
    """A segment with padded (invalid) keys and rows reading entries through ``row_index``: flex equals eager."""
    from zoo.llm.prefix.segments import KVSegment, SegmentAttention

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.layer_idx = 0
    k, v = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    valid = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    q, kk, vv = torch.randn(3, 4, 2, 8), torch.randn(3, 2, 2, 8), torch.randn(3, 2, 2, 8)
    outs = []
    for backend in ("eager", "flex"):
        seg = KVSegment([k], [v], valid, 0.9, 0.8).select(torch.tensor([1, 0, 1]))
        spec = SegmentAttention([seg], record=False, merge=True, backend=backend)
        spec.begin(torch.tensor([[1, 1], [1, 0], [1, 1]], dtype=torch.bool))
        outs.append(spec(module, q, kk, vv, 8**-0.5))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,t,s", [("qwen2", 0.9, 0.9), ("llama", 1.0, 1.0), ("gemma2", 0.8, 1.1)])
def test_static_buffer_path_equals_eager(family, t, s):
    """``cuda_graphs=True`` off CUDA runs the fixed-shape code (own K/V in a fixed buffer, length a tensor, grouped
    segment attention) without capture: the same query logits and, token for token, the same greedy answer."""
    kw = {"attn_logit_softcapping": 1.0, "initializer_range": 0.2} if family == "gemma2" else {}
    torch.manual_seed(1)
    model = tiny_causal_lm(family, vocab_size=50, **kw)
    prefix, query = torch.randint(0, 50, (4,)), torch.randint(0, 50, (3,))
    ctxs = [torch.randint(0, 50, (n,)) for n in (5, 2, 7)]
    ref, static = APE(model, t, s, backend="eager"), APE(model, t, s, cuda_graphs=True)
    pre = ref.encode_prefix(prefix)
    cached = ref.encode_contexts(ctxs, pre)
    torch.testing.assert_close(static.query_logits(query, pre, cached), ref.query_logits(query, pre, cached),
                               atol=1e-5, rtol=1e-5)
    want = ref.generate(query, pre, cached, 8).tolist()
    assert static.generate(query, pre, cached, 8).tolist() == want
    assert static.generate(query, pre, cached, 8).tolist() == want  # the decoder is reused (length reset)
    assert len(static._static) == 2  # one per shape: (|Q|, 1) for the logits, (|Q|, 8) for the answer
    # eos: cut after the first eos, as the eager loop stops there
    eos = want[2]
    cut = ref.generate(query, pre, cached, 8, eos).tolist()
    assert static.generate(query, pre, cached, 8, eos_id=eos).tolist() == cut


def test_static_buffer_path_without_prefix():
    model = tiny_causal_lm("qwen2", vocab_size=50)
    ref, static = APE(model, backend="eager"), APE(model, cuda_graphs=True)
    pre = ref.encode_prefix(torch.zeros(0, dtype=torch.long))
    cached = ref.encode_contexts([torch.randint(0, 50, (n,)) for n in (3, 6)], pre)
    q = torch.randint(0, 50, (2,))
    assert static.generate(q, pre, cached, 5).tolist() == ref.generate(q, pre, cached, 5).tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_capture_equals_eager():
    """Captured prefill + decode step replayed per token: the eager path's tokens and logits on the GPU (fp32)."""
    torch.manual_seed(0)
    model = tiny_causal_lm("qwen2", vocab_size=50).cuda()
    ref, graphed = APE(model, 0.9, 0.9, backend="eager"), APE(model, 0.9, 0.9, cuda_graphs=True)
    prefix, query = torch.randint(0, 50, (4,)).cuda(), torch.randint(0, 50, (3,)).cuda()
    pre = ref.encode_prefix(prefix)
    cached = ref.encode_contexts([torch.randint(0, 50, (n,)).cuda() for n in (5, 2, 7)], pre)
    torch.testing.assert_close(graphed.query_logits(query, pre, cached), ref.query_logits(query, pre, cached),
                               atol=1e-4, rtol=1e-4)
    want = ref.generate(query, pre, cached, 10).tolist()
    dec = graphed.static_decoder(pre, cached, 3, 10)
    assert dec.graphed
    for _ in range(2):  # captured on the first call, replayed on the second
        assert graphed.generate(query, pre, cached, 10).tolist() == want
    assert dec._decode is not None and dec._prefill is not None
