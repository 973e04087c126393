"""Uni-Encoder: masks, per-candidate exactness (context-masked / causal), permutation invariance, metrics, fit."""
import pytest
import pytorch_lightning as pl
import torch

from datamodules.llm_response_selection import (
    ResponseSelectionDataModule,
    read_response_file,
    write_synthetic_response_selection,
)
from tasks.llm.uni_encoder import (
    UniEncoderTask,
    mean_average_precision,
    mean_reciprocal_rank,
    multi_positive_cross_entropy,
    precision_at_1,
    recall_at_k,
)
from zoo.uni_encoder import UniEncoder

BERT = dict(family="bert", initializer_range=0.3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64)
LLAMA = dict(family="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx = [torch.randint(4, 40, (n,), generator=g) for n in (6, 3)]
    cands = [[torch.randint(4, 40, (n,), generator=g) for n in (2, 4, 3)], [torch.randint(4, 40, (5,), generator=g)]]
    return ctx, cands


def _packed_equals_alone(model, ctx, cands, w):
    """Scores and every parameter gradient of one packed forward of ``(ctx, cands)`` (weighted by ``w``) equal
    scoring each candidate alone; returns the packed gradients."""
    scores, valid = model(ctx, cands)
    (scores.masked_fill(~valid, 0) * w).sum().backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total = 0
    for i, group in enumerate(cands):
        for j, c in enumerate(group):
            alone, _ = model([ctx[i]], [[c]])
            torch.testing.assert_close(scores[i, j], alone[0, 0], atol=1e-5, rtol=1e-5)
            total = total + alone[0, 0] * w[i, j]
    total.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(packed[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    return packed


@pytest.mark.parametrize("backbone,attn_map", [(BERT, "arrow_context_masked"), (LLAMA, "causal"),
                                               (LLAMA, "arrow_context_masked")])
def test_packed_scores_equal_per_candidate_scoring(backbone, attn_map):
    """Scores and every parameter gradient of one packed forward equal scoring each candidate alone."""
    torch.manual_seed(0)
    model = UniEncoder(backbone, vocab_size=40, attn_map=attn_map).eval()
    ctx, cands = _data()
    w = torch.randn(2, 3)
    assert model(ctx, cands)[1].tolist() == [[True, True, True], [True, False, False]]
    packed = _packed_equals_alone(model, ctx, cands, w)
    assert sum(float(g.abs().sum()) for g in packed.values()) > 0


def test_released_arrow_is_not_per_candidate_but_permutation_invariant():
    torch.manual_seed(0)
    model = UniEncoder(BERT, vocab_size=40, attn_map="arrow").eval()
    ctx, cands = _data()
    scores, _ = model(ctx[:1], cands[:1])
    alone, _ = model(ctx[:1], [[cands[0][1]]])
    assert (scores[0, 1] - alone[0, 0]).abs() > 1e-4  # the context sees all candidates
    perm = [2, 0, 1]
    shuffled, _ = model(ctx[:1], [[cands[0][k] for k in perm]])
    torch.testing.assert_close(shuffled[0], scores[0, perm], atol=1e-5, rtol=1e-5)


def test_recall_and_mrr_against_loops():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 10, generator=g)
    labels = torch.randint(0, 10, (50,), generator=g)
    for k in (1, 2, 5):
        ref = sum(int(labels[i]) in scores[i].argsort(descending=True)[:k].tolist() for i in range(50)) / 50
        assert abs(recall_at_k(scores, labels, k).item() - ref) < 1e-6
    ref_mrr = sum(1.0 / (scores[i].argsort(descending=True).tolist().index(int(labels[i])) + 1) for i in range(50)) / 50
    assert abs(mean_reciprocal_rank(scores, labels).item() - ref_mrr) < 1e-6


def test_reader_and_fit_test(tmp_path):
    root = write_synthetic_response_selection(tmp_path / "rs", num_train=48, num_val=8, num_test=8)
    ex = read_response_file(root / "test.txt")
    assert len(ex) == 8 and all(len(e["candidates"]) == 10 for e in ex)
    (tmp_path / "none.txt").write_text("0\tctx\tr1\n0\tctx\tr2\n")
    with pytest.raises(ValueError, match="no examples"):
        read_response_file(tmp_path / "none.txt")
    with pytest.raises(FileNotFoundError, match="train.txt"):
        ResponseSelectionDataModule(str(tmp_path / "none")).prepare_data()
    dm = ResponseSelectionDataModule(str(root), batch_size=8)
    task = UniEncoderTask(model_kwargs=dict(backbone=BERT), lr=2e-3)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(task, dm)
    res = trainer.test(task, dm, verbose=False)[0]
    assert {"test/R10@1", "test/R10@2", "test/R10@5", "test/MRR", "test/MAP", "test/P@1"} <= set(res)


def test_douban_multi_positive_reader_and_metrics_against_sklearn(tmp_path):
    """Douban test contexts: several positives kept multi-hot, contexts without one skipped and counted; MAP equals
    scikit-learn's average_precision_score per context, P@1 / MRR / R@k the Douban evaluation's definitions."""
    from sklearn.metrics import average_precision_score

    from datamodules.llm_response_selection import ResponseSelectionDataset, WordVocab, collate_response_selection

    lines = ["1\ta b\tx", "0\ta b\ty", "1\ta b\tz",  # two positives
             "0\tc\tx", "0\tc\ty",  # no positive: skipped
             "0\td\tx", "1\td\ty", "0\td\tz", "0\td\tw"]
    (tmp_path / "douban.txt").write_text("\n".join(lines) + "\n")
    counts = {}
    ex = read_response_file(tmp_path / "douban.txt", counts)
    assert counts == {"skipped_no_positive": 1}
    assert [e["labels"] for e in ex] == [[1, 0, 1], [0, 1, 0, 0]] and [e["label"] for e in ex] == [0, 1]
    ds = ResponseSelectionDataset(ex, WordVocab.from_examples(ex), 16, 4)
    batch = collate_response_selection([ds[0], ds[1]])
    assert batch["labels"].tolist() == [[True, False, True, False], [False, True, False, False]]

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 10, generator=g)
    labels = torch.rand(64, 10, generator=g) < 0.25
    labels[torch.arange(64), torch.randint(0, 10, (64,), generator=g)] = True  # at least one positive each
    scores[:8, 7:] = float("-inf")  # fewer candidates (padding, never positive)
    labels[:8, 7:] = False
    ap = [average_precision_score(labels[i, :7 if i < 8 else 10].numpy(), scores[i, :7 if i < 8 else 10].numpy())
          for i in range(64)]
    assert abs(mean_average_precision(scores, labels).item() - sum(ap) / 64) < 1e-6
    order = scores.argsort(1, descending=True)
    ranked = labels.gather(1, order).float()
    assert abs(precision_at_1(scores, labels).item() - ranked[:, 0].mean().item()) < 1e-6
    mrr = sum(1.0 / (ranked[i].tolist().index(1.0) + 1) for i in range(64)) / 64
    assert abs(mean_reciprocal_rank(scores, labels).item() - mrr) < 1e-6
    for k in (1, 2, 5):
        ref = (ranked[:, :k].sum(1) / ranked.sum(1)).mean().item()
        assert abs(recall_at_k(scores, labels, k).item() - ref) < 1e-6
    # one positive: the multi-positive loss is the usual cross-entropy, the metrics take an index tensor too
    idx = torch.randint(0, 10, (64,), generator=g)
    one_hot = torch.nn.functional.one_hot(idx, 10).bool()
    sc = torch.randn(64, 10, generator=g)
    torch.testing.assert_close(multi_positive_cross_entropy(sc, one_hot), torch.nn.functional.cross_entropy(sc, idx))
    assert mean_average_precision(sc, idx).item() == pytest.approx(mean_reciprocal_rank(sc, one_hot).item())


def test_noam_scheduler_option(tmp_path):
    """The released schedule: linear warmup to the peak lr at ``warmup`` optimizer steps, then ``sqrt(W / step)``."""
    from tasks.llm.uni_encoder import noam_factor

    task = UniEncoderTask(model_kwargs=dict(backbone=BERT, vocab_size=40), lr=2e-4, scheduler="noam", warmup_steps=4,
                          betas=(0.9, 0.98))
    cfg = task.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert cfg["lr_scheduler"]["interval"] == "step" and opt.param_groups[0]["betas"] == (0.9, 0.98)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expect = [2e-4 * f for f in (0.25, 0.5, 0.75, 1.0)] + [2e-4 * (4 / s) ** 0.5 for s in range(5, 17)]
    assert lrs == pytest.approx(expect, rel=1e-6)
    assert noam_factor(16, 4) == pytest.approx(0.5)
    plain = UniEncoderTask(model_kwargs=dict(backbone=BERT, vocab_size=40)).configure_optimizers()
    assert isinstance(plain, torch.optim.AdamW)
    with pytest.raises(ValueError, match="scheduler"):
        UniEncoderTask(model_kwargs=dict(backbone=BERT, vocab_size=40), scheduler="cosine")
    # under a trainer the warmup is capped at one epoch + 1 optimizer steps (released rule)
    root = write_synthetic_response_selection(tmp_path / "rs", num_train=24, num_val=4, num_test=4)
    task = UniEncoderTask(model_kwargs=dict(backbone=BERT), lr=2e-3, scheduler="noam", warmup_steps=3500)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(task, ResponseSelectionDataModule(str(root), batch_size=8))
    assert task.noam_warmup() == 3 + 1 and trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(2e-3)


def test_official_candidate_format_layout_and_token_types(tmp_path):
    """``official``: ``[CLS] c [SEP] [CLS] r_1 [SEP] [CLS] r_2 [SEP]``, token types 0 on the context and 1 on every
    candidate token (padding 0), every candidate block at positions from the context length; ``plain``: bare words."""
    from datamodules.llm_response_selection import ResponseSelectionDataset, WordVocab, collate_response_selection

    ex = [{"context": ["a b", "c"], "candidates": ["x y z", "w"], "labels": [1, 0], "label": 0},
          {"context": ["d"], "candidates": ["y", "x w"], "labels": [0, 1], "label": 1}]
    vocab = WordVocab(["a", "b", "c", "d", "x", "y", "z", "w"])  # ids 4..11
    a, b, c, d, x, y, z, w = range(4, 12)
    ds = ResponseSelectionDataset(ex, vocab, max_context_len=16, max_response_len=4)
    item = ds[0]
    assert item["context_ids"].tolist() == [1, a, b, 2, c, 2]
    assert [r.tolist() for r in item["candidate_ids"]] == [[1, x, y, 2], [1, w, 2]]  # "x y z": 2 words + 2 specials
    plain = ResponseSelectionDataset(ex, vocab, max_context_len=16, max_response_len=4, candidate_format="plain")
    assert [r.tolist() for r in plain[0]["candidate_ids"]] == [[x, y, z], [w]]
    with pytest.raises(ValueError, match="candidate_format"):
        ResponseSelectionDataset(ex, vocab, 16, 4, candidate_format="wrapped")

    batch = collate_response_selection([ds[0], ds[1]])
    model = UniEncoder(BERT, vocab_size=len(vocab), token_types=True)
    layout, ids, types = model.pack(batch["context_ids"], batch["candidate_ids"])
    assert ids.tolist() == [[1, a, b, 2, c, 2, 1, x, y, 2, 1, w, 2],
                            [1, d, 2, 1, y, 2, 1, x, w, 2, 0, 0, 0]]
    assert types.tolist() == [[0] * 6 + [1] * 7,
                              [0] * 3 + [1] * 7 + [0] * 3]
    assert layout.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 7, 8]  # candidates restart at 6
    assert layout.position_ids[1, :10].tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6]
    # each candidate block (pooled by the mean) runs from its own [CLS] through its [SEP]
    flat = ids.reshape(-1)
    blocks = [flat[idx[v]].tolist() for idx, v in zip(layout.suffix_index, layout.suffix_valid)]
    assert blocks == [[1, x, y, 2], [1, w, 2], [1, y, 2], [1, x, w, 2]]
    # arrow masks over the wrapped blocks: a candidate's [CLS] sees the context and its own block only
    m = layout.dense_mask("arrow")[0, 0]
    assert m[10].tolist() == [True] * 6 + [False] * 4 + [True] * 3  # row of candidate 2's [CLS]
    assert m[6].tolist() == [True] * 10 + [False] * 3  # candidate 1's [CLS]
    assert m[0].tolist() == [True] * 13  # released arrow: the context sees every candidate
    # token types reach the backbone: the scores change with them; decoders get none
    model.eval()
    with torch.no_grad():
        s_types, _ = model(batch["context_ids"], batch["candidate_ids"])
        model.token_types = False
        assert model.pack(batch["context_ids"], batch["candidate_ids"])[2] is None
        s_none, _ = model(batch["context_ids"], batch["candidate_ids"])
    assert (s_types - s_none).abs().max() > 1e-4
    decoder = UniEncoder(LLAMA, vocab_size=12, token_types=True)
    assert decoder.pack(batch["context_ids"], batch["candidate_ids"])[2] is None


@pytest.mark.parametrize("attn_map", ["arrow_context_masked", "arrow"])
def test_official_layout_packed_scores_equal_per_candidate_scoring(attn_map):
    """Wrapped candidates with token types: the context-masked arrow equals scoring each ``[CLS] r [SEP]`` alone
    (scores and every parameter gradient, token-type embeddings included). The released arrow (context rows see every
    candidate) is not per-candidate exact with several candidates; with one candidate per row this checks that the
    token types stay right under row padding."""
    torch.manual_seed(0)
    model = UniEncoder(BERT, vocab_size=40, attn_map=attn_map, token_types=True).eval()
    ctx, cands = _data(1)
    ctx = [torch.cat([torch.tensor([1]), c, torch.tensor([2])]) for c in ctx]
    cands = [[torch.cat([torch.tensor([1]), r, torch.tensor([2])]) for r in g] for g in cands]
    if attn_map == "arrow":  # context rows see all candidates: per-candidate equality needs one candidate per row
        cands = [[g[0]] for g in cands]
    w = torch.randn(2, 3)[:, : max(len(g) for g in cands)]
    packed = _packed_equals_alone(model, ctx, cands, w)
    assert packed["backbone.embeddings.token_type_embeddings.weight"][1].abs().sum() > 0  # type 1 is used


def test_task_candidate_format_follows_datamodule_and_configs(tmp_path):
    """The task takes the datamodule's format (token types on for ``official``), refuses a disagreeing one; the
    shipped configs use the official layout and their headers no longer list it as a deviation."""
    from pathlib import Path

    import yaml

    root = write_synthetic_response_selection(tmp_path / "rs", num_train=16, num_val=4, num_test=4)
    for fmt, own, expect in (("official", None, True), ("plain", None, False), ("plain", "plain", False)):
        task = UniEncoderTask(model_kwargs=dict(backbone=BERT), candidate_format=own)
        trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             default_root_dir=tmp_path)
        trainer.fit(task, ResponseSelectionDataModule(str(root), batch_size=8, candidate_format=fmt))
        assert task.net.token_types is expect and task.hparams.candidate_format == fmt
    with pytest.raises(ValueError, match="candidate_format"):
        trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(UniEncoderTask(model_kwargs=dict(backbone=BERT), candidate_format="official"),
                    ResponseSelectionDataModule(str(root), batch_size=8, candidate_format="plain"))
    with pytest.raises(ValueError, match="candidate_format"):
        UniEncoderTask(model_kwargs=dict(backbone=BERT), candidate_format="wrapped")
    cfg_dir = Path(__file__).resolve().parents[1] / "configs" / "uni_encoder"
    for path in sorted(cfg_dir.glob("*.yaml")):
        text = path.read_text()
        header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
        assert "not wrapped" not in header and "no token_type_ids" not in header, path.name
        assert yaml.safe_load(text)["data"]["init_args"].get("candidate_format", "official") == "official", path.name


@pytest.mark.parametrize("backbone", ["bert", "llama"])
def test_compile_regional_dynamic_switch_runs_a_step(monkeypatch, backbone):
    """``compile: regional`` with ``compile_dynamic``: the blocks are armed with dynamo (``eager`` backend here, the
    tracing without inductor's code generation), and ragged batches of new lengths give the uncompiled scores with no
    graph break."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    orig = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: orig(self, *a, **{"backend": "eager", **k}))
    torch._dynamo.reset()
    counters.clear()
    spec = dict(BERT if backbone == "bert" else LLAMA, vocab_size=40)
    kw = dict(model_kwargs=dict(backbone={k: v for k, v in spec.items() if k != "vocab_size"}, vocab_size=40))
    task = UniEncoderTask(compile="regional", compile_dynamic=True, **kw)
    plain = UniEncoderTask(**kw)
    plain.net.load_state_dict(task.net.state_dict())
    for seed in range(3):
        ctx, cands = _data(seed)
        scores, valid = task(ctx, cands)
        torch.testing.assert_close(scores[valid], plain(ctx, cands)[0][valid], atol=1e-5, rtol=1e-5)
        scores[valid].sum().backward()
    assert counters["stats"]["unique_graphs"] > 0 and not counters["graph_break"]
    torch._dynamo.reset()
