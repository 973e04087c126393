"""The zoo platform: registry, factory, weight manifest resolution (offline, cache, hash), save/load (tied
weights too), cards."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import zoo
from zoo._pretrained import PretrainedWeightsError, cache_path, load_state_dict_file, sha256_file
from zoo._registry import _model_entrypoints, _pretrained_cfgs


class Toy(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(width, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture()
def toy_model(tmp_path):
    """Registers ``ztest_toy`` (+ a weight ``ztest_toy.v1`` served from a file:// url) for one test."""

    @zoo.register_model
    def ztest_toy(pretrained=False, **kwargs):
        """A toy two-layer model for platform tests."""
        return zoo.build_model(Toy, "ztest_toy", pretrained, dict(width=4), **kwargs)

    ref = zoo.create_model("ztest_toy", num_classes=3)
    src = tmp_path / "server" / "model.safetensors"
    src.parent.mkdir()
    save_file(ref.state_dict(), str(src))
    cfg = zoo.PretrainedCfg(sha256=sha256_file(src), url=src.as_uri(), classifier=("head.",),
                            model_kwargs={"num_classes": 3}, license="mit", preprocessing={"input_size": 4})
    zoo.register_pretrained_cfgs({"ztest_toy.v1": cfg})
    yield ref, cfg, src
    _model_entrypoints.pop("ztest_toy", None)
    _pretrained_cfgs.pop("ztest_toy", None)


def test_unknown_name_lists_close_matches(toy_model):
    with pytest.raises(ValueError, match="Did you mean: ztest_toy"):
        zoo.create_model("ztest_tyo")


def test_list_models_and_pretrained(toy_model):
    assert "ztest_toy" in zoo.list_models("ztest*")
    assert zoo.list_pretrained("ztest*") == ["ztest_toy.v1"]
    assert zoo.list_models("nomatch*") == []
    assert zoo.get_pretrained_cfg("ztest_toy").license == "mit"
    with pytest.raises(ValueError, match="no weight tagged 'v9'"):
        zoo.get_pretrained_cfg("ztest_toy.v9")


def test_manifest_requires_sha256_and_safetensors():
    with pytest.raises(ValueError, match="sha256"):
        zoo.PretrainedCfg(sha256="abc", url="file:///x.safetensors").validate("a.b")
    with pytest.raises(ValueError, match="safetensors"):
        zoo.PretrainedCfg(sha256="0" * 64, file="x.pth", url="file:///x.pth").validate("a.b")


def test_offline_miss_names_file_and_prefetch_command(toy_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError) as e:
        zoo.create_model("ztest_toy.v1")
    msg = str(e.value)
    assert "sharezoo download ztest_toy.v1" in msg and "model.safetensors" in msg


def test_offline_flag_read_at_call_time(toy_model, monkeypatch):
    ref, cfg, _ = toy_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("SHAREZOO_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError, match="downloads are off"):
        zoo.create_model("ztest_toy", pretrained=True)
    monkeypatch.setenv("SHAREZOO_OFFLINE", "0")
    m = zoo.create_model("ztest_toy", pretrained=True)  # "downloads" from the file:// url into the cache
    assert torch.equal(m.head.weight, ref.head.weight)
    assert cache_path("ztest_toy.v1", cfg).is_file()


def test_cache_hit_loads_exactly_offline(toy_model, monkeypatch, tmp_path):
    ref, cfg, src = toy_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = cache_path("ztest_toy.v1", cfg, tmp_path / "c")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(src.read_bytes())
    m = zoo.create_model("ztest_toy.v1", cache_dir=tmp_path / "c")
    for a, b in zip(m.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_hash_mismatch_refuses_to_load(toy_model, monkeypatch):
    _, cfg, src = toy_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = cache_path("ztest_toy.v1", cfg)
    dest.parent.mkdir(parents=True)
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF
    dest.write_bytes(bytes(data))
    with pytest.raises(PretrainedWeightsError, match="sha256 mismatch.*Refusing to load"):
        zoo.create_model("ztest_toy", pretrained="v1")


def test_new_num_classes_keeps_backbone_weights(toy_model, monkeypatch, caplog):
    ref, _, _ = toy_model
    monkeypatch.setenv("SHAREZOO_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the "download" is a file:// url: no network
    with caplog.at_level(logging.WARNING):
        m = zoo.create_model("ztest_toy.v1", num_classes=7)
    assert m.head.out_features == 7
    assert torch.equal(m.body.weight, ref.body.weight)
    assert "num_classes differs" in caplog.text


def test_local_file_and_folder_and_save_pretrained_roundtrip(toy_model, tmp_path):
    ref, _, src = toy_model
    m = zoo.create_model("ztest_toy", pretrained=str(src))
    assert torch.equal(m.body.bias, ref.body.bias)
    folder = zoo.save_pretrained(zoo.create_model("ztest_toy", num_classes=5), tmp_path / "exp")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "ztest_toy" and cfg["model_kwargs"] == {"num_classes": 5}
    back = zoo.create_model(f"local-dir:{folder}")
    x = torch.randn(2, 4)
    m5 = zoo.create_model("ztest_toy", pretrained=str(folder), num_classes=5)  # a folder as pretrained=
    assert torch.equal(back(x), m5(x))


def test_local_dir_errors_name_the_missing_file(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="config.json is missing"):
        zoo.create_model(f"local-dir:{tmp_path}")


def test_hf_hub_prefix_from_local_hub_cache(toy_model, tmp_path):
    """``hf-hub:org/repo`` resolves offline from a Hugging Face cache laid out as the hub client writes it."""
    ref, _, _ = toy_model
    snap = tmp_path / "hub" / "models--org--toy" / "snapshots" / ("a" * 40)
    zoo.save_pretrained(ref, snap)
    (tmp_path / "hub" / "models--org--toy" / "refs").mkdir(parents=True)
    (tmp_path / "hub" / "models--org--toy" / "refs" / "main").write_text("a" * 40)
    m = zoo.create_model("hf-hub:org/toy", cache_dir=tmp_path / "hub")
    assert torch.equal(m.head.weight, ref.head.weight)
    with pytest.raises(PretrainedWeightsError, match="hf-hub:org/missing"):
        zoo.create_model("hf-hub:org/missing", cache_dir=tmp_path / "hub")


def test_upstream_torch_checkpoint_loads_weights_only(toy_model, tmp_path):
    ref, _, _ = toy_model
    p = tmp_path / "upstream.pth"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, p)
    m = zoo.create_model("ztest_toy", checkpoint_path=p)
    assert torch.equal(m.head.weight, ref.head.weight)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="bad.pth"):
        zoo.create_model("ztest_toy", checkpoint_path=bad)


class TiedToy(nn.Module):
    """An LM-shaped toy whose output head is its input embedding (``tie_word_embeddings``)."""

    def __init__(self, vocab: int = 11, width: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.body = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.body(self.embed(ids)))


@pytest.fixture()
def tied_toy():
    """Registers ``ztest_tied`` (tied embedding / head) for one test."""

    @zoo.register_model
    def ztest_tied(pretrained=False, **kwargs):
        """A toy LM with tied input/output embeddings."""
        return zoo.build_model(TiedToy, "ztest_tied", pretrained, {}, **kwargs)

    yield zoo.create_model("ztest_tied")
    _model_entrypoints.pop("ztest_tied", None)
    _pretrained_cfgs.pop("ztest_tied", None)


def _assert_tied_copy(m, ref) -> None:
    assert m.head.weight is m.embed.weight  # still one Parameter: training it moves both
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in ref.state_dict().items())


def test_save_pretrained_of_tied_weights_loads_back_tied(tied_toy, tmp_path):
    """safetensors stores the tied tensor once; local-dir:, pretrained=<folder> and load_state_dict_file give both
    keys back, the recorded sha256 is still checked and the weights stay tied."""
    folder = zoo.save_pretrained(tied_toy, tmp_path / "exp")
    back = zoo.create_model(f"local-dir:{folder}")
    _assert_tied_copy(back, tied_toy)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(back(ids), tied_toy(ids))
    _assert_tied_copy(zoo.create_model("ztest_tied", pretrained=str(folder)), tied_toy)
    sd = load_state_dict_file(folder / "model.safetensors")
    assert sorted(sd) == sorted(tied_toy.state_dict()) and torch.equal(sd["head.weight"], sd["embed.weight"])
    assert json.loads((folder / "config.json").read_text())["sha256"] == sha256_file(folder / "model.safetensors")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(PretrainedWeightsError, match="sha256 mismatch"):
        zoo.create_model(f"local-dir:{folder}")


def test_tied_weights_from_a_file_with_one_twin(tied_toy, tmp_path):
    """A file holding one key of a tied pair (a Hugging Face / upstream layout) loads through every path (manifest,
    checkpoint_path); the strict key check still names a key missing for real and an unknown one."""
    one = {k: v for k, v in tied_toy.state_dict().items() if k != "embed.weight"}
    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in one.items()}, str(src))
    zoo.register_pretrained_cfgs({"ztest_tied.v1": zoo.PretrainedCfg(sha256=sha256_file(src), url=src.as_uri())})
    dest = cache_path("ztest_tied.v1", zoo.get_pretrained_cfg("ztest_tied.v1"), tmp_path / "c")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(src.read_bytes())
    _assert_tied_copy(zoo.create_model("ztest_tied.v1", cache_dir=tmp_path / "c"), tied_toy)
    torch.save({"state_dict": {k: v for k, v in one.items()}}, tmp_path / "up.pth")
    _assert_tied_copy(zoo.create_model("ztest_tied", checkpoint_path=tmp_path / "up.pth"), tied_toy)
    torch.save({k: v for k, v in one.items() if k != "body.bias"}, tmp_path / "missing.pth")
    with pytest.raises(PretrainedWeightsError, match=r"missing \['body.bias'\]"):
        zoo.create_model("ztest_tied", checkpoint_path=tmp_path / "missing.pth")
    torch.save({**one, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(PretrainedWeightsError, match=r"unexpected \['extra.weight'\]"):
        zoo.create_model("ztest_tied", checkpoint_path=tmp_path / "extra.pth")
    torch.save({"body.weight": one["body.weight"], "body.bias": one["body.bias"]}, tmp_path / "neither.pth")
    with pytest.raises(PretrainedWeightsError, match=r"missing \['embed.weight', 'head.weight'\]"):
        zoo.create_model("ztest_tied", checkpoint_path=tmp_path / "neither.pth")


def test_tied_twins_that_differ_in_a_file_are_refused(tied_toy, tmp_path):
    sd = {k: v.clone() for k, v in tied_toy.state_dict().items()}
    sd["head.weight"] += 1
    torch.save(sd, tmp_path / "untied.pth")
    with pytest.raises(PretrainedWeightsError, match="embed.weight and head.weight are one tied tensor"):
        zoo.create_model("ztest_tied", checkpoint_path=tmp_path / "untied.pth")


def test_export_of_a_tied_model_loads_back_tied(tied_toy, tmp_path):
    """``sharezoo export`` of a task checkpoint (torch keeps both tied keys) writes a folder local-dir: loads tied."""
    from tasks.cli import main

    state = {f"net.{k}": v for k, v in tied_toy.state_dict().items()}
    torch.save({"hyper_parameters": {"model": "ztest_tied", "model_kwargs": {}}, "state_dict": state},
               tmp_path / "task.ckpt")
    assert main(["export", str(tmp_path / "task.ckpt"), str(tmp_path / "out")]) == 0
    _assert_tied_copy(zoo.create_model(f"local-dir:{tmp_path / 'out'}"), tied_toy)


def test_unipic_tiny_with_tied_embeddings_round_trips_tied(tmp_path):
    """The paper-size UniPic ties its Qwen2.5 embedding and LM head; the tiny one does through ``model_kwargs``."""
    from zoo.unipic import TINY_LLM

    ref = zoo.create_model("unipic_tiny", llm={**TINY_LLM, "tie_word_embeddings": True})
    assert ref.llm.lm_head.weight is ref.llm.model.embed_tokens.weight
    back = zoo.create_model(f"local-dir:{zoo.save_pretrained(ref, tmp_path / 'exp')}")
    assert back.llm.lm_head.weight is back.llm.model.embed_tokens.weight
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ref.state_dict().items())


def test_model_card_lists_params_and_weights(toy_model):
    text = zoo.model_card("ztest_toy")
    n = sum(p.numel() for p in toy_model[0].parameters())
    assert f"{n / 1e6:.2f}M" in text and "ztest_toy.v1" in text and "A toy two-layer model" in text
    assert zoo.count_params("ztest_toy") == n


def test_zoo_never_imports_lightning():
    import subprocess
    import sys

    code = "import sys, zoo; assert not any(m.split('.')[0] in ('pytorch_lightning', 'lightning') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
