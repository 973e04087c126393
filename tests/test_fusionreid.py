"""FusionReID model: shapes, paper-size structure, HTM/MFU semantics, official-key conversion, save/load."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.fusionreid import FEATURE_NAMES, FusionReID, FusionReIDOutput, MutualFusionUnit, convert_official_checkpoint


def _batch(b: int = 8, cams: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, 3, 64, 32), torch.randint(0, cams, (b,))


def test_tiny_forward_backward_and_eval_embedding():
    m = zoo.create_model("fusionreid_tiny", num_classes=5, num_cameras=3)
    x, c = _batch(cams=3)
    out = m(x, c)
    assert isinstance(out, FusionReIDOutput) and len(out.features) == len(out.logits) == len(FEATURE_NAMES) == 6
    assert [f.shape for f in out.features] == [(8, 32)] * 6
    assert [z.shape for z in out.logits] == [(8, 5)] * 6
    sum(z.logsumexp(1).mean() + f.pow(2).mean() for f, z in zip(out.features, out.logits)).backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert frozen == [f"necks.{i}.bias" for i in range(6)]  # BNNeck shifts are frozen
    m.eval()
    emb = m(x, c)
    assert emb.shape == (8, m.embed_dim) == (8, 32 * 6)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(8))
    feats = m.forward_features(x, c)
    torch.testing.assert_close(emb, F.normalize(torch.cat(feats, 1), dim=1))  # pre-BN features, concatenated


def test_heads_init_and_camera_embedding():
    m = zoo.create_model("fusionreid_tiny")
    for bn, fc in zip(m.necks, m.classifiers):
        assert fc.bias is None and bn.bias.abs().sum() == 0 and (bn.weight == 1).all()
        assert fc.weight.std() < 0.005  # N(0, 0.001)
    assert m.vit.sie_embed.shape == (2, 1, 32) and m.vit.sie_coe == 3.0
    m.eval()
    x = torch.randn(2, 3, 64, 32)
    a, b = m(x, torch.tensor([0, 0])), m(x, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)  # SIE changes the embedding
    assert zoo.create_model("fusionreid_tiny", num_cameras=1).vit.sie_embed is None  # none for one camera


def test_paper_config_structure_on_meta():
    with torch.device("meta"):
        m = zoo.create_model("fusionreid_vitb16_r50")
        m.eval()
        emb = m(torch.empty(2, 3, 256, 128), torch.zeros(2, dtype=torch.long))
        fmap = m.cnn.forward_features(torch.empty(1, 3, 256, 128))
    assert emb.shape == (2, 5888) and m.feature_dims == (2048, 768, 768, 768, 768, 768)
    assert fmap.shape == (1, 2048, 16, 8)  # 2x2 max-pool + last stride 1
    assert m.vit.grid_size == (21, 10) and m.vit.pos_embed.shape == (1, 211, 768)
    assert m.vit.patch_embed.proj.stride == (12, 12) and m.vit.patch_embed.proj.kernel_size == (16, 16)
    assert isinstance(m.cnn.maxpool, torch.nn.MaxPool2d) and m.cnn.maxpool.kernel_size == 2
    assert len(m.htm.layers) == 2 and hasattr(m.htm.layers[0], "seu_cnn") and hasattr(m.htm.layers[0], "seu_vit")
    assert m.vit.blocks[0].attn.qkv.bias is not None and m.htm.layers[0].seu_cnn.block.attn.qkv.bias is None
    assert m.vit.norm.eps == 1e-6 and m.htm.layers[0].seu_cnn.norm.eps == 1e-5  # ViT LN 1e-6, HTM LN default
    assert isinstance(m.cnn.act1, torch.nn.Identity)  # no ReLU in the official stem
    lru = sum(p.numel() for p in m.lru_cnn.parameters()) / 1e6, sum(p.numel() for p in m.lru_vit.parameters()) / 1e6
    assert lru == pytest.approx((1.58, 0.60), abs=0.01)  # the spec's LRU sizes
    n = zoo.count_params("fusionreid_vitb16_r50")
    assert 172.0e6 < n < 173.0e6  # 172.63M with 751 classes (see MODEL_CARD for the gap to the paper's 153.8M)
    assert zoo.count_params("fusionreid_vitb16_r101") - n == pytest.approx(19.0e6, rel=0.01)


def test_torchvision_key_names_for_cnn():
    import torchvision

    with torch.device("meta"):
        ours = zoo.create_model("fusionreid_vitb16_r50").cnn.state_dict()
        tv = torchvision.models.resnet50().state_dict()
    assert set(ours) == set(tv) - {"fc.weight", "fc.bias"}
    assert all(ours[k].shape == tv[k].shape for k in ours)


def test_share_patterns():
    base = dict(num_classes=4, num_cameras=2)
    htm = {p: zoo.create_model("fusionreid_tiny", htm_share_pattern=p, **base).htm for p in range(4)}
    counts = {p: sum(t.numel() for t in m.parameters()) for p, m in htm.items()}
    assert counts[1] > counts[0] == counts[2] > counts[3]


def test_htm_reuses_original_lru_tokens():
    m = zoo.create_model("fusionreid_tiny").eval()
    seen = []
    for layer in m.htm.layers:
        layer.register_forward_pre_hook(lambda mod, args: seen.append([a.detach().clone() for a in args]))
    m(*_batch(2))
    (r0, t0), (r1, t1) = seen
    torch.testing.assert_close(r0[:, 1:], r1[:, 1:])  # same original LRU tokens in both layers
    torch.testing.assert_close(t0[:, 1:], t1[:, 1:])
    assert not torch.allclose(r0[:, :1], r1[:, :1])  # only the cls token is carried


def test_mfu_matches_reference_formula():
    torch.manual_seed(1)
    mfu = MutualFusionUnit(16, 4)
    cls, kv = torch.randn(3, 1, 16), torch.randn(3, 7, 16)
    a = mfu.attn
    q = a.q(mfu.norm1(cls)).view(3, 1, 4, 4).transpose(1, 2)
    k = a.k(F.layer_norm(kv, (16,), a.kv_norm.weight, a.kv_norm.bias)).view(3, 7, 4, 4).transpose(1, 2)
    v = a.v(kv).view(3, 7, 4, 4).transpose(1, 2)  # V from the raw tokens
    att = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)
    y = cls + a.proj((att @ v).transpose(1, 2).reshape(3, 1, 16))
    y = y + mfu.mlp(mfu.norm2(y))
    torch.testing.assert_close(mfu(cls, kv), y)


# ----------------------------------------------------------------------------------- official checkpoint layout
def _official_layout(model: FusionReID) -> dict[str, torch.Tensor]:
    """A state dict in the official repository's key layout, written from our reading of its module tree
    (modeling/make_model.py, fusion_part/fusion.py, backbones/): backbone subtrees keep timm/torchvision names."""
    ours = model.state_dict()
    off: dict[str, torch.Tensor] = {}

    def value(k: str, v: torch.Tensor) -> torch.Tensor:
        if not v.is_floating_point():
            return v.clone() + 3  # num_batches_tracked
        if k.endswith("running_var"):
            return torch.rand_like(v) + 0.5
        if k.endswith(".p"):  # GeM exponent
            return 3.0 + torch.rand_like(v)
        return torch.randn_like(v) * 0.5

    def put(prefix_ours: str, prefix_off: str) -> None:
        for k, v in ours.items():
            if k.startswith(prefix_ours):
                off[prefix_off + k[len(prefix_ours):]] = value(k, v)

    put("cnn.", "resnet.base.")
    put("gem_cnn.", "resnet.gap.")
    put("vit.", "transformer.base.")
    put("lru_cnn.", "res_LRU.")
    put("lru_vit.", "former_LRU.")
    put("gem_lru_cnn.", "gap_r.")
    put("gem_lru_vit.", "gap_f.")
    heads = [("resnet.bottleneck", "resnet.classifier"), ("transformer.bottleneck", "transformer.classifier")]
    heads += [(f"bottleneck_{i}", f"classifier_{i}") for i in range(1, 5)]
    for i, (bn, fc) in enumerate(heads):
        put(f"necks.{i}.", f"{bn}.")
        put(f"classifiers.{i}.", f"{fc}.")
    d = model.vit.embed_dim
    off["transformer.base.fc.weight"], off["transformer.base.fc.bias"] = torch.randn(1000, d), torch.randn(1000)
    D, hid = model.feature_dims[-1], int(model.feature_dims[-1] * 4)
    ln = lambda p: {f"{p}.weight": (D,), f"{p}.bias": (D,)}  # noqa: E731
    mlp = {"mlp.fc1.weight": (hid, D), "mlp.fc1.bias": (hid,), "mlp.fc2.weight": (D, hid), "mlp.fc2.bias": (D,)}
    seu = {**ln("norm"), **{f"blocks.0.{k}": s for k, s in {
        **ln("norm1"), "attn.qkv.weight": (3 * D, D), "attn.proj.weight": (D, D), "attn.proj.bias": (D,),
        **ln("norm2"), **mlp}.items()}}
    mfu = {f"blocks.0.{k}": s for k, s in {
        **ln("norm1"), **ln("attn.norm"), "attn.q.weight": (D, D), "attn.k.weight": (D, D), "attn.v.weight": (D, D),
        "attn.proj.weight": (D, D), "attn.proj.bias": (D,), **ln("norm2"), **mlp}.items()}
    for i in range(len(model.htm.layers)):
        for unit, keys in (("SEU1", seu), ("SEU2", seu), ("MUF_RES", mfu), ("MFU_FORMER", mfu)):
            for k, shape in keys.items():
                off[f"HTM.blocks.{i}.{unit}.{k}"] = torch.randn(shape)
    return off


def test_official_checkpoint_conversion_is_exact(tmp_path):
    model = zoo.create_model("fusionreid_tiny", num_classes=7, num_cameras=3)
    official = _official_layout(model)
    conv = convert_official_checkpoint({f"module.{k}": v for k, v in official.items()})  # DDP prefix too
    assert set(conv) == set(model.state_dict())
    missing, unexpected = model.load_state_dict(conv, strict=True)
    sd = model.state_dict()
    for k, v in conv.items():
        assert torch.equal(sd[k], v), k
    # the same through create_model(checkpoint_path=<official .pth>), via checkpoint_filter_fn
    torch.save(official, tmp_path / "official.pth")
    m2 = zoo.create_model("fusionreid_tiny", num_classes=7, num_cameras=3, checkpoint_path=tmp_path / "official.pth")
    m2.eval(), model.eval()
    x, c = _batch(2, 3)
    torch.testing.assert_close(m2(x, c), model(x, c))
    # one official value, checked by name: SEU2 of HTM layer 1 -> seu_vit; MFU attn.norm -> kv_norm
    assert torch.equal(sd["htm.layers.1.seu_vit.block.attn.qkv.weight"],
                       official["HTM.blocks.1.SEU2.blocks.0.attn.qkv.weight"])
    assert torch.equal(sd["htm.layers.0.mfu_cnn.attn.kv_norm.weight"],
                       official["HTM.blocks.0.MUF_RES.blocks.0.attn.norm.weight"])
    with pytest.raises(KeyError):
        convert_official_checkpoint({**official, "center.centers": torch.zeros(3)})


def test_safetensors_round_trip(tmp_path):
    m = zoo.create_model("fusionreid_tiny", num_classes=6, num_cameras=3)
    x, c = _batch(3, 3)
    m.train()
    m(x, c)  # move BN running stats away from their init
    m.eval()
    zoo.save_pretrained(m, tmp_path / "tiny")
    m2 = zoo.create_model(f"local-dir:{tmp_path / 'tiny'}").eval()
    assert m2.num_classes == 6
    torch.testing.assert_close(m2(x, c), m(x, c), rtol=0, atol=0)


def test_pretrained_backbone_offline_falls_back(caplog, monkeypatch):
    import timm

    def offline(*a, **k):
        raise RuntimeError("offline (test)")

    monkeypatch.setattr(timm, "create_model", offline)
    with caplog.at_level(logging.WARNING):
        m = zoo.create_model("fusionreid_tiny", pretrained_backbone=True)
    assert "using random init" in caplog.text and m(*_batch(2)).logits[0].shape == (2, 4)


def test_vit_imagenet_load_resizes_pos_embed_bilinear():
    from timm.models.vision_transformer import VisionTransformer

    src = VisionTransformer(img_size=56, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10)
    m = zoo.create_model("fusionreid_tiny")
    m.vit.load_imagenet(src.state_dict())
    grid = src.pos_embed[:, 1:].reshape(1, 7, 7, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(10, 5), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(1, 50, 32)
    torch.testing.assert_close(m.vit.pos_embed[:, 1:], ref)
    torch.testing.assert_close(m.vit.pos_embed[:, :1], src.pos_embed[:, :1])
    torch.testing.assert_close(m.vit.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)


def test_model_card_and_registry():
    names = zoo.list_models("fusionreid*")
    assert set(names) >= {"fusionreid_vitb16_r50", "fusionreid_deitb16_r50", "fusionreid_vitb16_r101",
                          "fusionreid_vitb16_r152", "fusionreid_tiny"}
    card = zoo.model_card("fusionreid_vitb16_r50")
    assert "153.8" in card and "deviations" in card
    assert "GradScaler" in card and "bf16-mixed" in card  # the precision deviation is documented
