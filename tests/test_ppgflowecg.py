"""PPGFlowECG models: shapes, decomposition, flow equivalence to an explicit reference, losses, EMA, conversion."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from tasks.signal import (
    ModelEMA,
    WarmupReduceLROnPlateau,
    cardioalign_loss,
    flow_latents,
    flow_matching_loss,
    gaussian_kl,
    infonce_loss,
    kl_to_standard_normal,
    rectified_flow_loss,
)
from zoo.ppgflowecg import LATENT_SCALE, checkpoint_filter_fn, convert_official_checkpoint


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return zoo.create_model("ppgflowecg_tiny").eval()


def test_registered_and_card():
    for n in ("ppgflowecg_base", "ppgflowecg_tiny", "ecg_resnet1d18", "ecg_resnet1d_tiny"):
        assert zoo.is_model(n)
    card = zoo.model_card("ppgflowecg_base")
    assert "deviations" in card and "GroupNorm" in card


def test_base_param_counts_match_release_minus_unused():
    # third-party count of the released checkpoint; we drop 1,024 unused GroupNorm params per VAE part and the
    # unused text cross-attention branch of the flow (1,579,008)
    with torch.device("meta"):
        m = zoo.create_model("ppgflowecg_base")
    count = {n: sum(p.numel() for p in getattr(m, n).parameters()) for n in ("encoder", "ecg_decoder", "flow")}
    assert count["encoder"] == 96_491_984 - 1024
    assert count["ecg_decoder"] == 110_915_114 - 1024
    assert count["flow"] == 6_857_988 - 4 * (4 * (256 * 256 + 256) + (256 * 512 + 512))


def test_tiny_shapes_and_api(tiny):
    x = torch.randn(3, 1, 256)
    z = tiny.encode(x)
    assert z.shape == (3, 4, 32)
    assert tiny.decode_ecg(z).shape == (3, 1, 256) and tiny.decode_ppg(z).shape == (3, 1, 256)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = tiny.sample_ecg(x, steps=3, generator=g1), tiny.sample_ecg(x, steps=3, generator=g2)
    assert a.shape == (3, 1, 256) and torch.equal(a, b)
    assert torch.equal(tiny.encode(x, sample=False), tiny.encode_dist(x)[0] * LATENT_SCALE)
    with pytest.raises(ValueError, match="expects"):
        tiny.encode(torch.randn(2, 1, 200))


def test_tiny_backward():
    m = zoo.create_model("ppgflowecg_tiny")
    e, p = torch.randn(4, 1, 256), torch.randn(4, 1, 256)
    losses = cardioalign_loss(m, e, p)
    losses["loss"].backward()
    assert all(v.isfinite() for v in losses.values())
    assert m.encoder.blocks[0].weight.grad is not None and m.ppg_decoder.to_latent.weight.grad is not None


def test_decoder_decomposition_matches_manual(tiny):
    dec = tiny.ecg_decoder
    z = torch.randn(2, 4, 32)
    # residual path alone
    x = z / LATENT_SCALE
    for blk in dec.residual:
        x = blk(x)
    v = dec.to_latent(z.reshape(2, -1))
    level = dec.level(v)[:, :, None]
    tp = dec.trend(v).view(2, 1, 2)
    t = torch.arange(256) / 256
    trend = tp[:, :, :1] * t + tp[:, :, 1:] * t ** 2
    sp = dec.seasonal[0](v)  # 2 seasons of 128 samples
    seas = torch.cat([sp[:, None, :1].expand(2, 1, 128), sp[:, None, 1:].expand(2, 1, 128)], -1)
    torch.testing.assert_close(dec(z), x + level + trend + seas, atol=1e-5, rtol=1e-5)


def _reference_flow_forward(sd, x, t, cond, heads):
    """Explicit re-derivation of the reference transformer forward (per-token t averaged, softmax attention)."""
    def conv(h, pre):  # Conv_MLP on tokens (B, T, C)
        return F.conv1d(h.transpose(1, 2), sd[pre + ".weight"], sd[pre + ".bias"], padding=1).transpose(1, 2)

    def lin(h, pre):
        return h @ sd[pre + ".weight"].t() + sd[pre + ".bias"]

    def attn(h, c, pre):
        b, n, d = h.shape
        q = lin(h, pre + ".query").view(b, n, heads, -1).transpose(1, 2)
        k = lin(c, pre + ".key").view(b, -1, heads, d // heads).transpose(1, 2)
        v = lin(c, pre + ".value").view(b, -1, heads, d // heads).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1)
        return lin((a @ v).transpose(1, 2).reshape(b, n, d), pre + ".proj")

    def ada(h, tt, pre):
        d = h.shape[-1]
        half = d // 2
        f = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
        tt = tt.mean(-1)  # per-token t averaged back to a scalar
        e = torch.cat([(tt[:, None] * f).sin(), (tt[:, None] * f).cos()], -1)
        s, sh = lin(F.silu(e), pre + ".linear").chunk(2, -1)
        return F.layer_norm(h, (d,)) * (1 + s[:, None]) + sh[:, None]

    tok = t[:, None].repeat(1, x.shape[1])
    h = conv(x.transpose(1, 2), "model.ecg_emb.sequential.1") + sd["model.pos_enc.pe"]
    c = conv(cond.transpose(1, 2), "model.ecg_emb.sequential.1") + sd["model.pos_enc.pe"]
    i = 0
    while f"model.temporal_encoder.blocks.{i}.ln1.linear.weight" in sd:
        p = f"model.temporal_encoder.blocks.{i}"
        h = h + attn(ada(h, tok, p + ".ln1"), ada(h, tok, p + ".ln1"), p + ".attn")
        hc = ada(h, tok, p + ".ln_cross_1")
        h = h + attn(hc, c, p + ".cross_attn_1")
        m = F.layer_norm(h, (h.shape[-1],), sd[p + ".ln2.weight"], sd[p + ".ln2.bias"])
        h = h + lin(F.gelu(lin(m, p + ".mlp.0")), p + ".mlp.2")
        i += 1
    return conv(h, "model.inverse.sequential.1").transpose(1, 2)


def _official_flow_state_dict(depth, dim, n_lat=4, length=32, seed=0):
    """A random state dict in the reference RectifiedFlow key layout (incl. the unused text branch)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g) * 0.1

    sd = {"model.ecg_emb.sequential.1.weight": r(dim, n_lat, 3), "model.ecg_emb.sequential.1.bias": r(dim),
          "model.inverse.sequential.1.weight": r(n_lat, dim, 3), "model.inverse.sequential.1.bias": r(n_lat),
          "model.pos_enc.pe": r(1, length, dim)}
    for i in range(depth):
        p = f"model.temporal_encoder.blocks.{i}"
        for ln in ("ln1", "ln_cross_1", "ln_cross_2"):
            sd[f"{p}.{ln}.linear.weight"], sd[f"{p}.{ln}.linear.bias"] = r(2 * dim, dim), r(2 * dim)
        sd[f"{p}.ln2.weight"], sd[f"{p}.ln2.bias"] = 1 + r(dim), r(dim)
        for a in ("attn", "cross_attn_1", "cross_attn_2"):
            for proj in ("key", "query", "value", "proj"):
                sd[f"{p}.{a}.{proj}.weight"], sd[f"{p}.{a}.{proj}.bias"] = r(dim, dim), r(dim)
        sd[f"{p}.mlp.0.weight"], sd[f"{p}.mlp.0.bias"] = r(4 * dim, dim), r(4 * dim)
        sd[f"{p}.mlp.2.weight"], sd[f"{p}.mlp.2.bias"] = r(dim, 4 * dim), r(dim)
    return sd


def _official_vae_state_dict(model, seed=1):
    """Stage-1 checkpoint in the reference layout: module lists `blocks` / `residual_decoder.blocks`, plain stride-2
    convolutions, attention blocks holding `groupnorm` (unused) and `attention.in_proj/out_proj`, TimeVAE names."""
    from zoo.layers.signal_blocks import Downsample1d, SignalSelfAttentionBlock

    g = torch.Generator().manual_seed(seed)

    def blocks(mods, prefix):
        sd = {}
        for i, m in enumerate(mods):
            for k, v in m.state_dict().items():
                if isinstance(m, Downsample1d):
                    k = k.removeprefix("conv.")
                if isinstance(m, SignalSelfAttentionBlock):
                    k = "attention." + k
                sd[f"{prefix}.{i}.{k}"] = torch.randn(v.shape, generator=g) * 0.05
            if isinstance(m, SignalSelfAttentionBlock):
                c = m.out_proj.weight.shape[0]
                sd[f"{prefix}.{i}.groupnorm.weight"], sd[f"{prefix}.{i}.groupnorm.bias"] = torch.ones(c), torch.zeros(c)
        return sd

    def decoder(dec):
        sd = blocks(dec.residual, "residual_decoder.blocks")
        names = {"to_latent": dec.to_latent, "level_model.level_dense1": dec.level[0],
                 "level_model.level_dense2": dec.level[2], "trend_layer.trend_dense1": dec.trend[0],
                 "trend_layer.trend_dense2": dec.trend[2], "seasonal_layer.dense_layers.0": dec.seasonal[0]}
        for n, lin in names.items():
            sd[f"{n}.weight"] = torch.randn(lin.weight.shape, generator=g) * 0.05
            sd[f"{n}.bias"] = torch.randn(lin.bias.shape, generator=g) * 0.05
        return sd

    enc = blocks(model.encoder.blocks, "blocks")
    return {"encoder_ecg": enc, "encoder_ppg": enc, "decoder_ecg": decoder(model.ecg_decoder),
            "decoder_ppg": decoder(model.ppg_decoder), "iteration": 10,
            "hparams": {"kld_weight": 1e-4, "lambda_align": 1e-2, "lambda_cross": 5e-4, "lambda_infonce": 1e-3}}


def test_flow_matches_reference_forward_after_conversion():
    m = zoo.create_model("ppgflowecg_tiny").eval()
    sd = _official_flow_state_dict(depth=2, dim=32)
    ours = checkpoint_filter_fn(sd, m)
    missing, unexpected = m.load_state_dict(ours, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("flow.")]
    x, c, t = torch.randn(3, 4, 32), torch.randn(3, 4, 32), torch.rand(3)
    torch.testing.assert_close(m.flow(x, t, c), _reference_flow_forward(sd, x, t, c, heads=2), atol=1e-5, rtol=1e-4)


def test_convert_official_checkpoint_both_stages(tmp_path):
    m = zoo.create_model("ppgflowecg_tiny")
    s1 = _official_vae_state_dict(m)
    online = _official_flow_state_dict(depth=2, dim=32, seed=3)
    ema = {"initted": torch.tensor(True), "step": torch.tensor(5),
           **{f"ema_model.{k}": v + 1.0 for k, v in online.items()}}
    torch.save(s1, tmp_path / "VAE-iter-10.pth")
    torch.save({"step": 10, "model": online, "ema": ema, "opt": {}}, tmp_path / "checkpoint-1.pt")
    target = zoo.create_model("ppgflowecg_tiny")
    conv = convert_official_checkpoint(tmp_path / "VAE-iter-10.pth", tmp_path / "checkpoint-1.pt", model=target,
                                       output=tmp_path / "converted")
    assert torch.equal(conv.encoder.blocks[0].weight, s1["encoder_ecg"]["blocks.0.weight"])
    assert torch.equal(conv.encoder.blocks[3].conv.weight, s1["encoder_ecg"]["blocks.3.weight"])  # stride-2 conv
    att = next(i for i, b in enumerate(conv.encoder.blocks) if type(b).__name__ == "SignalSelfAttentionBlock")
    ref_key = f"blocks.{att}.attention.in_proj.weight"
    assert torch.equal(conv.encoder.blocks[att].in_proj.weight, s1["encoder_ecg"][ref_key])
    assert torch.equal(conv.ppg_decoder.seasonal[0].weight, s1["decoder_ppg"]["seasonal_layer.dense_layers.0.weight"])
    assert torch.equal(conv.ecg_decoder.level[2].bias, s1["decoder_ecg"]["level_model.level_dense2.bias"])
    # EMA weights are the default for stage 2
    assert torch.equal(conv.flow.pos_embed, online["model.pos_enc.pe"] + 1.0)
    assert torch.equal(conv.flow.blocks[1].cross_attn.key.weight,
                       online["model.temporal_encoder.blocks.1.cross_attn_1.key.weight"] + 1.0)
    # the saved folder and create_model(checkpoint_path=reference .pth) round-trip
    back = zoo.create_model("local-dir:" + str(tmp_path / "converted"))
    for k, v in conv.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    # the family reader keeps the reference checkpoint's EMA entry (load_state_dict_file would unwrap 'model')
    from zoo.ppgflowecg import load_weights

    via_reader = load_weights(zoo.create_model("ppgflowecg_tiny"), tmp_path / "checkpoint-1.pt", strict=False)
    torch.testing.assert_close(via_reader.flow.state_dict(), conv.flow.state_dict(), rtol=0, atol=0)
    online_only = load_weights(zoo.create_model("ppgflowecg_tiny"), tmp_path / "checkpoint-1.pt", use_ema=False,
                               strict=False)
    assert torch.equal(online_only.flow.pos_embed, online["model.pos_enc.pe"])
    via_factory = zoo.create_model("ppgflowecg_tiny")
    zoo.load_checkpoint(via_factory, tmp_path / "VAE-iter-10.pth", strict=False)
    assert torch.equal(via_factory.ecg_decoder.to_latent.weight, s1["decoder_ecg"]["to_latent.weight"])
    with pytest.raises(ValueError, match="lacks|do not fit"):
        bad = dict(s1)
        bad["decoder_ecg"] = {k: v for k, v in s1["decoder_ecg"].items() if not k.startswith("to_latent")}
        torch.save(bad, tmp_path / "bad.pth")
        convert_official_checkpoint(tmp_path / "bad.pth", model=zoo.create_model("ppgflowecg_tiny"))


def test_save_pretrained_roundtrip(tmp_path, tiny):
    zoo.save_pretrained(tiny, tmp_path / "m")
    back = zoo.create_model("local-dir:" + str(tmp_path / "m"))
    x = torch.randn(2, 1, 256)
    torch.testing.assert_close(back.encode(x, sample=False), tiny.encode(x, sample=False))


# ------------------------------------------------------------------------------------------------ losses
def test_alignment_losses_zero_for_identical_inputs():
    mu, lv = torch.randn(4, 4, 32), torch.randn(4, 4, 32) * 0.3
    assert gaussian_kl(mu, lv, mu, lv).abs() < 1e-6
    m = zoo.create_model("ppgflowecg_tiny")
    x = torch.randn(4, 1, 256)
    out = cardioalign_loss(m, x, x, lambda_cross=0.0)
    assert out["align"].abs() < 1e-6  # same input → same posterior → L2 + symmetric KL vanish


def test_kl_terms_against_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    mu, lv, mu2, lv2 = (torch.randn(3, 4, 10) for _ in range(4))
    ref = kl_divergence(Normal(mu, (0.5 * lv).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1).mean()
    torch.testing.assert_close(kl_to_standard_normal(mu, lv), ref)
    ref2 = kl_divergence(Normal(mu, (0.5 * lv).exp()), Normal(mu2, (0.5 * lv2).exp())).sum(-1).mean()
    torch.testing.assert_close(gaussian_kl(mu, lv, mu2, lv2), ref2)


def test_infonce_perfect_alignment_is_low():
    a = torch.eye(8)[:, None].repeat(1, 4, 1) * 10  # (8, 4, 8): distinct rows after channel pooling
    assert infonce_loss(a, a) < 1e-3
    assert infonce_loss(a, a.roll(1, 0)) > 5


def test_flow_loss_and_sampler(tiny):
    z, c = torch.randn(4, 4, 32), torch.randn(4, 4, 32)
    loss = rectified_flow_loss(tiny.flow, z, c, num_draws=2)
    assert loss.isfinite() and loss > 0

    class Exact(torch.nn.Module):  # the exact velocity of the straight path from x0 to target
        def __init__(self, x0, target):
            super().__init__()
            self.x0, self.target = x0, target

        def forward(self, x, t, cond):
            return self.target - self.x0

    x0, target = torch.randn(2, 4, 32), torch.randn(2, 4, 32)
    from zoo.ppgflowecg import euler_sample

    out = euler_sample(Exact(x0, target), c[:2], steps=3, noise=x0.clone())
    torch.testing.assert_close(out, target)  # straight paths are integrated exactly by Euler
    assert tiny.sample_latent(c, steps=3).shape == (4, 4, 32)
    # a perfect velocity field has zero rectified-flow loss
    zero = rectified_flow_loss(lambda x, t, cc: torch.zeros_like(x), torch.zeros(2, 4, 32), c[:2], 1)
    assert zero > 0.5  # E|eps|^2 = 1 with a zero field


def test_batched_flow_loss_equals_the_per_draw_loop(tiny):
    """One forward over the draws stacked equals the reference's loop of one forward per draw (same t and ε)."""
    torch.manual_seed(1)
    z, c = torch.randn(3, 4, 32), torch.randn(3, 4, 32)
    t, eps = torch.rand(4, 3), torch.randn(4, 3, 4, 32)
    loop = sum(F.mse_loss(tiny.flow((1 - t[i].view(-1, 1, 1)) * eps[i] + t[i].view(-1, 1, 1) * z, t[i], c),
                          z - eps[i]) for i in range(4)) / 4
    batched = flow_matching_loss(tiny.flow, z, c, t, eps)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-6)
    calls = []
    flow_matching_loss(lambda x, tt, cc: calls.append((x.shape, tt.shape, cc.shape)) or x, z, c, t, eps)
    assert calls == [((12, 4, 32), (12,), (12, 4, 32))]  # one call, draw-major
    # rectified_flow_loss draws all t (D, B), then all ε (D, B, ...): documented order of the random stream
    g = torch.Generator().manual_seed(5)
    t2, eps2 = torch.rand(4, 3, generator=g), torch.randn(4, 3, 4, 32, generator=g)
    got = rectified_flow_loss(tiny.flow, z, c, 4, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, flow_matching_loss(tiny.flow, z, c, t2, eps2))


def test_flow_latents_one_encoder_pass_equals_two(tiny):
    ecg, ppg = torch.randn(2, 1, 256), torch.randn(2, 1, 256)
    noise = torch.randn(4, 4, 32)
    with torch.no_grad():
        z, c = flow_latents(tiny.encoder, ecg, ppg, noise=noise)
        torch.testing.assert_close(z, tiny.reparameterize(*tiny.encoder(ecg), noise=noise[:2]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, tiny.reparameterize(*tiny.encoder(ppg), noise=noise[2:]), rtol=1e-5, atol=1e-6)
        z0, _ = flow_latents(tiny.encoder, ecg, ppg, sample=False)
        torch.testing.assert_close(z0, tiny.encode(ecg, sample=False), rtol=1e-5, atol=1e-6)


def _ema_pytorch_reference(values, beta=0.995, update_after_step=100, update_every=10, inv_gamma=1.0, power=2 / 3):
    """ema-pytorch 0.7.7 ``EMA.update()`` on a scalar online weight that takes ``values`` in turn (written from its
    source: ``step`` read then incremented; first call initialises; ``get_current_decay`` uses the incremented step)."""
    step, avg, decays = 0, None, []
    for v in values:
        s = step
        step += 1
        if avg is None:
            avg = v
            continue
        if s % update_every:
            continue
        if s <= update_after_step:
            avg = v
            continue
        epoch = max(step - update_after_step - 1, 0)
        d = 0.0 if epoch <= 0 else min(max(1 - (1 + epoch / inv_gamma) ** -power, 0.0), beta)
        decays.append(d)
        avg = avg + (v - avg) * (1 - d)  # tensor.lerp_(online, 1 - decay)
    return avg, decays


def test_ema_warmup_decay_matches_ema_pytorch():
    ema = ModelEMA(torch.nn.Linear(1, 1), decay=0.995, every=10, start=100)
    for step in (0, 1, 100, 101):
        assert ema.current_decay(step) == 0.0  # epoch = step - 101 <= 0: ema-pytorch returns 0 (a copy)
    assert ema.current_decay(102) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema.current_decay(111) == pytest.approx(1 - 11 ** (-2 / 3))  # the first real average: 0.798
    assert ema.current_decay(111) == pytest.approx(0.79782, abs=1e-5)
    assert ema.current_decay(1101) == pytest.approx(1 - 1001 ** (-2 / 3))
    assert ema.current_decay(2928) < 0.995 == ema.current_decay(2930) == ema.current_decay(10_000)  # the cap
    assert ModelEMA(torch.nn.Linear(1, 1), inv_gamma=2.0, power=0.5).current_decay(111) == pytest.approx(
        1 - (1 + 10 / 2.0) ** -0.5)
    assert ModelEMA(torch.nn.Linear(1, 1), warmup=False).current_decay(111) == 0.995
    # the averaged weight along a run equals ema-pytorch's on the same online sequence
    lin = torch.nn.Linear(1, 1, bias=False).double()
    ema = ModelEMA(lin, decay=0.995, every=10, start=100)
    values = [float(v) for v in torch.linspace(0, 5, 400).double() ** 2]
    for v in values:
        with torch.no_grad():
            lin.weight.fill_(v)
        ema.step(lin)
    ref, decays = _ema_pytorch_reference(values)
    assert ema.module.weight.item() == pytest.approx(ref, rel=1e-12)
    assert decays[0] == pytest.approx(1 - 11 ** (-2 / 3)) and len(decays) == 29  # s = 110, 120, ..., 390


def test_ema_count_is_host_side_and_survives_state_dict():
    lin = torch.nn.Linear(3, 3)
    ema = ModelEMA(lin, decay=0.5, every=1, start=2)
    for _ in range(5):
        ema.step(lin)
    assert ema.steps == 5 and int(ema.num_steps) == 0  # stepping never touches the buffer
    sd = ema.state_dict()
    assert int(sd["num_steps"]) == 5
    fresh = ModelEMA(torch.nn.Linear(3, 3), decay=0.5, every=1, start=2)
    fresh.load_state_dict(sd)
    assert fresh.steps == 5
    torch.testing.assert_close(fresh.module.weight, ema.module.weight)
    # past `start` the fresh copy averages (it does not copy) on its next step, like the original
    with torch.no_grad():
        lin.weight.add_(2.0)
    before = fresh.module.weight.clone()
    fresh.step(lin)
    torch.testing.assert_close(fresh.module.weight, 0.5 * before + 0.5 * lin.weight)
    with pytest.raises(ValueError, match="does not match"):
        fresh.step(torch.nn.Linear(3, 4))


def test_ema_update_and_schedule():
    lin = torch.nn.Linear(3, 3)
    ema = ModelEMA(lin, decay=0.9, every=2, start=2, warmup=False)  # constant decay
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.step(lin)  # call 1: initialise = copy (ema-pytorch's first update)
    assert torch.equal(ema.module.weight, lin.weight)
    with torch.no_grad():
        lin.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.step(lin)  # 1 earlier call, 1 % 2 != 0: nothing
    assert torch.equal(ema.module.weight, before)
    ema.step(lin)  # 2 earlier calls <= start: copy
    assert torch.equal(ema.module.weight, lin.weight)
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.step(lin)  # 3: nothing
    ema.step(lin)  # 4 > start: average with the constant decay
    torch.testing.assert_close(ema.module.weight, 0.9 * (lin.weight - 1.0) + 0.1 * lin.weight)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-4)
    s = WarmupReduceLROnPlateau(opt, warmup_lr=8e-4, warmup=4, factor=0.5, patience=2)
    for _ in range(4):
        s.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(8e-4)
    for _ in range(4):
        s.step(1.0)  # plateau
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-4)


def test_classifier_shapes():
    m = zoo.create_model("ecg_resnet1d_tiny", num_classes=3)
    y = m(torch.randn(2, 1, 256))
    assert y.shape == (2, 3)
    y.sum().backward()
    assert zoo.create_model("ecg_resnet1d18", num_classes=5, in_chans=12)(torch.randn(1, 12, 1280)).shape == (1, 5)


@pytest.mark.slow
def test_base_forward_and_official_layout_full_size(tmp_path):
    m = zoo.create_model("ppgflowecg_base").eval()
    x = torch.randn(1, 1, 1280)
    with torch.no_grad():
        assert m.encode(x).shape == (1, 4, 40)
        assert m.sample_ecg(x, steps=2).shape == (1, 1, 1280)
    s1 = _official_vae_state_dict(m)
    assert sum(v.numel() for v in s1["encoder_ecg"].values()) == 96_491_984
    assert sum(v.numel() for v in s1["decoder_ecg"].values()) == 110_915_114
    assert sum(v.numel() for v in _official_flow_state_dict(4, 256, length=40).values()) == 6_857_988


def test_conv1d_as_conv2d_same_outputs_keys_and_round_trips():
    import copy
    import pickle

    from zoo.ppgflowecg import Conv1dAs2d, conv1d_as_conv2d

    torch.manual_seed(0)
    ref = zoo.create_model("ppgflowecg_tiny").eval()
    net = conv1d_as_conv2d(copy.deepcopy(ref))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv1d)]
    assert convs and all(type(m) is Conv1dAs2d for m in convs)
    assert list(net.state_dict()) == list(ref.state_dict())
    x = torch.randn(3, 1, ref.seq_len)
    with torch.no_grad():
        mean_ref, _ = ref.encode_dist(x)
        mean, _ = net.encode_dist(x)
        torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net.decode_ecg(mean), ref.decode_ecg(mean_ref), rtol=1e-5, atol=1e-5)
    # a strided, padded convolution (the down-sampling ones) agrees too, with gradients
    conv = nn.Conv1d(4, 6, 15, stride=2, padding=7)
    conv2 = conv1d_as_conv2d(copy.deepcopy(conv))
    x = torch.randn(2, 4, 50, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    conv(x).square().sum().backward()
    conv2(x2).square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(conv2.weight.grad, conv.weight.grad)
    # pickles (checkpoints of whole modules, spawn) and switches back
    again = pickle.loads(pickle.dumps(net))
    assert type(again.encoder.blocks[0]) is Conv1dAs2d
    conv1d_as_conv2d(net, enable=False)
    assert not any(type(m) is Conv1dAs2d for m in net.modules())


@pytest.mark.parametrize("flag", [True, False])
def test_tasks_run_convs_as_2d_only_when_compiling(flag):
    from tasks.signal import CardioAlignTask, ECGFlowTask
    from zoo.ppgflowecg import Conv1dAs2d

    def n2d(module):
        return sum(type(m) is Conv1dAs2d for m in module.modules())

    for cls in (CardioAlignTask, ECGFlowTask):
        eager = cls(model="ppgflowecg_tiny")
        eager.configure_model()
        assert n2d(eager.net) == 0
        compiled = cls(model="ppgflowecg_tiny", compile=True, conv1d_as_conv2d=flag)  # torch.compile is lazy
        compiled.configure_model()
        if cls is CardioAlignTask:
            assert (n2d(compiled.net) > 0) is flag and n2d(compiled.net.flow) == 0
        else:  # stage 2 compiles the frozen encoder and the flow; the decoders stay eager
            assert (n2d(compiled.net.encoder) > 0) is flag and n2d(compiled.net.ecg_decoder) == 0


def test_cardioalign_batched_forward_equals_separate_calls():
    """One encoder call on ECG+PPG and one call per decoder on (own latent, other's detached latent) give the same
    outputs and gradients as the separate calls, and no gradient reaches the encoder through the cross terms."""
    from zoo.ppgflowecg import PPGFlowECG

    torch.manual_seed(0)
    net = zoo.create_model("ppgflowecg_tiny")
    ecg, ppg = torch.randn(3, 1, net.seq_len), torch.randn(3, 1, net.seq_len)
    mean_e, logvar_e = net.encode_dist(ecg)
    mean_p, logvar_p = net.encode_dist(ppg)
    ne, np_ = torch.randn_like(mean_e), torch.randn_like(mean_p)
    z_e = PPGFlowECG.reparameterize(mean_e, logvar_e, noise=ne)
    z_p = PPGFlowECG.reparameterize(mean_p, logvar_p, noise=np_)
    ref = {"mean_ecg": mean_e, "logvar_ppg": logvar_p, "z_ppg": z_p, "recon_ecg": net.decode_ecg(z_e),
           "recon_ppg": net.decode_ppg(z_p), "cross_ecg": net.decode_ecg(z_p.detach()),
           "cross_ppg": net.decode_ppg(z_e.detach())}
    out = net.cardioalign(ecg, ppg, noise=(ne, np_), cross=True)
    for k, v in ref.items():
        torch.testing.assert_close(getattr(out, k), v, rtol=1e-5, atol=1e-6, msg=k)
    assert net.cardioalign(ecg, ppg, noise=(ne, np_)).cross_ecg is None

    def grads(cross_ecg, cross_ppg):
        net.zero_grad(set_to_none=True)
        (cross_ecg.square().mean() + cross_ppg.square().mean()).backward(retain_graph=True)
        return {n: (p.grad.clone() if p.grad is not None else None) for n, p in net.named_parameters()}

    g_ref, g_out = grads(ref["cross_ecg"], ref["cross_ppg"]), grads(out.cross_ecg, out.cross_ppg)
    for n, g in g_ref.items():
        if n.startswith("encoder."):
            assert g is None, n  # the cross terms never reach the encoder: None apart, zero when batched
            assert g_out[n] is None or not g_out[n].any(), n
        elif g is not None:
            torch.testing.assert_close(g_out[n], g, rtol=1e-4, atol=1e-6, msg=n)
