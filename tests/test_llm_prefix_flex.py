"""The FlexAttention path of the shared-prefix attention: block masks, exactness against the split path and the
repeated-prefix baseline (log-probs, loss, every gradient), GQA, soft-capping, backend selection.

FlexAttention runs eagerly on CPU without a backward: forward checks here run the real kernel (no gradients); gradient
checks on CPU take the dense twin of the same mask function, and the ``gpu`` test runs the compiled kernel's backward.
"""
import copy

import pytest
import torch

from zoo.llm import tiny_causal_lm
from zoo.llm.prefix import PrefixLayout, packed_suffix_logits, prefix_grouped_attention, repeated_suffix_logits
from zoo.llm.prefix.attention import resolve_mode
from zoo.llm.prefix.flex import block_mask_from_fn, dense_from_fn, flex_attention_call

GEMMA2 = {"attn_logit_softcapping": 1.0, "initializer_range": 0.2}


@pytest.mark.parametrize("kind", ["causal", "arrow", "arrow_context_masked"])
def test_mask_fn_is_the_dense_mask(kind):
    lay = PrefixLayout.build([3, 2, 5], [[2, 1], [1, 2, 2], [4]])
    dense = dense_from_fn(lay.mask_fn(kind), lay.batch_size, lay.length, lay.length, "cpu")
    assert torch.equal(dense, lay.dense_mask(kind))


def test_block_mask_skips_other_suffixes_and_marks_full_blocks():
    """A 300-token prefix and three 130-token suffixes at block size 128: the suffix-query blocks never load a block
    that holds only another suffix's keys, prefix blocks are full for suffix queries, the block counts are exact."""
    lay = PrefixLayout.build([256], [[128, 128, 128]])
    bm = lay.block_mask("causal")
    kv_num, full_num = bm.kv_num_blocks[0, 0].tolist(), bm.full_kv_num_blocks[0, 0].tolist()
    # query blocks 0,1: prefix (diagonal partial, below full); 2..4: suffix j sees prefix blocks 0,1 (full) + itself
    assert full_num == [0, 1, 2, 2, 2] and kv_num == [1, 1, 1, 1, 1]
    assert bm.kv_indices[0, 0, 4, 0].item() == 4  # suffix 3's only partial block is its own diagonal block
    lay2 = PrefixLayout.build([300, 7], [[130, 130, 130], [5]])
    bm2 = lay2.block_mask("causal")
    dense = lay2.dense_mask("causal")
    # the block mask (with its mask_mod) reproduces the dense mask exactly
    from torch.nn.attention.flex_attention import create_mask

    m = create_mask(bm2.mask_mod, lay2.batch_size, None, lay2.length, lay2.length, device="cpu")
    assert torch.equal(m, dense)


def test_block_mask_from_fn_chunks_agree():
    lay = PrefixLayout.build([200, 50], [[100, 60], [30, 30, 30]])
    a = block_mask_from_fn(lay.mask_fn("causal"), 2, lay.length, lay.length, "cpu")
    b = block_mask_from_fn(lay.mask_fn("causal"), 2, lay.length, lay.length, "cpu", chunk_elements=1)
    for x, y in ((a.kv_num_blocks, b.kv_num_blocks), (a.full_kv_num_blocks, b.full_kv_num_blocks),
                 (a.kv_indices, b.kv_indices), (a.full_kv_indices, b.full_kv_indices)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("softcap", [None, 0.7])
def test_flex_kernel_equals_split_over_several_blocks(softcap):
    """The real (eager) FlexAttention kernel, GQA, ragged rows over several 128-blocks, with and without soft-cap."""
    torch.manual_seed(0)
    lay = PrefixLayout.build([150, 40], [[70, 3, 90], [20, 130]])
    q = torch.randn(2, 4, lay.length, 8) * 2
    k, v = torch.randn(2, 2, lay.length, 8) * 2, torch.randn(2, 2, lay.length, 8)
    with torch.no_grad():
        out = prefix_grouped_attention(q, k, v, lay, mode="flex", softcap=softcap)
        ref = prefix_grouped_attention(q, k, v, lay, mode="split", softcap=softcap)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out[~lay.valid].abs().max() == 0  # padding slots are zero, as in every mode


def test_flex_lse_and_temperature_equal_eager():
    from zoo.llm.prefix import attention_with_lse

    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    for cap, t in ((None, 1.0), (None, 0.9), (0.8, 0.9)):
        out, lse = flex_attention_call(q, k, v, None, 8**-0.5, softcap=cap, temperature=t, return_lse=True)
        ref, ref_lse = attention_with_lse(q, k, v, None, 8**-0.5, temperature=t, softcap=cap)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_auto_mode_is_split_on_cpu_and_flex_on_cuda():
    assert resolve_mode("auto", "cpu") == "split" and resolve_mode(None, "cpu") == "split"
    assert resolve_mode("auto", "cuda") == "flex"
    assert resolve_mode("merge", "cuda") == "merge"
    with pytest.raises(ValueError):
        resolve_mode("fused", "cpu")


def _batch():
    prefixes = [torch.randint(0, 64, (n,)) for n in (5, 2, 7)]
    groups = [[torch.randint(0, 64, (n,)) for n in ns] for ns in ((3, 1, 4), (2,), (1, 3, 2, 5))]
    return prefixes, groups


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_flex_forward_logits_equal_repeated_no_grad(family):
    """Inference: the real FlexAttention kernel in every layer (GQA; Gemma-2 soft-cap through score_mod)."""
    torch.manual_seed(1)
    model = tiny_causal_lm(family, vocab_size=64, **(GEMMA2 if family == "gemma2" else {}))
    ref_model = copy.deepcopy(model)
    prefixes, groups = _batch()
    with torch.no_grad():
        lf, vf, _ = packed_suffix_logits(model, prefixes, groups, mode="flex")
        lr, vr = repeated_suffix_logits(ref_model, prefixes, groups)
    assert torch.equal(vf, vr)
    torch.testing.assert_close(lf[vf], lr[vr], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_flex_logps_loss_and_grads_equal_split_and_repeated(family):
    """Training on CPU (the dense twin of the flex mask): logits, loss and every gradient agree with the split path
    and with the repeated-prefix baseline."""
    torch.manual_seed(2)
    model = tiny_causal_lm(family, vocab_size=64, **(GEMMA2 if family == "gemma2" else {}))
    ref_model = copy.deepcopy(model)
    prefixes, groups = _batch()
    w = None
    res = {}
    for name, m, fn in (("flex", model, lambda m: packed_suffix_logits(m, prefixes, groups, mode="flex")),
                        ("split", model, lambda m: packed_suffix_logits(m, prefixes, groups, mode="split")),
                        ("repeated", ref_model, lambda m: repeated_suffix_logits(m, prefixes, groups))):
        m.zero_grad()
        logits, valid = fn(m)[:2]
        w = torch.randn(logits.shape[:2]) if w is None else w
        loss = (torch.log_softmax(logits, -1)[..., 0] * w * valid).sum()
        loss.backward()
        res[name] = (logits[valid].detach(), loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
    for other in ("split", "repeated"):
        torch.testing.assert_close(res["flex"][0], res[other][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res["flex"][1], res[other][1], atol=1e-5, rtol=1e-5)
        for n, g in res["flex"][2].items():
            torch.testing.assert_close(g, res[other][2][n], atol=1e-5, rtol=1e-4, msg=f"{other}: {n}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["qwen2", pytest.param("gemma2", marks=pytest.mark.xfail(
    strict=False, reason="H200, torch 2.11 (2026-12-03): the compiled backward with the soft-capping score_mod raises "
    "'all unwrapped values must be FakeTensor, int, or SymInt'; mode='auto' keeps soft-capped models on 'split'"))])
def test_flex_kernel_backward_on_cuda_equals_repeated(family):
    """The compiled FlexAttention kernel, forward and backward, in fp32 on CUDA: loss and every gradient."""
    torch.manual_seed(3)
    model = tiny_causal_lm(family, vocab_size=64, **(GEMMA2 if family == "gemma2" else {})).cuda()
    ref_model = copy.deepcopy(model)
    prefixes = [torch.randint(0, 64, (n,)).cuda() for n in (150, 20)]
    groups = [[torch.randint(0, 64, (n,)).cuda() for n in ns] for ns in ((30, 140, 7), (9, 60))]
    res = {}
    for name, m, fn in (("flex", model, lambda m: packed_suffix_logits(m, prefixes, groups, mode="flex")),
                        ("repeated", ref_model, lambda m: repeated_suffix_logits(m, prefixes, groups))):
        m.zero_grad()
        logits, valid = fn(m)[:2]
        loss = (torch.log_softmax(logits.float(), -1)[..., 0] * valid).sum()
        loss.backward()
        res[name] = (loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
    torch.testing.assert_close(res["flex"][0], res["repeated"][0], atol=1e-4, rtol=1e-5)
    for n, g in res["flex"][1].items():
        torch.testing.assert_close(g, res["repeated"][1][n], atol=1e-4, rtol=1e-3, msg=n)
