"""Uni-Encoder: masks, per-candidate exactness (context-masked / causal), permutation invariance, metrics, fit."""
import pytest
import pytorch_lightning as pl
import torch

from datamodules.llm_response_selection import (
    ResponseSelectionDataModule,
    read_response_file,
    write_synthetic_response_selection,
)
from tasks.llm.uni_encoder import UniEncoder, UniEncoderTask, mean_reciprocal_rank, recall_at_k

BERT = dict(family="bert", initializer_range=0.3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64)
LLAMA = dict(family="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx = [torch.randint(4, 40, (n,), generator=g) for n in (6, 3)]
    cands = [[torch.randint(4, 40, (n,), generator=g) for n in (2, 4, 3)], [torch.randint(4, 40, (5,), generator=g)]]
    return ctx, cands


@pytest.mark.parametrize("backbone,attn_map", [(BERT, "arrow_context_masked"), (LLAMA, "causal"),
                                               (LLAMA, "arrow_context_masked")])
def test_packed_scores_equal_per_candidate_scoring(backbone, attn_map):
    torch.manual_seed(0)
    model = UniEncoder(backbone, vocab_size=40, attn_map=attn_map).eval()
    ctx, cands = _data()
    scores, valid = model(ctx, cands)
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    for i, group in enumerate(cands):
        for j, c in enumerate(group):
            alone, _ = model([ctx[i]], [[c]])
            torch.testing.assert_close(scores[i, j], alone[0, 0], atol=1e-5, rtol=1e-5)


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
    (tmp_path / "bad.txt").write_text("1\tctx\tr1\n1\tctx\tr2\n")
    with pytest.raises(ValueError, match="2 positive"):
        read_response_file(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="train.txt"):
        ResponseSelectionDataModule(str(tmp_path / "none")).prepare_data()
    dm = ResponseSelectionDataModule(str(root), batch_size=8)
    task = UniEncoderTask(backbone=BERT, lr=2e-3)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(task, dm)
    res = trainer.test(task, dm, verbose=False)[0]
    assert {"test/R10@1", "test/R10@2", "test/R10@5", "test/MRR"} <= set(res)
