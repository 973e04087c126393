"""PEPSI / Diet-PEPSI generators and the RED discriminator: shapes, paths, RADC sharing, SN, round trips."""
import numpy as np
import pytest
import torch

import zoo
from zoo.pepsi import PEPSI, RateAdaptiveDilatedConv, RegionEnsembleDiscriminator, convert_official_checkpoint


def _batch(b=2, size=32):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    m = torch.zeros(b, 1, size, size)
    m[:, :, size // 4: size // 2 + 2, size // 4: 3 * size // 4] = 1
    return x, m


@pytest.mark.parametrize("name", ["pepsi_tiny", "diet_pepsi_tiny"])
def test_generator_shapes_paths_backward(name):
    g = zoo.create_model(name)
    x, m = _batch()
    out = g(x, m)  # training mode: both paths
    assert out.inpainted.shape == out.coarse.shape == out.composite.shape == x.shape
    assert out.inpainted.abs().max() <= 1.0 and out.coarse.abs().max() <= 1.0
    known = m.expand_as(x) == 0
    assert torch.equal(out.composite[known], x[known])  # the composite keeps every known pixel exactly
    # pixels under the hole do not matter
    x2 = torch.where(known, x, torch.randn_like(x))
    torch.testing.assert_close(g(x2, m).inpainted, out.inpainted)
    loss = (out.inpainted - x).abs().mean() + (out.coarse - x).abs().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters())
    g.eval()
    with torch.no_grad():
        ev = g(x, m, return_attention=True)
    assert ev.coarse is None  # inference runs encoder -> CAM -> decoder only
    assert ev.attention.shape == (2, 4 * 4, 2 * 2)  # 4x4 features, (4-3+1)^2 candidates
    assert g(x, m, with_coarse=True).coarse is not None


def test_both_paths_share_one_decoder():
    g = zoo.create_model("pepsi_tiny")
    x, m = _batch()
    out = g(x, m)
    (out.coarse - x).abs().mean().backward()  # the coarse path alone: encoder + decoder, no CAM
    assert g.decoder.to_rgb.weight.grad.abs().sum() > 0
    assert g.encoder.convs[0].weight.grad.abs().sum() > 0
    assert g.cam.fuse.weight.grad is None
    assert sum(1 for n, _ in g.named_modules() if n.endswith("decoder")) == 1


def test_odd_sizes_and_bad_masks_rejected():
    g = zoo.create_model("pepsi_tiny")
    x, m = _batch()
    with pytest.raises(ValueError, match="mask"):
        g(x, m[:, :, :16])
    with pytest.raises(ValueError, match="divisible by 8"):
        g(torch.zeros(1, 3, 36, 36), torch.zeros(1, 1, 36, 36))


def test_radc_one_weight_serves_all_rates():
    radc = RateAdaptiveDilatedConv(6, rates=(1, 2, 3), padding_mode="reflect")
    weights = [n for n, p in radc.named_parameters() if p.dim() == 4]
    assert weights == ["weight"]  # a single convolution weight tensor
    x = torch.randn(1, 6, 10, 10)
    feats = [radc.forward_rate(x, i) for i in range(3)]
    assert not torch.allclose(feats[0], feats[1]) and not torch.allclose(feats[1], feats[2])
    # each rate's output depends on the shared weight
    for i in range(3):
        radc.zero_grad()
        radc.forward_rate(x, i).square().mean().backward()
        assert radc.weight.grad.abs().sum() > 0
        assert radc.scale.grad[i].abs().sum() > 0
        assert all(radc.scale.grad[j].abs().sum() == 0 for j in range(3) if j != i)
    # the rate-specific scale/shift change that rate's features only
    with torch.no_grad():
        before = [radc.forward_rate(x, i) for i in range(3)]
        radc.scale[1].mul_(2.0)
        radc.shift[1].add_(0.5)
        after = [radc.forward_rate(x, i) for i in range(3)]
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    torch.testing.assert_close(after[1], before[1] * 2 + 0.5, rtol=1e-5, atol=1e-5)


def test_diet_pepsi_shares_the_dilated_weights():
    p, d = zoo.count_params("pepsi"), zoo.count_params("diet_pepsi")
    c = 256
    assert p - d == 4 * (9 * c * c + c) - (9 * c * c + 2 * 4 * c)
    assert p == 3_656_947  # the official code's shapes: 2.94M encoder + 0.59M decoder + 0.13M CAM 1x1
    assert zoo.model_card_dict("pepsi")["reported_params_m"] == 3.66
    devs = " ".join(zoo.model_card_dict("pepsi")["deviations"])
    assert "bf16-mixed" in devs and "test_mask256" in devs  # precision and evaluation-mask deviations
    g = zoo.create_model("diet_pepsi_tiny")
    assert isinstance(g.encoder.dilated, RateAdaptiveDilatedConv)
    assert g.encoder.dilated.weight.shape == (64, 64, 3, 3)


def test_red_discriminator_regions_and_spectral_norm():
    d = zoo.create_model("pepsi_red_tiny")
    x, _ = _batch()
    assert d(x).shape == (2, 1, 4, 4)
    for _ in range(30):  # power iterations run in training-mode forwards
        d(x)
    for conv in d.convs:
        w = conv.weight.detach().reshape(conv.weight.shape[0], -1)
        assert abs(torch.linalg.matrix_norm(w, ord=2).item() - 1.0) < 0.05
    torch.testing.assert_close(d.region_weight.norm(dim=1), torch.ones(16))
    # every region has its own head: the score of cell (0, 0) only reaches row 0 of the region weights
    d.zero_grad()
    d(x)[:, 0, 0, 0].sum().backward()
    g = d.parametrizations.region_weight.original.grad
    assert g[0].abs().sum() > 0 and g[1:].abs().sum() == 0
    with pytest.raises(ValueError, match="input_size"):
        d(torch.zeros(1, 3, 64, 64))
    assert zoo.create_model("pepsi_red_tiny", input_size=64)(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 8, 8)
    assert zoo.count_params("pepsi_red") == 7_592_080


def test_red_region_head_init_is_tf_xavier_on_the_upstream_kernel():
    """TF's xavier_initializer on the upstream [cells, 1, C, 1] kernel: fan_in = C*cells, fan_out = cells, so
    U(-b, b) with b = sqrt(6 / (cells * (C + 1))) (std b / sqrt(3)); the old fan_in = C, fan_out = cells bound was
    ~4x larger."""
    torch.manual_seed(0)
    for name, cells, c in (("pepsi_red", 16, 512), ("pepsi_red_tiny", 16, 32)):
        w = zoo.create_model(name).parametrizations.region_weight.original.detach()
        assert w.shape == (cells, c)
        bound = (6.0 / (cells * c + cells)) ** 0.5
        assert w.abs().max() <= bound
        tol = 0.03 if w.numel() > 4000 else 0.12  # sampling error of the std: ~1/sqrt(2n)
        assert abs(w.std().item() / (bound / 3 ** 0.5) - 1) < tol, (name, w.std().item(), bound / 3 ** 0.5)


def test_spectral_norm_power_iteration_runs_in_float32_under_autocast():
    """The discriminator's spectral norm ignores autocast: the power iteration and sigma run with autocast off
    (torch.mv is a bf16 op under CUDA autocast) and give the float32 result bit for bit."""
    from zoo.pepsi import _SpectralNormFP32

    d = zoo.create_model("pepsi_red_tiny")
    sn = d.convs[0].parametrizations.weight[0]
    assert isinstance(sn, _SpectralNormFP32)
    assert {"convs.0.parametrizations.weight.0._u", "convs.0.parametrizations.weight.0._v"} <= set(d.state_dict())
    seen = []
    power = sn._power_method

    def spy(*a, **k):
        seen.append(torch.is_autocast_enabled("cpu"))
        return power(*a, **k)

    sn._power_method = spy
    ref = {k: v.clone() for k, v in d.state_dict().items()}
    w_ref = d.convs[0].weight  # float32 forward: one power iteration
    d.load_state_dict(ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w_amp = d.convs[0].weight
        x, _ = _batch()
        assert d(x).shape == (2, 1, 4, 4)  # the whole discriminator runs under autocast
    assert len(seen) >= 3 and not any(seen)  # autocast was off inside every power iteration (torch's: on)
    assert w_amp.dtype == torch.float32
    torch.testing.assert_close(w_amp, w_ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["pepsi_tiny", "diet_pepsi_tiny", "pepsi_red_tiny"])
def test_safetensors_round_trip(name, tmp_path):
    m = zoo.create_model(name).eval()
    zoo.save_pretrained(m, tmp_path / name)
    m2 = zoo.create_model(f"local-dir:{tmp_path / name}").eval()
    x, mask = _batch()
    with torch.no_grad():
        a = m(x, mask).composite if isinstance(m, PEPSI) else m(x)
        b = m2(x, mask).composite if isinstance(m2, PEPSI) else m2(x)
    torch.testing.assert_close(a, b)


def _to_tf_layout(g: PEPSI, d: RegionEnsembleDiscriminator, rng) -> dict:
    """Write our weights the way the official TF code names and shapes them (HWIO, Conv/Conv_1/..., l1w/l1wu)."""
    tf = {}
    enc = list(g.encoder.convs) + list(g.encoder.dilated.convs)
    dec = [c for st in g.decoder.stages for c in st] + [g.decoder.to_rgb]
    for scope, convs in (("G_en", enc), ("G_de", dec)):
        for i, c in enumerate(convs):
            name = f"{scope}/Conv" + ("" if i == 0 else f"_{i}")
            tf[f"{name}/weights"] = c.weight.detach().permute(2, 3, 1, 0).numpy()
            tf[f"{name}/biases"] = c.bias.detach().numpy()
    tf["CB1/ML/weights"] = g.cam.fuse.weight.detach().permute(2, 3, 1, 0).numpy()
    tf["CB1/ML/biases"] = g.cam.fuse.bias.detach().numpy()
    for i, c in enumerate(d.convs):
        w = c.parametrizations.weight.original.detach()
        tf[f"disc_red/l{i + 1}w"] = w.permute(2, 3, 1, 0).numpy()
        tf[f"disc_red/l{i + 1}b"] = c.bias.detach().numpy()
        tf[f"disc_red/l{i + 1}wu"] = rng.standard_normal((1, w.shape[0])).astype(np.float32)
    n = len(d.convs) + 1
    cells, ch = d.parametrizations.region_weight.original.shape
    tf[f"disc_red/l{n}_w"] = rng.standard_normal((cells, 1, ch, 1)).astype(np.float32)
    tf[f"disc_red/l{n}_b"] = rng.standard_normal((1, d.grid, d.grid, 1)).astype(np.float32)
    return tf


def test_convert_official_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    g, d = zoo.create_model("pepsi_tiny").eval(), zoo.create_model("pepsi_red_tiny").eval()
    tf = _to_tf_layout(g, d, rng)
    np.savez(tmp_path / "pepsi_tf.npz", **{k.replace("/", "|"): v for k, v in tf.items()})
    conv = convert_official_checkpoint(tmp_path / "pepsi_tf.npz")
    g2, d2 = zoo.create_model("pepsi_tiny").eval(), zoo.create_model("pepsi_red_tiny").eval()
    g2.load_state_dict(conv["generator"])
    d2.load_state_dict(conv["discriminator"])
    x, m = _batch()
    with torch.no_grad():
        torch.testing.assert_close(g2(x, m).inpainted, g(x, m).inpainted)
    # TF's spectral norm: one power iteration from the stored u on the (k*k*in, out) reshaped weight
    for i, c in enumerate(d2.convs):
        w = tf[f"disc_red/l{i + 1}w"].reshape(-1, tf[f"disc_red/l{i + 1}w"].shape[-1])
        u = tf[f"disc_red/l{i + 1}wu"]
        v = u @ w.T
        v /= np.linalg.norm(v) + 1e-12
        u2 = v @ w
        u2 /= np.linalg.norm(u2) + 1e-12
        sigma_tf = (v @ w @ u2.T).item()
        eff = c.weight.detach()  # eval mode: original / sigma with the converted u, v
        ratio = (c.parametrizations.weight.original / eff).mean().item()
        assert abs(ratio - sigma_tf) / sigma_tf < 1e-4
    # the RED head: TF adds the per-cell bias to every channel, then sums channels
    feats = torch.randn(1, 32, 4, 4)
    w_tf, b_tf = tf["disc_red/l4_w"], tf["disc_red/l4_b"]
    wn = w_tf / np.linalg.norm(w_tf, axis=2, keepdims=True)
    ref = (feats.numpy().transpose(0, 2, 3, 1) * wn.reshape(4, 4, 32)[None] + b_tf).sum(-1)
    ours = (feats * d2.region_weight.t().reshape(1, 32, 4, 4)).sum(1) + d2.region_bias.view(1, 4, 4)
    np.testing.assert_allclose(ours.detach().numpy(), ref, rtol=1e-4, atol=1e-4)
    # create_model(checkpoint_path=...) remaps TF names through checkpoint_filter_fn
    from safetensors.torch import save_file
    save_file({k: torch.as_tensor(v).contiguous() for k, v in tf.items()}, str(tmp_path / "tf_named.safetensors"))
    g3 = zoo.create_model("pepsi_tiny", checkpoint_path=tmp_path / "tf_named.safetensors").eval()
    with torch.no_grad():
        torch.testing.assert_close(g3(x, m).inpainted, g(x, m).inpainted)
    with pytest.raises(ValueError, match="Diet-PEPSI"):
        convert_official_checkpoint(tf, rate_adaptive=True)


@pytest.mark.parametrize("hw", [(64, 64), (33, 50), (7, 8)])
@pytest.mark.parametrize("k", [3, 5])
def test_discriminator_padding_is_tensorflow_same(hw, k):
    """timm's pad_same (used by the RED discriminator) == TensorFlow 'SAME' padding written out: out = ceil(in / s),
    total pad = (out - 1) * s + k - in, the extra pixel at the bottom/right."""
    from timm.layers import pad_same

    x = torch.randn(1, 2, *hw)
    pads = []
    for n in hw:
        total = max((-(-n // 2) - 1) * 2 + k - n, 0)
        pads.append((total // 2, total - total // 2))
    ref = torch.nn.functional.pad(x, (*pads[1], *pads[0]))
    torch.testing.assert_close(pad_same(x, (k, k), (2, 2)), ref, rtol=0, atol=0)
    assert torch.nn.functional.conv2d(ref, torch.ones(1, 2, k, k), stride=2).shape[-2:] == tuple(-(-n // 2) for n in hw)
