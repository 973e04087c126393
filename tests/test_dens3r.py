"""Dens3R model: RoPE interpolation, shapes/ranges/backward, shared vs two-stack decoders, save/load, conversion."""
from __future__ import annotations

import argparse
import math

import pytest
import torch

import zoo
from zoo.dens3r import Dens3R, convert_official_checkpoint, upstream_model_kwargs
from zoo.layers.rope2d import RoPE2D, grid_positions


# ------------------------------------------------------------------------------------------------ RoPE
def test_rope_positions_span_same_range_for_64_and_128_px():
    rope = RoPE2D(100.0, interpolate=True)
    p64 = rope.scaled_positions(grid_positions(1, 4, 4))  # 64 px / patch 16
    p128 = rope.scaled_positions(grid_positions(1, 8, 8))
    assert p64.min() == p128.min() == 0
    assert p64.max() < 32 and p128.max() < 32
    assert p64.max() == pytest.approx(24.0) and p128.max() == pytest.approx(28.0)  # (L-1) * 32 / L
    # every 64-px position is also a 128-px position (even indices): same range, finer sampling
    assert torch.allclose(p64.reshape(4, 4, 2), p128.reshape(8, 8, 2)[::2, ::2])
    plain = RoPE2D(100.0, interpolate=False).scaled_positions(grid_positions(1, 8, 8))
    assert plain.max() == 7


def test_rope_32_token_grid_equals_plain_rope():
    """At the training resolution (32 tokens a side) interpolation is the identity."""
    q = torch.randn(1, 2, 32 * 32, 16)
    pos = grid_positions(1, 32, 32)
    assert torch.allclose(RoPE2D(interpolate=True)(q, pos), RoPE2D(interpolate=False)(q, pos), atol=1e-6)


def _reference_rope1d(x: torch.Tensor, t: torch.Tensor, base: float) -> torch.Tensor:
    """Textbook 1-D RoPE on pairs (i, i + d/2): rotation by angle t * base^(-2i/d)."""
    d = x.shape[-1]
    out = torch.empty_like(x)
    for i in range(d // 2):
        th = t * base ** (-2 * i / d)
        a, b = x[..., i], x[..., i + d // 2]
        out[..., i] = a * torch.cos(th) - b * torch.sin(th)
        out[..., i + d // 2] = a * torch.sin(th) + b * torch.cos(th)
    return out


def test_rope_matches_pairwise_rotation_reference_and_preserves_norm():
    rope = RoPE2D(100.0, interpolate=True)
    x = torch.randn(2, 3, 6 * 5, 8)
    pos = grid_positions(2, 6, 5)
    y = rope(x, pos)
    t = rope.scaled_positions(pos)[:, None]  # B,1,N,2
    ref = torch.cat([_reference_rope1d(x[..., :4], t[..., 0], 100.0), _reference_rope1d(x[..., 4:], t[..., 1], 100.0)],
                    dim=-1)
    assert torch.allclose(y, ref, atol=1e-5)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_rope_qk_depends_only_on_relative_position():
    rope = RoPE2D(100.0, interpolate=False)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def dot(pq, pk):
        rq = rope(q, torch.tensor([[pq]]))
        rk = rope(k, torch.tensor([[pk]]))
        return (rq * rk).sum()

    base = dot((3, 5), (1, 2))
    assert torch.allclose(base, dot((10, 12), (8, 9)), atol=1e-5)  # both shifted by (7, 7)
    assert torch.allclose(base, dot((5, 3), (3, 0)), atol=1e-5)  # shifted by (2, -2)
    assert not torch.allclose(base, dot((3, 5), (2, 2)), atol=1e-3)


def test_rope_jitter_only_in_training():
    rope = RoPE2D(100.0, jitter=True)
    pos = grid_positions(1, 8, 8)
    rope.eval()
    assert torch.equal(rope.scaled_positions(pos), RoPE2D(100.0).scaled_positions(pos))
    rope.train()
    jit = rope.scaled_positions(pos) - RoPE2D(100.0).scaled_positions(pos)
    assert jit.abs().max() <= 2.0 + 1e-6 and jit.abs().max() > 0  # +- half of the 4.0 step


# ----------------------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def tiny() -> Dens3R:
    torch.manual_seed(0)
    return zoo.create_model("dens3r_tiny").eval()


def test_tiny_shapes_ranges_and_depth(tiny):
    x1, x2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = tiny(x1, x2)
    v1, v2 = out.view1, out.view2
    assert v1.pts3d.shape == (2, 64, 64, 3) and v2.pts3d_other.shape == (2, 64, 64, 3)
    assert v2.pts3d is None and v1.pts3d_other is None  # 'pair' mode = released heads
    assert v1.conf.shape == (2, 64, 64) and (v1.conf >= 1.0).all()
    assert v1.desc.shape == (2, 64, 64, 8) and torch.allclose(v1.desc.norm(dim=-1), torch.ones(2, 64, 64), atol=1e-4)
    for n in (v1.normal, v2.normal):
        assert n.shape == (2, 64, 64, 3) and n.abs().max() <= 1.0 + 1e-6
        assert torch.allclose(n.norm(dim=-1), torch.ones(2, 64, 64), atol=1e-4)
    assert torch.equal(out.depth, v1.pts3d[..., 2])


def test_single_image_is_pair_with_itself_and_non_square(tiny):
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        a, b = tiny(x), tiny(x, x.clone())
    assert a.view1.pts3d.shape == (1, 32, 48, 3)
    assert torch.allclose(a.view1.pts3d, b.view1.pts3d, atol=1e-5)
    with torch.no_grad():  # two different sizes go through separate encoder calls
        c = tiny(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 48, 32))
    assert c.view2.pts3d_other.shape == (1, 48, 32, 3)


def test_backward_all_heads():
    m = zoo.create_model("dens3r_tiny")
    out = m(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32), heads="all")
    loss = sum(t.float().mean() for v in (out.view1, out.view2) for t in v.to_dict().values())
    loss.backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]


def test_shared_decoder_equals_two_identical_stacks():
    torch.manual_seed(1)
    shared = zoo.create_model("dens3r_tiny").eval()
    two = zoo.create_model("dens3r_tiny", shared_decoder=False).eval()
    sd = shared.state_dict()
    sd.update({k.replace("dec_blocks.", "dec_blocks2.", 1): v for k, v in sd.items() if k.startswith("dec_blocks.")})
    two.load_state_dict(sd)
    x1, x2 = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = shared(x1, x2), two(x1, x2)
    assert torch.allclose(a.view2.pts3d_other, b.view2.pts3d_other, atol=1e-5)
    n_shared, n_two = (sum(p.numel() for p in m.parameters()) for m in (shared, two))
    assert n_two - n_shared == sum(p.numel() for p in two.dec_blocks2.parameters())


def test_param_counts_vs_paper():
    shared, two = zoo.count_params("dens3r_vitl16"), zoo.count_params("dens3r_vitl16", shared_decoder=False)
    # the paper's shared/unshared difference is exactly one 12 x 768-d decoder stack (113.439 M)
    assert (two - shared) / 1e6 == pytest.approx(737.591 - 624.152, abs=0.01)
    assert 0.93 < shared / 624.152e6 < 1.0  # 591.7 M: the remainder is documented in the model card
    assert "624.152" in zoo.model_card("dens3r_vitl16")


def test_save_pretrained_round_trip(tmp_path, tiny):
    zoo.save_pretrained(tiny, tmp_path / "m")
    back = zoo.create_model(f"local-dir:{tmp_path / 'm'}").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tiny(x).depth, back(x).depth)


# ------------------------------------------------------------------------------------------ conversion
def _to_upstream(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write our weights with the released code's key names (croco/dust3r/mast3r modules), written here
    independently of the converter: DPTOutputAdapter_fix (act_postprocess / scratch.layerN_rn aliased by
    scratch.layer_rn / scratch.refinenetN.resConfUnit1|2,out_conv / head), Cat_MLP head_local_features."""
    heads = {"local_head.": "ptsmatch_local_head.", "global_head.": "ptsmatch_global_head.",
             "normal_head.": "normal_local_head."}
    out: dict[str, torch.Tensor] = {"mask_token": torch.zeros(1, 1, 32)}
    for k, v in sd.items():
        head = next((h for h in heads if k.startswith(h)), None)
        if head is None:
            out[k] = v
            continue
        rest = k[len(head):]
        up = heads[head]
        if rest.startswith("desc_mlp."):
            out[up + "head_local_features." + rest[len("desc_mlp."):]] = v
            continue
        parts = rest.split(".")  # dpt.<group>.<idx>...
        group, idx, tail = parts[1], parts[2], ".".join(parts[3:])
        if group == "reassemble":
            out[f"{up}dpt.act_postprocess.{idx}.{tail}"] = v
        elif group == "project":
            out[f"{up}dpt.scratch.layer{int(idx) + 1}_rn.{tail}"] = v
            out[f"{up}dpt.scratch.layer_rn.{idx}.{tail}"] = v
        elif group == "fusion":
            sub, t2 = tail.split(".", 1)
            sub = {"res_skip": "resConfUnit1", "res_out": "resConfUnit2", "out_conv": "out_conv"}[sub]
            out[f"{up}dpt.scratch.refinenet{int(idx) + 1}.{sub}.{t2}"] = v
            if idx == "3" and sub == "resConfUnit2":  # upstream also holds an unused refinenet4.resConfUnit1
                out[f"{up}dpt.scratch.refinenet4.resConfUnit1.{t2}"] = torch.randn_like(v)
        elif group == "output":
            out[f"{up}dpt.head.{idx}.{tail}"] = v
        else:
            raise AssertionError(k)
    return out


def _write_upstream(path, sd, two_stacks: bool):
    args = argparse.Namespace(model="AsymmetricMASt3R(pos_embed='RoPE100', img_size=(64, 64), head_type='catmlp+dpt', "
                                    "output_mode='unify', enc_embed_dim=64, enc_depth=2, enc_num_heads=4, "
                                    f"dec_embed_dim=32, dec_depth=2, dec_num_heads=4, symmetrize_dec={not two_stacks})")
    torch.save({"model": sd, "args": args, "epoch": 3}, path)


def test_convert_shared_checkpoint(tmp_path, tiny):
    up = _to_upstream(tiny.state_dict())
    assert any(k.startswith("ptsmatch_local_head.dpt.scratch.layer_rn.") for k in up)
    _write_upstream(tmp_path / "ckpt.pth", up, two_stacks=False)
    m = zoo.create_model("dens3r_tiny").eval()
    m.load_state_dict(convert_official_checkpoint(tmp_path / "ckpt.pth"))
    # create_model(checkpoint_path=...) goes through checkpoint_filter_fn; the platform loader reads with
    # weights_only=True without allow-listing argparse.Namespace, so that path is tested on the bare 'model' dict
    torch.save({"model": up}, tmp_path / "bare.pth")
    m2 = zoo.create_model("dens3r_tiny", checkpoint_path=tmp_path / "bare.pth").eval()
    x1, x2 = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = tiny(x1, x2), m(x1, x2)
    for f in ("pts3d", "conf", "desc", "normal"):
        assert torch.allclose(getattr(a.view1, f), getattr(b.view1, f), atol=1e-6), f
    with torch.no_grad():
        assert torch.allclose(m2(x1, x2).view2.pts3d_other, a.view2.pts3d_other, atol=1e-6)
    kw = upstream_model_kwargs(tmp_path / "ckpt.pth")
    assert kw["enc_dim"] == 64 and kw["enc_depth"] == 2 and kw["enc_heads"] == 4 and kw["dec_heads"] == 4
    assert kw["shared_decoder"] and kw["desc_dim"] == 8 and kw["conf"] and kw["rope_freq"] == 100.0
    # a shared checkpoint into a two-stack model: both stacks get the same weights
    sd2 = convert_official_checkpoint(tmp_path / "ckpt.pth", shared_decoder=False)
    two = zoo.create_model("dens3r_tiny", shared_decoder=False).eval()
    two.load_state_dict(sd2)
    with torch.no_grad():
        assert torch.allclose(two(x1, x2).view2.pts3d_other, a.view2.pts3d_other, atol=1e-5)


def test_load_checkpoint_and_task_init_from_read_an_upstream_checkpoint_with_its_args(tmp_path, tiny):
    """zoo.load_checkpoint (and so ZooTask(init_from=...)) reads an upstream training checkpoint ({'model', 'args'})
    through the family's reader, converted with its args; a descriptor-confidence checkpoint is refused (args)."""
    from tasks.geometry import GeometryTask

    _write_upstream(tmp_path / "ckpt.pth", _to_upstream(tiny.state_dict()), two_stacks=False)
    m = zoo.create_model("dens3r_tiny")
    zoo.load_checkpoint(m, tmp_path / "ckpt.pth")
    torch.testing.assert_close(m.state_dict(), tiny.state_dict())
    task = GeometryTask("dens3r_tiny", stage=2, init_from=str(tmp_path / "ckpt.pth"))
    torch.testing.assert_close(task.net.state_dict(), tiny.state_dict())
    up = _to_upstream(tiny.state_dict())
    for h in ("ptsmatch_local_head", "ptsmatch_global_head"):
        for t in ("weight", "bias"):
            k = f"{h}.head_local_features.fc2.{t}"
            up[k] = torch.cat([up[k], torch.randn(16 * 16, *up[k].shape[1:])])
    _upstream_ckpt(tmp_path / "dc.pth", up, ", desc_conf=True")
    with pytest.raises(ValueError, match="descriptor confidence"):
        zoo.load_checkpoint(zoo.create_model("dens3r_tiny"), tmp_path / "dc.pth")


def test_convert_two_stack_checkpoint(tmp_path):
    torch.manual_seed(3)
    two = zoo.create_model("dens3r_tiny", shared_decoder=False).eval()
    _write_upstream(tmp_path / "two.pth", _to_upstream(two.state_dict()), two_stacks=True)
    m = zoo.create_model("dens3r_tiny", shared_decoder=False).eval()
    m.load_state_dict(convert_official_checkpoint(tmp_path / "two.pth", shared_decoder=False))
    x1, x2 = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(two(x1, x2).view2.pts3d_other, m(x1, x2).view2.pts3d_other, atol=1e-6)
    with pytest.raises(ValueError, match="two different decoder stacks"):
        convert_official_checkpoint(tmp_path / "two.pth", shared_decoder=True)
    sd = convert_official_checkpoint(tmp_path / "two.pth", shared_decoder=True, two_stacks="average")
    assert not any(k.startswith("dec_blocks2.") for k in sd)
    k = "dec_blocks.0.attn.qkv.weight"
    ref = (two.state_dict()[k] + two.state_dict()["dec_blocks2.0.attn.qkv.weight"]) / 2
    assert torch.allclose(sd[k], ref)
    # identical stacks (e.g. a checkpoint saved from a symmetrised model) convert to the shared layout silently
    sd_same = two.state_dict()
    sd_same.update({kk.replace("dec_blocks.", "dec_blocks2.", 1): v for kk, v in sd_same.items()
                    if kk.startswith("dec_blocks.")})
    out = convert_official_checkpoint(_to_upstream(sd_same), shared_decoder=True)
    zoo.create_model("dens3r_tiny").load_state_dict(out)
    assert math.isfinite(float(sd[k].sum()))


def _upstream_ckpt(path, sd, extra_args: str = "", pos_embed: str = "RoPE100") -> None:
    args = argparse.Namespace(model=f"AsymmetricMASt3R(pos_embed='{pos_embed}', img_size=(64, 64), head_type='catmlp+dpt', "
                                    "output_mode='pts3d+desc8', enc_embed_dim=64, enc_depth=2, enc_num_heads=4, "
                                    f"dec_embed_dim=32, dec_depth=2, dec_num_heads=4{extra_args})")
    torch.save({"model": sd, "args": args}, path)


def test_convert_rejects_absolute_position_embeddings(tmp_path, tiny):
    up = _to_upstream(tiny.state_dict())
    for key in ("enc_pos_embed", "dec_pos_embed"):  # learned ('DINO') or sincos ('cosine') embeddings
        bad = {**up, key: torch.zeros(1, 16, 64)}
        with pytest.raises(ValueError, match="absolute position embeddings.*" + key):
            convert_official_checkpoint(bad)
        with pytest.raises(ValueError, match="absolute position embeddings"):
            upstream_model_kwargs({"model": bad})
    _upstream_ckpt(tmp_path / "dino.pth", up, pos_embed="DINO")  # the args say so even without the tensors
    with pytest.raises(ValueError, match="pos_embed='DINO'"):
        convert_official_checkpoint(tmp_path / "dino.pth")


@pytest.mark.parametrize("flag", ["desc_conf", "two_confs"])
def test_convert_descriptor_confidence_channel(tmp_path, tiny, flag):
    """desc_conf=True (MASt3R: two_confs=True): the descriptor MLP has one more pixel-shuffled channel (the last
    p^2 rows of fc2). desc_dim is read from the args, the conversion raises unless told to drop it."""
    up = _to_upstream(tiny.state_dict())
    p2 = 16 * 16
    for h in ("ptsmatch_local_head", "ptsmatch_global_head"):
        for t in ("weight", "bias"):
            k = f"{h}.head_local_features.fc2.{t}"
            up[k] = torch.cat([up[k], torch.randn(p2, *up[k].shape[1:])])
    assert up["ptsmatch_local_head.head_local_features.fc2.weight"].shape[0] == 9 * p2
    _upstream_ckpt(tmp_path / "dc.pth", up, f", {flag}=True, desc_conf_mode=('exp', 0, inf)")
    assert upstream_model_kwargs(tmp_path / "dc.pth")["desc_dim"] == 8  # not 9
    with pytest.raises(ValueError, match="descriptor confidence.*extra_outputs='drop'"):
        convert_official_checkpoint(tmp_path / "dc.pth")
    m = zoo.create_model("dens3r_tiny").eval()
    m.load_state_dict(convert_official_checkpoint(tmp_path / "dc.pth", extra_outputs="drop"))
    x1, x2 = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = tiny(x1, x2), m(x1, x2)
    assert torch.allclose(a.view1.desc, b.view1.desc, atol=1e-6) and torch.allclose(a.view2.desc, b.view2.desc,
                                                                                       atol=1e-6)
    _upstream_ckpt(tmp_path / "plain.pth", _to_upstream(tiny.state_dict()), f", {flag}=False")
    assert upstream_model_kwargs(tmp_path / "plain.pth")["desc_dim"] == 8
    convert_official_checkpoint(tmp_path / "plain.pth")


def test_convert_normal_kappa_channel(tiny):
    up = _to_upstream(tiny.state_dict())
    for t in ("weight", "bias"):
        k = f"normal_local_head.dpt.head.4.{t}"
        up[k] = torch.cat([up[k], torch.randn(1, *up[k].shape[1:])])
    with pytest.raises(ValueError, match="normal head has 4 output channels.*kappa"):
        convert_official_checkpoint(up)
    m = zoo.create_model("dens3r_tiny").eval()
    m.load_state_dict(convert_official_checkpoint(up, extra_outputs="drop"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tiny(x).view1.normal, m(x).view1.normal, atol=1e-6)
    with pytest.raises(ValueError, match="extra_outputs"):
        convert_official_checkpoint(up, extra_outputs="keep")
