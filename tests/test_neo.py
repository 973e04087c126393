"""NEO (zoo/neo.py, zoo/neo_layers.py): the Must-not-miss items, each against an independent computation."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo.llm import build_causal_lm
from zoo.neo import NEO, checkpoint_filter_fn, patchify, qwen3_to_neo, smart_resize
from zoo.neo_layers import NativeMask, native_positions

S, C, E = 509, 510, 511  # neo_tiny's <img>, <IMG_CONTEXT>, </img>


def _model(**kw) -> NEO:
    torch.manual_seed(0)
    return zoo.create_model("neo_tiny", **kw).eval()


def _doc(n_text: int, grid: tuple[int, int], answer: int = 3) -> list[int]:
    return list(range(1, n_text + 1)) + [S] + [C] * (grid[0] * grid[1]) + [E] + list(range(20, 20 + answer))


def _images(*grids: tuple[int, int], px: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(3, h * px, w * px, generator=g) for h, w in grids]


def test_forward_backward_and_token_count():
    m = _model().train()
    ids = torch.tensor([_doc(2, (3, 4))])
    out = m(ids, _images((3, 4)))
    assert out.logits.shape == (1, ids.shape[1], 512)
    tokens, grids = m.vision(_images((3, 4), (2, 5)))
    assert grids.tolist() == [[3, 4], [2, 5]] and tokens.shape == (3 * 4 + 2 * 5, 64)  # (H/8)(W/8) tokens each
    out.logits.sum().backward()
    assert m.vision.patch.weight.grad is not None and m.lm.model.layers[0].self_attn.q_proj_hw.weight.grad is not None


def test_patch_embedding_2d_rope_against_complex_rotation():
    m = _model()
    im = _images((2, 3))[0]
    pe = m.vision
    feats = torch.nn.functional.gelu(pe.patch(im[None]))[0]  # (C, 4, 6) patch features
    c = feats.shape[0]
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    z = feats.permute(1, 2, 0).double()  # (4, 6, C)

    def rot(x, pos):  # adjacent pairs as complex numbers times e^{i pos θ_k}
        d = x.shape[-1]
        theta = 1e4 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        xc = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(theta), pos[..., None] * theta)
        return torch.stack((xc.real, xc.imag), -1).flatten(-2)

    ref = torch.cat((rot(z[..., : c // 2], cols.double()), rot(z[..., c // 2:], rows.double())), -1)
    want = pe.merge(ref.float().permute(2, 0, 1)[None])[0].permute(1, 2, 0).reshape(-1, 64)
    got, _ = pe([im])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the upstream flattened-patch format gives the same tokens
    flat, _ = pe.from_patches(patchify(im, 4), torch.tensor([[4, 6]]))
    torch.testing.assert_close(flat, got)


def test_32px_tokens_at_paper_size_and_smart_resize():
    with torch.device("meta"):
        m = zoo.create_model("neo_2b")
    assert m.token_px == 32 and m.vision.patch.out_channels == 1024 and m.vision.merge.out_channels == 2048
    for h, w in [(480, 640), (100, 3000), (5000, 5000), (20, 20)]:
        rh, rw = smart_resize(h, w, 32, 256 * 256, 2048 * 2048)
        assert rh % 32 == 0 and rw % 32 == 0 and 256 * 256 <= rh * rw <= 2048 * 2048
    assert smart_resize(480, 640) == (480, 640)


def test_native_positions_one_t_per_image_and_restart_per_document():
    ids = torch.tensor([_doc(2, (2, 3)) + _doc(1, (1, 2), answer=1)])
    doc = torch.tensor([[0] * len(_doc(2, (2, 3))) + [1] * len(_doc(1, (1, 2), 1))])
    thw, img = native_positions(ids, torch.tensor([[2, 3], [1, 2]]), _model().ids, doc)
    t, h, w = thw[:, 0].tolist()
    # doc 0: text 0,1; <img> 2; six image tokens all t=3; </img> 4; answer 5,6,7
    assert t[:12] == [0, 1, 2, 3, 3, 3, 3, 3, 3, 4, 5, 6] and t[12] == 7
    assert h[3:9] == [0, 0, 0, 1, 1, 1] and w[3:9] == [0, 1, 2, 0, 1, 2] and h[:3] == [0, 0, 0]
    assert t[13:] == [0, 1, 2, 2, 3, 4] and img[0].tolist()[3:9] == [0] * 6 and img[0].tolist()[15:17] == [1, 1]


def test_mixed_mask_equals_explicit_dense_mask_on_a_packed_sample():
    ids = torch.tensor([_doc(2, (2, 2)) + _doc(1, (1, 3), answer=2)])
    n0 = len(_doc(2, (2, 2)))
    doc = torch.tensor([[0] * n0 + [1] * (ids.shape[1] - n0)])
    _, img = native_positions(ids, torch.tensor([[2, 2], [1, 3]]), _model().ids, doc)
    dense = NativeMask(doc, img, ids.shape[1]).dense()[0, 0]
    L = ids.shape[1]
    want = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        for k in range(L):
            same_doc = doc[0, q] == doc[0, k]
            same_img = img[0, q] >= 0 and img[0, q] == img[0, k]
            want[q, k] = same_doc and (k <= q or same_img)
    assert torch.equal(dense, want)
    assert dense[3, 6] and not dense[2, 3] and not dense[n0, 0]  # image sees ahead in itself; <img> causal; no x-doc


def _packed_pair():
    ids = torch.tensor([_doc(2, (2, 3)) + _doc(1, (2, 2), answer=2)])
    n0 = len(_doc(2, (2, 3)))
    return ids, torch.tensor([[0] * n0 + [1] * (ids.shape[1] - n0)]), _images((2, 3), (2, 2))


@pytest.mark.parametrize("mixed", [True, False])
def test_flex_attention_block_mask_equals_dense_sdpa(mixed):
    """FlexAttention runs forward on CPU (eager); its output equals SDPA with the dense mask of the same function."""
    ids, doc, ims = _packed_pair()
    m = _model(mixed_mask=mixed)
    with torch.no_grad():
        dense = m(ids, ims, doc_ids=doc).logits
        m.attn_backend = "flex"
        flex = m(ids, ims, doc_ids=doc).logits
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-4)
    mask = m.mask(doc, native_positions(ids, torch.tensor([[2, 3], [2, 2]]), m.ids, doc)[1], ids.shape[1])
    bm = mask.block_mask()
    assert bm.shape[-2:] == (ids.shape[1], ids.shape[1])
    # training on CPU with attn_backend=flex takes the dense path of the same mask (no FlexAttention CPU backward)
    m.train()
    m(ids, ims, doc_ids=doc).logits.sum().backward()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flex_attention_equals_dense_sdpa_with_gradients_cuda():
    ids, doc, ims = _packed_pair()
    outs = []
    for backend in ("sdpa", "flex"):
        m = _model(attn_backend=backend).cuda()
        out = m(ids.cuda(), [i.cuda() for i in ims], doc_ids=doc.cuda()).logits
        out.square().mean().backward()
        outs.append((out.detach(), m.lm.model.layers[1].self_attn.k_proj_hw.weight.grad, m.vision.patch.weight.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-3)


def test_packing_two_documents_equals_each_alone():
    m = _model()
    d0, d1 = _doc(2, (2, 3)), _doc(3, (1, 2), answer=2)
    ims = _images((2, 3), (1, 2))
    packed = m(torch.tensor([d0 + d1]), ims, doc_ids=torch.tensor([[0] * len(d0) + [1] * len(d1)])).logits[0]
    a = m(torch.tensor([d0]), ims[:1]).logits[0]
    b = m(torch.tensor([d1]), ims[1:]).logits[0]
    torch.testing.assert_close(packed, torch.cat((a, b)), atol=1e-5, rtol=1e-5)


def test_image_tokens_see_each_other_text_stays_causal():
    m = _model()
    ids = torch.tensor([_doc(2, (2, 2))])
    ims = _images((2, 2))
    base = m(ids, ims).logits[0]
    ims2 = [ims[0].clone()]
    ims2[0][:, 8:, 8:] += 1.0  # changes only the last image token
    other = m(ids, ims2).logits[0]
    assert not torch.allclose(base[3], other[3])  # the first image token sees the last one (bidirectional)
    torch.testing.assert_close(base[:3], other[:3])  # text before the image does not
    causal = _model(mixed_mask=False)
    torch.testing.assert_close(causal(ids, ims).logits[0, 3], causal(ids, ims2).logits[0, 3])


def test_zero_k_proj_hw_leaves_text_logits_equal_to_plain_qwen3(tmp_path):
    torch.manual_seed(3)
    qwen = build_causal_lm("qwen3", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6,
                           tie_word_embeddings=False).eval()
    m = _model(num_buffer_layers=0)
    m.load_state_dict(qwen3_to_neo(qwen.state_dict(), m))
    ids = torch.randint(0, 500, (2, 12))
    torch.testing.assert_close(m(ids).logits, qwen(ids).logits, atol=1e-5, rtol=1e-5)
    # q_proj_hw: per head, quarters 1 and 3 of q_proj tiled twice; k_proj_hw zero; the H/W norms 1
    att = m.lm.model.layers[0].self_attn
    wq = qwen.model.layers[0].self_attn.q_proj.weight.view(4, 16, 64)
    want = torch.cat((wq[:, 0:4], wq[:, 8:12], wq[:, 0:4], wq[:, 8:12]), 1).reshape(64, 64)
    assert torch.equal(att.q_proj_hw.weight, want) and not att.k_proj_hw.weight.any()
    assert all(bool((getattr(att, n).weight == 1).all()) for n in ("q_norm_h", "q_norm_w", "k_norm_h", "k_norm_w"))
    # the same through init_from / load_checkpoint of a Qwen3 safetensors file; the pre-Buffer stays fresh
    save_file({k: v.contiguous() for k, v in qwen.state_dict().items()}, tmp_path / "model.safetensors")
    m2 = _model()
    fresh = m2.lm.model.layers[0].mlp.up_proj.weight.clone()
    zoo.load_checkpoint(m2, tmp_path / "model.safetensors")
    assert torch.equal(m2.lm.model.layers[2].self_attn.q_proj.weight, qwen.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(m2.lm.model.layers[0].mlp.up_proj.weight, fresh)


def test_pt_stage_freezes_exactly_the_llm():
    m = _model()
    trainable = set(m.set_stage("pt"))
    for n, _ in m.named_parameters():
        expect = (n.startswith("vision.") or n.startswith(("lm.model.layers.0.", "lm.model.layers.1."))
                  or any(f".{p}." in n for p in ("q_proj_hw", "k_proj_hw", "q_norm_h", "q_norm_w", "k_norm_h",
                                                 "k_norm_w")))
        assert (n in trainable) == expect, n
    assert "lm.model.layers.2.self_attn.q_proj_hw.weight" in trainable
    assert "lm.model.layers.2.self_attn.q_proj.weight" not in trainable and "lm.lm_head.weight" not in trainable
    assert len(m.set_stage("sft")) == len(list(m.parameters()))


def _cached_logits(m, ids, ims, cont, doc=None):
    out = m(ids, ims, doc_ids=doc, use_cache=True)
    rows = [out.logits[:, -1]]
    row_doc = None if doc is None else doc[:, -1:]
    for tok in cont:
        out = m(torch.full((ids.shape[0], 1), tok), doc_ids=row_doc, cache=out.cache, use_cache=True)
        rows.append(out.logits[:, -1])
    return torch.stack(rows, 1)


def test_kv_cache_decoding_equals_full_forward():
    m = _model()
    prompt, cont = _doc(2, (2, 3), answer=0), [30, 31, 32]
    ims = _images((2, 3))
    with torch.no_grad():
        full = m(torch.tensor([prompt + cont]), ims).logits[0, len(prompt) - 1:]
        cached = _cached_logits(m, torch.tensor([prompt]), ims, cont)[0]  # t continues after the prompt
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
        # a left-padded row decodes as the row alone (padding is its own document, -1)
        pad = torch.tensor([[0, 0] + prompt, prompt + [40, 41]])
        doc = torch.tensor([[-1, -1] + [0] * len(prompt), [0] * (len(prompt) + 2)])
        both = _cached_logits(m, pad, ims + ims, cont, doc)
        torch.testing.assert_close(both[0], full, atol=1e-5, rtol=1e-5)
    new = m.generate(torch.tensor([prompt]), ims, max_new_tokens=3, eos_id=7)
    assert new.shape[0] == 1 and 1 <= new.shape[1] <= 3


def _greedy_no_cache(m: NEO, ids: torch.Tensor, ims: list[torch.Tensor], doc: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding by full forwards over prompt + generated tokens (no cache), continuing the last document."""
    new = []
    for _ in range(n):
        nxt = m(ids, ims, doc_ids=doc).logits[:, -1].argmax(-1)
        new.append(nxt)
        ids, doc = torch.cat((ids, nxt[:, None]), 1), torch.cat((doc, doc[:, -1:]), 1)
    return torch.stack(new, 1)


@pytest.mark.parametrize("native_rope", [True, False])
def test_kv_cached_greedy_equals_no_cache_greedy_on_a_packed_prompt(native_rope):
    # a packed prompt whose FIRST document is longer (larger t) than the last one, which decoding continues: t must
    # continue after the last token's t, not after the row's largest t (the bug before)
    m = _model(native_rope=native_rope)
    ids = torch.tensor([_doc(9, (2, 3), answer=4) + _doc(1, (3, 2), answer=0)])
    doc = torch.tensor([[0] * (9 + 8 + 4) + [1] * (1 + 8)])
    ims = _images((2, 3), (3, 2))
    with torch.no_grad():
        cached = m.generate(ids, ims, max_new_tokens=6, doc_ids=doc)
        plain = _greedy_no_cache(m, ids, ims, doc, 6)
        assert torch.equal(cached, plain)
        full = m(torch.cat((ids, plain[:, :-1]), 1), ims, doc_ids=torch.cat((doc, doc[:, -1:].expand(1, 5)), 1))
        steps = _cached_logits(m, ids, ims, plain[0, :-1].tolist(), doc)
        torch.testing.assert_close(steps[0], full.logits[0, ids.shape[1] - 1:], atol=1e-5, rtol=1e-5)


class _AtenLog(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)  # e.g. "mm", "_local_scalar_dense"
        return func(*args, **(kwargs or {}))


def _decode_step_trace(m: NEO, n_text: int, n_steps: int) -> tuple[list[str], list[int], list[dict]]:
    """aten ops, tokens seen by each attention layer, and its position tables, in decode step ``n_steps``."""
    ids = torch.tensor([_doc(n_text, (2, 3), answer=0)])
    seen, tables = [], []

    def hook(mod, args, kwargs):
        seen.append(kwargs["hidden_states"].shape[1])
        tables.append(kwargs["position_embeddings"])

    with torch.no_grad():
        out = m(ids, _images((2, 3)), use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        for _ in range(n_steps - 1):
            out = m(tok, cache=out.cache, use_cache=True)
        hooks = [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in m.lm.model.layers]
        with _AtenLog() as log:
            m(tok, cache=out.cache, use_cache=True)
        for h in hooks:
            h.remove()
    return log.ops, seen, tables


def test_decode_step_does_one_token_of_work_without_host_syncs():
    """Catches a slow decode without timing: each decode step runs every layer on the one new token, builds no H/W
    rotation (h = w = 0), reads nothing back to the host, and runs the same ops whatever the prompt and cache length;
    the aten op count per layer stays within a budget (~140 a layer + ~55 on CPU; it was ~182 a layer)."""
    m = _model()
    ops, seen, tables = _decode_step_trace(m, n_text=2, n_steps=1)
    ops_long, _, _ = _decode_step_trace(m, n_text=40, n_steps=12)
    n_layers = len(m.lm.model.layers)
    assert seen == [1] * n_layers
    assert all("hw" not in t for t in tables) and all(t["t"][0].shape[1] == 1 for t in tables)
    assert not {"_local_scalar_dense", "is_nonzero", "item"} & set(ops)  # no device -> host sync
    assert ops == ops_long  # no work that grows with the prompt or the number of generated tokens
    assert len(ops) <= 150 * n_layers + 80, f"{len(ops)} aten ops for {n_layers} layers per decoded token"


def test_upstream_checkpoint_converts(tmp_path):
    m = _model()
    up = {}
    for k, v in m.state_dict().items():
        k = k.replace("vision.patch.", "vision_model.embeddings.patch_embedding.")
        k = k.replace("vision.merge.", "vision_model.embeddings.dense_embedding.").replace("lm.", "language_model.", 1)
        up[k] = v.clone() + 0.5
    up["language_model.model.layers.0.self_attn.rotary_emb_hw.inv_freq"] = torch.ones(4)
    up["vision_model.embeddings.cos_cached_x"] = torch.ones(4, 4)
    save_file(up, tmp_path / "neo_upstream.safetensors")
    m2 = zoo.create_model("neo_tiny", checkpoint_path=str(tmp_path / "neo_upstream.safetensors"))
    for k, v in m.state_dict().items():
        torch.testing.assert_close(m2.state_dict()[k], v + 0.5)
    with pytest.raises(KeyError, match="unexpected key"):
        checkpoint_filter_fn({"language_model.x": torch.ones(1), "bogus": torch.ones(1)}, m)


def test_paper_configs_build_on_meta():
    n2, n9 = zoo.count_params("neo_2b"), zoo.count_params("neo_9b")
    emb2, emb9 = 151936 * 2048, 2 * 151936 * 4096  # 1.7B ties its head; 8B does not
    assert 2.2e9 < n2 - emb2 < 2.35e9 and 8.9e9 < n9 - emb9 < 9.1e9  # the names count non-embedding parameters
    with torch.device("meta"):
        m = zoo.create_model("neo_2b")
    assert len(m.lm.model.layers) == 40 and m.num_buffer_layers == 12
    att = m.lm.model.layers[0].self_attn
    assert att.q_proj_hw.out_features == 16 * 128 and att.k_proj_hw.out_features == 8 * 128
    assert math.isclose(att.scaling, 128 ** -0.5)
