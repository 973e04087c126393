"""Numerical equivalence with the released Dens3R code (both decoder layouts, interpolated RoPE, odd grids).

Needs a checkout of https://github.com/G-1nOnly/Dens3R (its croco/, dust3r/, mast3r/ folders; CC BY-NC-SA, not
vendored here): ``DENS3R_UPSTREAM=/path/to/Dens3R pytest tests/test_dens3r_upstream.py``. Skipped otherwise.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

import zoo
from zoo.dens3r import convert_official_checkpoint, upstream_model_kwargs

UPSTREAM = os.environ.get("DENS3R_UPSTREAM")
pytestmark = pytest.mark.skipif(not UPSTREAM or not os.path.isdir(os.path.join(UPSTREAM or "", "mast3r")),
                                reason="set DENS3R_UPSTREAM to a Dens3R checkout to compare with the released code")


@pytest.mark.parametrize("shared", [False, True], ids=["two_stacks", "symmetrize_dec"])
def test_matches_released_model(shared):
    sys.path.insert(0, UPSTREAM)
    try:
        from mast3r.model import AsymmetricMASt3R
    finally:
        sys.path.remove(UPSTREAM)
    inf = float("inf")
    torch.manual_seed(0)
    # the released head factory asserts dec_depth > 9 and fixes the DPT widths (256 / 128, layer dims 96..768)
    up = AsymmetricMASt3R(output_mode="unify", head_type="catmlp+dpt", depth_mode=("exp", -inf, inf),
                          conf_mode=("exp", 1, inf), normal_mode="linear", pos_embed="RoPE100", img_size=(64, 64),
                          patch_size=16, enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=32, dec_depth=10,
                          dec_num_heads=4, landscape_only=False, patch_embed_cls="PatchEmbedDust3R",
                          symmetrize_dec=shared).eval()
    with torch.no_grad():
        for p in up.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # non-trivial LayerNorms and biases
    sd = up.state_dict()
    kw = upstream_model_kwargs({"model": sd})
    assert kw["shared_decoder"] == shared and kw["dec_depth"] == 10 and kw["desc_dim"] == 24
    m = zoo.create_model("dens3r_tiny", enc_dim=64, enc_depth=2, enc_heads=4, dec_dim=32, dec_depth=10, dec_heads=4,
                         desc_dim=24, desc_hidden_ratio=4.0, head_feature_dim=256, head_last_dim=128,
                         head_layer_dims=(96, 192, 384, 768), shared_decoder=shared).eval()
    m.load_state_dict(convert_official_checkpoint({"model": sd}, shared_decoder=shared))
    for size in ((64, 64), (48, 80), (128, 128)):  # training grid, odd 3x5 grid, interpolated 8x8 grid
        x1, x2 = torch.randn(1, 3, *size), torch.randn(1, 3, *size)
        v1 = {"img": x1, "true_shape": torch.tensor([size]), "instance": ["a"]}
        v2 = {"img": x2, "true_shape": torch.tensor([size]), "instance": ["b"]}
        with torch.no_grad():
            r1, r2 = up(v1, v2)
            o = m(x1, x2)
        pairs = [(r1["pts3d"], o.view1.pts3d), (r1["conf"], o.view1.conf), (r1["desc"], o.view1.desc),
                 (r2["pts3d_in_other_view"], o.view2.pts3d_other), (r2["conf"], o.view2.conf_other),
                 (r2["desc"], o.view2.desc), (r1["normal"], o.view1.normal), (r2["normal"], o.view2.normal)]
        for i, (a, b) in enumerate(pairs):
            assert torch.allclose(a, b, atol=5e-4, rtol=1e-4), (size, i, float((a - b).abs().max()))
