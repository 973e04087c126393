"""ContextualAttention against a brute-force (loop) reference, and on a constructed copy-paste case."""
import pytest
import torch
import torch.nn.functional as F

from zoo.layers.contextual_attention import ContextualAttention


def brute_force_cam(fg, bg, hole, k, stride, scale, similarity, exclude):
    """Loop over every foreground position and every candidate patch (no unfold/fold/bmm)."""
    b, _, h, w = fg.shape
    p = k // 2
    bg = bg * (1 - hole)
    fgp = F.pad(fg, (p, p, p, p))
    out = torch.zeros_like(fg)
    attns = []
    for ib in range(b):
        cands, valid = [], []
        for i in range(0, h - k + 1, stride):
            for j in range(0, w - k + 1, stride):
                cands.append(bg[ib, :, i:i + k, j:j + k])
                valid.append(bool(hole[ib, 0, i:i + k, j:j + k].sum() == 0))
        if not any(valid):
            valid = [True] * len(valid)
        attn_b = torch.zeros(h * w, len(cands))
        for y in range(h):
            for x in range(w):
                q = fgp[ib, :, y:y + k, x:x + k].reshape(-1)
                if similarity == "cosine":
                    s = torch.stack([torch.dot(q, cc.reshape(-1))
                                     / (q.norm().clamp_min(1e-4) * cc.reshape(-1).norm().clamp_min(1e-4))
                                     for cc in cands])
                else:
                    d = torch.stack([((q - cc.reshape(-1)) ** 2).sum() for cc in cands])
                    s = -torch.tanh((d - d.mean()) / d.std(unbiased=False))
                logits = scale * s
                if exclude:
                    logits = torch.where(torch.tensor(valid), logits, torch.tensor(float("-inf")))
                a = torch.softmax(logits, 0)
                attn_b[y * w + x] = a
                for l, cc in enumerate(cands):  # paste the candidate centred on (y, x)
                    for dy in range(k):
                        for dx in range(k):
                            yy, xx = y + dy - p, x + dx - p
                            if 0 <= yy < h and 0 <= xx < w:
                                out[ib, :, yy, xx] += a[l] * cc[:, dy, dx]
        attns.append(attn_b)
    return out / (k * k), torch.stack(attns)


@pytest.mark.parametrize("similarity,exclude,stride", [("cosine", True, 1), ("euclidean", False, 1),
                                                       ("cosine", False, 2)])
def test_cam_matches_brute_force(similarity, exclude, stride):
    torch.manual_seed(0)
    fg = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    hole = torch.zeros(2, 1, 7, 6, dtype=torch.float64)
    hole[0, :, 2:4, 2:5] = 1
    hole[1, :, 4:6, 0:2] = 1
    cam = ContextualAttention(3, stride, scale=10.0, similarity=similarity, exclude_hole_patches=exclude)
    # float64 in: the layer computes scores in float32 at least, so compare at float32 precision
    out, attn = cam(fg.float(), mask=hole.float(), return_attention=True)
    ref_out, ref_attn = brute_force_cam(fg.float(), fg.float(), hole.float(), 3, stride, 10.0, similarity, exclude)
    assert attn.shape == ref_attn.shape
    torch.testing.assert_close(attn, ref_attn, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("similarity,scale", [("cosine", 50.0), ("euclidean", 50.0)])
def test_cam_copies_hole_content_from_where_it_exists(similarity, scale):
    """A hole whose content exists elsewhere in the map is filled from there."""
    torch.manual_seed(1)
    feats = torch.randn(1, 8, 12, 12)
    feats[:, :, 6:11, 6:11] = feats[:, :, 1:6, 1:6]  # region T (rows/cols 6-10) is a copy of S (1-5)
    truth = feats.clone()
    hole = torch.zeros(1, 1, 12, 12)
    hole[:, :, 7:10, 7:10] = 1  # the centre 3x3 of T is missing
    bg = feats.clone()
    cam = ContextualAttention(3, 1, scale=scale, similarity=similarity, exclude_hole_patches=True)
    out, attn = cam(feats, bg, mask=hole, return_attention=True)
    _, cols = cam.candidate_grid(12, 12)
    # the query at the hole centre (8, 8) attends most to the candidate centred at (3, 3)
    best = int(attn[0, 8 * 12 + 8].argmax())
    assert (best // cols + 1, best % cols + 1) == (3, 3)
    if similarity == "cosine":
        torch.testing.assert_close(out[..., 8, 8], truth[..., 8, 8], atol=1e-3, rtol=0)
    else:  # PEPSI's squashed score is softer: nearer to the truth than to any other known value
        err = (out[..., 8, 8] - truth[..., 8, 8]).norm()
        assert err < 0.5 * (truth[..., 8, 8]).norm()


def test_cam_shapes_grad_and_autocast():
    cam = ContextualAttention(3, 1, 10.0)
    x = torch.randn(2, 5, 8, 8, requires_grad=True)
    m = torch.zeros(2, 1, 32, 32)
    m[:, :, 8:16, 8:16] = 1
    out = cam(x, mask=m)  # mask is nearest-resized to the feature size
    assert out.shape == x.shape
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cam(x.detach(), mask=m)
    assert torch.isfinite(y.float()).all()
    with pytest.raises(ValueError, match="odd"):
        ContextualAttention(2)
