"""The LLM-side platform: the one causal-LM builder (family, config, local folder; offline, clear errors), the
Uni-Encoder ranker as a registered zoo model (card, ``save_pretrained`` -> ``local-dir:``), the ``LLMTask`` base
(clean ``net.*`` checkpoints, ``load_from_checkpoint`` without a config, ``init_from``, the compile switch) and the
layering (``zoo.llm`` never imports Lightning or ``tasks``; ``datamodules`` never import ``tasks``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from tasks.llm.grpo import GRPOTask
from tasks.llm.uni_encoder import UniEncoderTask
from zoo.llm import build_causal_lm, causal_lm_config, tiny_causal_lm

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
BERT = dict(family="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _ids(vocab: int = 40) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 7), generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------- build_causal_lm
def test_build_causal_lm_from_family_config_and_dict_are_one_model():
    torch.manual_seed(0)
    a = build_causal_lm("qwen2", vocab_size=40, **TINY)
    torch.manual_seed(0)
    b = build_causal_lm(causal_lm_config("qwen2", vocab_size=40, **TINY))
    assert type(a).__name__ == "Qwen2ForCausalLM" and a.config.num_hidden_layers == 2
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    c = build_causal_lm({"model_type": "llama", "vocab_size": 40, **TINY})
    assert type(c).__name__ == "LlamaForCausalLM" and c.config.hidden_size == 32
    assert c.config._attn_implementation == "sdpa"
    assert build_causal_lm("gemma2", vocab_size=40).config._attn_implementation == "eager"  # soft-capped logits
    with pytest.raises(ValueError, match="unknown causal-LM family 'lama'"):
        build_causal_lm("lama")
    with pytest.raises(ValueError, match="model_type"):
        build_causal_lm({"hidden_size": 32})


def test_build_causal_lm_from_local_folder_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_causal_lm("llama", vocab_size=40, **TINY)
    model.save_pretrained(tmp_path / "lm")
    loaded = build_causal_lm(str(tmp_path / "lm")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_ids()).logits, model(_ids()).logits)
    # what is missing is named, and nothing is downloaded
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty is not a Hugging Face model folder: config\.json and weights"):
        build_causal_lm(str(tmp_path / "empty"))
    (tmp_path / "lm" / "model.safetensors").rename(tmp_path / "lm" / "moved.safetensors")
    with pytest.raises(FileNotFoundError, match=r"weights \(model\.safetensors"):
        build_causal_lm(str(tmp_path / "lm"))
    with pytest.raises(FileNotFoundError, match="no such local folder.*huggingface-cli download nobody/none"):
        build_causal_lm("nobody/none")


def test_build_causal_lm_folder_refuses_another_vocabulary(tmp_path):
    tiny_causal_lm("llama", vocab_size=40, **TINY).save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="vocab_size=50 .* has 40"):
        build_causal_lm(str(tmp_path / "lm"), vocab_size=50)


# ------------------------------------------------------------------------------------- Uni-Encoder in the zoo
def test_uni_encoder_registered_with_card_and_local_dir_roundtrip(tmp_path, capsys):
    from tasks.cli import main

    assert zoo.list_models("uni_encoder*") == ["uni_encoder_bert_base", "uni_encoder_tiny"]
    card = zoo.model_card("uni_encoder_bert_base")
    assert "arXiv 2106.01263" in card and "dll-wu/Uni-Encoder" in card and "masked-LM" in card
    assert 108e6 < zoo.count_params("uni_encoder_bert_base") < 111e6  # BERT-base without the pooler + the scorer
    main(["list-models", "uni*"])
    main(["info", "uni_encoder_tiny"])
    out = capsys.readouterr().out
    assert "uni_encoder_tiny" in out.split() and "deviations from the paper:" in out

    model = zoo.create_model("uni_encoder_tiny", vocab_size=40, backbone=dict(hidden_size=32), attn_map="arrow")
    assert model.backbone.config.hidden_size == 32 and model.backbone.config.num_hidden_layers == 2  # partial spec
    zoo.save_pretrained(model, tmp_path / "ranker")
    back = zoo.create_model(f"local-dir:{tmp_path / 'ranker'}")
    ctx = [torch.tensor([1, 5, 6, 2]), torch.tensor([1, 7, 2])]
    cands = [[torch.tensor([1, 8, 2]), torch.tensor([1, 9, 10, 2])], [torch.tensor([1, 11, 2])]]
    model.eval(), back.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ctx, cands)[0], model(ctx, cands)[0])


# ----------------------------------------------------------------------------------------------- LLMTask
def test_uni_encoder_task_checkpoint_is_clean_and_reloads_without_config(tmp_path):
    import pytorch_lightning as pl

    from datamodules.llm_response_selection import ResponseSelectionDataModule, write_synthetic_response_selection

    root = write_synthetic_response_selection(tmp_path / "rs", num_train=16, num_val=4, num_test=4)
    compiled = UniEncoderTask(model_kwargs={"backbone": BERT, "vocab_size": 40}, compile=True)  # ZooTask's switch
    assert compiled.network is not compiled.net and all(k.startswith("net.") for k in compiled.state_dict())
    task = UniEncoderTask(model_kwargs={"backbone": BERT}, lr=2e-3)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(task, ResponseSelectionDataModule(str(root), batch_size=8))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert all(k.startswith("net.") and "_orig_mod" not in k for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["model"] == "uni_encoder_tiny"
    assert ckpt["hyper_parameters"]["model_kwargs"]["vocab_size"] == task.net.backbone.config.vocab_size
    loaded = UniEncoderTask.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    for (n, a), (_, b) in zip(task.net.state_dict().items(), loaded.net.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)
    assert loaded.net.token_types is True
    # the ranker's weights in a task checkpoint load into the zoo model directly (``net.`` stripped)
    ranker = zoo.create_model("uni_encoder_tiny", **ckpt["hyper_parameters"]["model_kwargs"])
    zoo.load_checkpoint(ranker, tmp_path / "last.ckpt")


def test_grpo_task_builds_its_policy_through_the_one_builder(tmp_path):
    policy = tiny_causal_lm("llama", vocab_size=40, **TINY)
    policy.save_pretrained(tmp_path / "lm")
    task = GRPOTask(model=str(tmp_path / "lm"), model_kwargs={"vocab_size": 40})
    for (n, a), (_, b) in zip(policy.state_dict().items(), task.policy.state_dict().items()):
        assert torch.equal(a, b), n
    assert task.policy.config._attn_implementation == "sharezoo_prefix"  # packed forwards use the shared prefix
    assert all(k.startswith("net.") for k in task.state_dict())
    # init_from: an earlier stage's weights into a policy built from config
    zoo_ckpt = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": task.state_dict()}, zoo_ckpt)
    again = GRPOTask(model="llama", model_kwargs=dict(TINY, vocab_size=40), init_from=str(zoo_ckpt))
    for (n, a), (_, b) in zip(policy.state_dict().items(), again.policy.state_dict().items()):
        assert torch.equal(a, b), n
    # compile: regional compiles the decoder layers in place (names unchanged); whole-model compile is refused
    regional = GRPOTask(model="llama", model_kwargs=dict(TINY, vocab_size=40), compile="regional")
    assert len(regional._regions) == 2 and set(regional.state_dict()) == set(again.state_dict())
    with pytest.raises(ValueError, match="compile: regional"):
        GRPOTask(model="llama", model_kwargs=dict(TINY, vocab_size=40), compile=True)


# ----------------------------------------------------------------------------------------------- layering
def test_llm_layering():
    code = (
        "import sys, zoo, zoo.llm, zoo.uni_encoder, datamodules.llm_prompts, datamodules.llm_response_selection\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'tasks']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    code = ("import sys, zoo.llm, zoo.uni_encoder\n"
            "assert not any(m.split('.')[0] in ('pytorch_lightning', 'lightning', 'tasks', 'datamodules') "
            "for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
