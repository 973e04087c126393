"""The shared-prefix attention primitive: layout, masks, LSE merge, HF integration, outputs and gradients."""
import copy

import pytest
import torch
import torch.nn.functional as F

from zoo.llm.prefix import (
    PrefixLayout,
    attention_with_lse,
    merge_partials,
    packed_suffix_logits,
    prefix_grouped_attention,
    repeated_suffix_logits,
    shared_prefix_logits,
)
from zoo.llm import enable_activation_checkpointing, tiny_causal_lm


def test_layout_positions_restart_and_masks():
    lay = PrefixLayout.build([3, 2], [[2, 1], [1, 2, 2]])
    assert lay.length == 7
    assert lay.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 0]
    assert lay.position_ids[1].tolist() == [0, 1, 2, 2, 3, 2, 3]
    assert lay.segments()[0].tolist() == [0, 0, 0, 1, 1, 2, -1]
    m = lay.dense_mask("causal")[0, 0]
    assert m[5, :3].all() and not m[5, 3:5].any() and m[5, 5]  # suffix 2 sees prefix + itself, not suffix 1
    assert m[4, 3] and not m[3, 4]  # causal inside a suffix
    arrow = lay.dense_mask("arrow")[1, 0]
    assert arrow[0].tolist() == [True] * 7  # released Uni-Encoder: the context sees every candidate
    assert arrow[3, 4] and not arrow[3, 5]  # candidate sees itself bidirectionally, not another candidate
    ctx = lay.dense_mask("arrow_context_masked")[1, 0]
    assert ctx[0].tolist() == [True, True] + [False] * 5
    sm = lay.suffix_mask()  # [B2, 1, S_max, P_max + S_max]: bottom-right aligned
    assert sm.shape == (5, 1, 2, 5)
    assert sm[2, 0, 0].tolist() == [True, True, False, True, False]  # row 1 has P=2: prefix slot 2 is padding


def test_sdpa_is_causal_is_top_left_when_lengths_differ():
    """Why the suffix block needs an explicit (bottom-right) mask."""
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    bottom_right = torch.ones(2, 5, dtype=torch.bool).tril(diagonal=3)
    right = F.scaled_dot_product_attention(q, k, v, attn_mask=bottom_right)
    assert not torch.allclose(top_left, right)


def test_lse_merge_equals_full_softmax():
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    full, lse_full = attention_with_lse(q, k, v, None, 8**-0.5)
    perm = torch.randperm(9)
    a, b = perm[:4], perm[4:]
    oa, la = attention_with_lse(q, k[:, :, a], v[:, :, a], None, 8**-0.5)
    ob, lb = attention_with_lse(q, k[:, :, b], v[:, :, b], None, 8**-0.5)
    out, lse = merge_partials([oa, ob], [la, lb])
    torch.testing.assert_close(out, full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, lse_full, atol=1e-6, rtol=1e-5)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(full, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["split", "merge", "dense", "flex"])
@pytest.mark.parametrize("fast", [False, True])
def test_grouped_attention_equals_repeated_layout_with_grads(mode, fast):
    if fast and mode != "split":
        pytest.skip("fast masks only concern the split path")
    prefix_lens = [4, 4] if fast else [4, 2]
    suffix_lens = [[3, 1, 2], [2, 3]]
    lay = PrefixLayout.build(prefix_lens, suffix_lens)
    h, hkv, d = 4, 2, 8
    q = torch.randn(2, h, lay.length, d, requires_grad=True)
    k = torch.randn(2, hkv, lay.length, d, requires_grad=True)
    v = torch.randn(2, hkv, lay.length, d, requires_grad=True)
    out = prefix_grouped_attention(q, k, v, lay, mode=mode, fast_masks=fast)
    w = torch.randn_like(out)
    (out * w * lay.valid[:, :, None, None]).sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    # reference: each (prefix, suffix) pair alone, plain causal attention, scattered back; prefix outputs once
    total = 0
    seg = lay.segments()
    for i, (p, row) in enumerate(zip(prefix_lens, suffix_lens)):
        start = p
        for j, s in enumerate(row):
            idx = torch.cat([torch.arange(p), torch.arange(start, start + s)])
            o = F.scaled_dot_product_attention(
                q[i : i + 1, :, idx], k[i : i + 1, :, idx].repeat_interleave(2, 1),
                v[i : i + 1, :, idx].repeat_interleave(2, 1), is_causal=True,
            ).transpose(1, 2)[0]
            torch.testing.assert_close(out[i, start : start + s], o[p:], atol=1e-5, rtol=1e-5)
            total = total + (o[p:] * w[i, start : start + s]).sum()
            if j == 0:
                torch.testing.assert_close(out[i, :p], o[:p], atol=1e-5, rtol=1e-5)
                total = total + (o[:p] * w[i, :p]).sum()
            start += s
    assert (seg >= 0).sum() == lay.valid.sum()
    total.backward()
    for g, x in zip(grads, (q, k, v)):
        torch.testing.assert_close(g, x.grad, atol=1e-5, rtol=1e-4)


# Gemma-2 with a small attention-logit soft-cap and larger weights (the default cap of 50 barely bites in a tiny random
# model; dropping this one moves the logits by ~2): the cap must be applied in every shared-prefix path, as HF's eager
GEMMA2 = {"attn_logit_softcapping": 1.0, "initializer_range": 0.2}


def _tiny(family, **kw):
    return tiny_causal_lm(family, vocab_size=64, **(GEMMA2 if family == "gemma2" else {}), **kw)


# modes are covered at kernel level; gemma2 checks the soft-cap in every path
@pytest.mark.parametrize("family,mode", [("llama", "split"), ("qwen2", "split"), ("mistral", "split"),
                                         ("gemma2", "split"), ("gemma2", "merge"), ("gemma2", "dense")])
def test_shared_prefix_logits_equal_sequential(family, mode):
    model = _tiny(family)
    ref_model = copy.deepcopy(model)  # the model's own (HF) attention, never switched to sharezoo_prefix
    prefix = torch.randint(0, 64, (6,))
    suffixes = [torch.randint(0, 64, (n,)) for n in (3, 1, 5)]
    out = shared_prefix_logits(model, prefix, suffixes, mode=mode)
    for s, o in zip(suffixes, out):
        ids = torch.cat([prefix, s])[None]
        ref = ref_model(ids).logits[0, prefix.numel() - 1 : prefix.numel() + s.numel() - 1]
        assert o.shape == (s.numel(), 64)
        torch.testing.assert_close(o, ref, atol=1e-5, rtol=1e-5)
        # ordinary forwards of the switched model (no spec) keep the model's attention, soft-cap included
        torch.testing.assert_close(model(ids).logits, ref_model(ids).logits, atol=1e-5, rtol=1e-5)


def test_softcap_is_applied_in_every_spec():
    """Soft-capping reaches the kernels: attention_with_lse, the MaskedAttention spec and the segment spec."""
    from zoo.llm.prefix import MaskedAttention
    from zoo.llm.prefix.segments import KVSegment, SegmentAttention

    q, k, v = torch.randn(2, 4, 5, 8) * 3, torch.randn(2, 2, 5, 8) * 3, torch.randn(2, 2, 5, 8)
    cap, scale = 0.7, 8**-0.5
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    s = torch.tanh(q @ k.repeat_interleave(2, 1).transpose(-1, -2) * scale / cap) * cap
    ref = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v.repeat_interleave(2, 1)
    out, _ = attention_with_lse(q, k, v, causal, scale, softcap=cap)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    module = torch.nn.Module()
    module.layer_idx = 0
    out = MaskedAttention(causal[None, None])(module, q, k, v, scale, softcap=cap)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)
    for merge in (False, True):  # keys 0..1 as a cached segment, 2..4 as the rows' own keys
        seg = KVSegment([k[:, :, :2]], [v[:, :, :2]], None)
        spec = SegmentAttention([seg], record=False, merge=merge)
        spec.begin(torch.ones(2, 3, dtype=torch.bool))
        out = spec(module, q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], scale, softcap=cap)
        torch.testing.assert_close(out, ref[:, :, 2:].transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwarg", ["s_aux", "sinks", "position_bias"])
def test_unsupported_attention_kwargs_raise(kwarg):
    from zoo.llm.prefix import GroupedAttention
    from zoo.llm.prefix.hf import prefix_attention_forward

    lay = PrefixLayout.build([2], [[1, 1]])
    module = torch.nn.Linear(1, 1).eval()
    q = torch.randn(1, 2, lay.length, 4)
    with pytest.raises(ValueError, match=kwarg):
        prefix_attention_forward(module, q, q, q, None, prefix_attention=GroupedAttention(lay), **{kwarg: torch.ones(2)})


def test_wrong_position_restart_is_detected():
    """Sanity check of the test itself: suffixes continuing at P + sum(previous) differ from the baseline."""
    from zoo.llm.prefix import GroupedAttention, lm_logits, run_with_spec

    model = tiny_causal_lm("llama", vocab_size=64)
    prefix, suffixes = torch.randint(0, 64, (5,)), [torch.randint(0, 64, (3,)) for _ in range(2)]
    lay = PrefixLayout.build([5], [[3, 3]])
    ids = lay.pack([prefix], [suffixes])
    wrong = torch.arange(lay.length)[None]
    hidden = run_with_spec(model, GroupedAttention(lay), wrong, input_ids=ids)
    logits = lm_logits(model, hidden)[0, 8:10]  # suffix 2, tokens 0..1 (predicting tokens 1..2)
    ref = model(torch.cat([prefix, suffixes[1]])[None]).logits[0, 5:7]
    assert (logits - ref).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma2"])
def test_packed_batch_logits_and_grads_equal_repeated(family):
    torch.manual_seed(1)
    model = _tiny(family)
    ref_model = copy.deepcopy(model)  # the baseline runs the model's own attention (eager soft-cap for gemma2)
    prefixes = [torch.randint(0, 64, (n,)) for n in (5, 2, 7)]
    groups = [[torch.randint(0, 64, (n,)) for n in ns] for ns in ((3, 1, 4), (2,), (1, 3, 2, 5))]
    target_w = None

    def run(m, fn):
        nonlocal target_w
        m.zero_grad()
        logits, valid = fn(m, prefixes, groups)[:2]
        if target_w is None:
            target_w = torch.randn(logits.shape[:2])
        loss = (torch.log_softmax(logits, -1)[..., 0] * target_w * valid).sum()
        loss.backward()
        return logits, valid, loss, {n: p.grad.clone() for n, p in m.named_parameters()}

    lp, vp, loss_p, gp = run(model, packed_suffix_logits)
    lr, vr, loss_r, gr = run(ref_model, repeated_suffix_logits)
    assert torch.equal(vp, vr)
    torch.testing.assert_close(lp[vp], lr[vr], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_p, loss_r, atol=1e-5, rtol=1e-5)
    for n in gp:
        torch.testing.assert_close(gp[n], gr[n], atol=1e-5, rtol=1e-4, msg=n)


def test_gradient_checkpointing_keeps_the_packed_attention():
    """Recomputation in backward must see the same attention spec (it travels as a forward kwarg)."""
    model = tiny_causal_lm("qwen2", vocab_size=64).train()
    prefixes = [torch.randint(0, 64, (n,)) for n in (5, 3)]
    groups = [[torch.randint(0, 64, (n,)) for n in ns] for ns in ((3, 2), (4,))]
    grads = []
    for ckpt in (False, True):
        if ckpt:
            enable_activation_checkpointing(model)
        model.zero_grad()
        logits, valid, _ = packed_suffix_logits(model, prefixes, groups)
        (logits.log_softmax(-1)[..., 1] * valid).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)


def test_sliding_window_allows_positions_up_to_w_minus_1():
    """HF keeps key j for query i when j > i - W: a batch whose largest position index is W - 1 is exact; W raises."""
    w = 8
    model = tiny_causal_lm("mistral", vocab_size=64, sliding_window=w)
    ref_model = copy.deepcopy(model)
    prefix = torch.randint(0, 64, (5,))
    suffixes = [torch.randint(0, 64, (n,)) for n in (3, 1)]  # P + S_max = W: position indices 0 .. W - 1
    out = shared_prefix_logits(model, prefix, suffixes)
    for s, o in zip(suffixes, out):
        ref = ref_model(torch.cat([prefix, s])[None]).logits[0, 4 : 4 + s.numel()]
        torch.testing.assert_close(o, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="sliding window"):
        shared_prefix_logits(model, prefix, [torch.randint(0, 64, (4,))])  # position index W
