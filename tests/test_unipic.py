"""UniPic model: the spec's must-not-miss items, the DiffLoss diffusion against diffusers, checkpoint conversion."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo import unipic
from zoo.unipic_mar import (
    MAR_KL16_VAE,
    TokenDiffusion,
    convert_mar_vae,
    interpolate_pos_table,
    next_mask_len,
    truncated_normal_ratio,
)


@pytest.fixture(scope="module")
def model() -> unipic.UniPic:
    torch.manual_seed(0)
    return zoo.create_model("unipic_tiny").eval()


def _batch(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    tokens, grid = model.encode_images(x)
    orders = model.mar.sample_orders(n, tokens.shape[1], g)
    mask = model.mar.random_masking(orders, g)
    ids, attn = unipic.tokenize(model.tokenizer, [unipic.chat_prompt("a red circle"),
                                                  unipic.chat_prompt("two blue squares")][:n])
    return x, tokens, grid, mask, ids, attn


def test_forward_backward_shapes(model):
    model.train()
    x, tokens, grid, mask, ids, attn = _batch(model)
    z = model(tokens, mask, ids, attn, grid)
    assert z.shape == (2, 64, model.mar.decoder_dim)
    loss = model.mar.forward_loss(z, tokens, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.llm.model.layers[0].self_attn.q_proj.weight.grad is not None
    assert all(p.grad is None for p in model.vae.parameters())  # the VAE is frozen
    model.zero_grad()
    model.eval()


def test_buffer_rotation_round_trips():
    x = torch.arange(2 * 10 * 3).reshape(2, 10, 3)
    end = unipic.rotate_buffer_to_end(x, 4)
    assert torch.equal(end[:, -4:], x[:, :4]) and torch.equal(end[:, :6], x[:, 4:])
    assert torch.equal(unipic.rotate_buffer_to_front(end, 4), x)


def test_llm_sees_buffer_tokens_last_and_output_is_added_residually(model):
    _, tokens, grid, mask, ids, attn = _batch(model)
    seen = {}
    handle = model.llm.model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        text = model.embed_text(ids)
        out = model.bridge(tokens, mask, grid, text, attn)
    finally:
        handle.remove()
    x_enc = model.mar.forward_encoder(tokens, mask, grid)
    proj = model.proj_in(x_enc)
    b = model.mar.buffer_size
    inputs = seen["inputs_embeds"]
    assert torch.allclose(inputs[:, -b:], proj[:, :b])  # buffer tokens at the END of the LLM sequence
    assert torch.allclose(inputs[:, ids.shape[1]:-b], proj[:, b:])
    assert torch.allclose(inputs[:, :ids.shape[1]], text)
    # the residual: output - MAR encoder output == proj_out(LLM states rotated back)
    hidden = model.llm.model(inputs_embeds=inputs, attention_mask=seen["attention_mask"],
                             position_ids=seen["position_ids"]).last_hidden_state[:, -proj.shape[1]:]
    expect = x_enc + model.proj_out(unipic.rotate_buffer_to_front(hidden, b))
    assert torch.allclose(out, expect, atol=1e-5)
    # positions continue after each prompt's own length (cumsum of the padding mask)
    assert seen["position_ids"][0, ids.shape[1]].item() == int(attn[0].sum())


def test_zeroed_proj_out_leaves_mar_features(model):
    m = unipic.unipic_tiny()
    torch.nn.init.zeros_(m.proj_out[2].weight)
    torch.nn.init.zeros_(m.proj_out[2].bias)
    _, tokens, grid, mask, ids, attn = _batch(m)
    out = m.bridge(tokens, mask, grid, m.embed_text(ids), attn)
    assert torch.allclose(out, m.mar.forward_encoder(tokens, mask, grid))


def test_masked_tokens_are_removed_before_the_encoder(model):
    _, tokens, grid, mask, *_ = _batch(model)
    visible = int((mask[0] == 0).sum())
    out = model.mar.forward_encoder(tokens, mask, grid)
    assert out.shape[1] == model.mar.buffer_size + visible
    # masked token values do not matter
    t2 = tokens.clone()
    t2[mask.bool()] = 100.0
    assert torch.allclose(model.mar.forward_encoder(t2, mask, grid), out)


def test_loss_only_on_masked_tokens(model):
    _, tokens, grid, mask, ids, attn = _batch(model)
    z = model(tokens, mask, ids, attn, grid)
    t2 = tokens.clone()
    t2[~mask.bool()] += 5.0  # change only visible targets (and the loss must not see them)
    torch.manual_seed(1)
    a = model.mar.forward_loss(z, tokens, mask)
    torch.manual_seed(1)
    b = model.mar.forward_loss(z, t2, mask)
    assert torch.equal(a, b)
    # the mean is over masked tokens: an independent per-token computation
    d = model.mar.diffloss
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, d.steps, (64,), generator=g)
    noise = torch.randn(64, tokens.shape[-1], generator=g)
    per = d.diffusion.training_losses(d.net, tokens[0], z[0], t, noise)
    m0 = mask[0].bool()
    assert torch.allclose((per * m0).sum() / m0.sum(), per[m0].mean())


def test_mask_ratio_truncated_normal_matches_scipy():
    from scipy import stats

    r = truncated_normal_ratio(4000, 0.7, torch.Generator().manual_seed(0)).numpy()
    assert r.min() >= 0.7 and r.max() <= 1.0
    ref = stats.truncnorm((0.7 - 1.0) / 0.25, 0, loc=1.0, scale=0.25)
    assert stats.kstest(r, ref.cdf).pvalue > 0.01


def test_interpolated_position_tables(model):
    table = torch.randn(1, 4 + 64, 8)
    out = interpolate_pos_table(table, (8, 8), (16, 16), 4)
    assert out.shape == (1, 4 + 256, 8)
    assert torch.equal(out[:, :4], table[:, :4])
    # bilinear (align_corners=False) of a table linear in x: the ramp at the new centres, clamped at the borders
    ramp = torch.arange(8.0).repeat(8)[None, :, None].expand(1, 64, 8)
    up = interpolate_pos_table(torch.cat([torch.zeros(1, 4, 8), ramp], 1), (8, 8), (16, 16), 4)[:, 4:, 0]
    xs = np.clip((np.arange(16) + 0.5) / 2 - 0.5, 0, 7)
    assert np.allclose(up.reshape(16, 16).numpy(), np.tile(xs, (16, 1)), atol=1e-5)
    assert interpolate_pos_table(table, (8, 8), (8, 8), 4) is table
    # the model runs on a 16x16 grid (64-px images) through the interpolated tables
    img = unipic.generate_images(model, ["a red circle"], num_iter=2, image_size=64)
    assert img.shape == (1, 3, 64, 64)


def _record_sampling(model, monkeypatch):
    calls = {"masks": [], "x_con": [], "prompts": []}
    dec = model.mar.forward_decoder

    def spy_decoder(x, mask, grid, x_con=None):
        calls["masks"].append(mask.clone())
        calls["x_con"].append(x_con)
        return dec(x, mask, grid, x_con)

    tok = unipic.tokenize

    def spy_tokenize(tokenizer, texts, device="cpu"):
        calls["prompts"].append(list(texts))
        return tok(tokenizer, texts, device)

    monkeypatch.setattr(model.mar, "forward_decoder", spy_decoder)
    monkeypatch.setattr(unipic, "tokenize", spy_tokenize)
    return calls


def test_cfg_negative_prompt_and_shared_masks(model, monkeypatch):
    calls = _record_sampling(model, monkeypatch)
    unipic.generate_images(model, ["a red circle", "a blue square"], num_iter=4, cfg=3.0)
    prompts = calls["prompts"][0]
    assert prompts[2:] == [unipic.chat_prompt("Generate an image.")] * 2
    assert prompts[0] == unipic.chat_prompt("Generate an image: a red circle")
    assert len(calls["masks"]) == 4
    for m in calls["masks"]:
        assert torch.equal(m[:2], m[2:])  # the same mask in both halves, every step
    # MaskGIT cosine: the masked count falls every step and everything is revealed at the end
    counts = [int(m[0].sum()) for m in calls["masks"]]
    assert counts[0] == 64 and all(a > b for a, b in zip(counts, counts[1:]))


def test_maskgit_schedule_reveals_everything():
    masked, revealed = 4096, 0
    for step in range(64):
        nxt = next_mask_len(step, 64, 4096, masked) if step < 63 else 0
        assert masked - nxt >= 1
        revealed += masked - nxt
        masked = nxt
    assert revealed == 4096 and masked == 0


def test_edit_uses_x_con_and_source_in_prompt(model, monkeypatch):
    calls = _record_sampling(model, monkeypatch)
    src = torch.rand(1, 3, 32, 32) * 2 - 1
    out = unipic.edit_images(model, src, ["make the circle green"], num_iter=2, cfg=3.0)
    assert out.shape == src.shape
    prompts = calls["prompts"][0]
    n = model.image_token_count()
    assert prompts == [unipic.chat_prompt("make the circle green", n), unipic.chat_prompt("Repeat this image.", n)]
    tokens, grid = model.encode_images(src)
    x_con, _ = model.visual_features(tokens, grid)
    assert all(c is not None for c in calls["x_con"])
    assert torch.allclose(calls["x_con"][0][0], x_con[0], atol=1e-6)


def test_kv_cache_equals_full_forward(model):
    from transformers import DynamicCache

    _, tokens, grid, mask, ids, attn = _batch(model)
    text = model.embed_text(ids)
    full = model.bridge(tokens, mask, grid, text, attn)
    past = DynamicCache()
    pos = (attn.long().cumsum(1) - 1).clamp(min=0)
    model.llm.model(inputs_embeds=text, attention_mask=attn, position_ids=pos, use_cache=True,
                    **{unipic._cache_kwarg(model.llm.model): past})
    for _ in range(2):  # the second call after cropping sees the same prompt cache
        cached = model.bridge(tokens, mask, grid, text, attn, past)
        unipic.crop_cache(past, ids.shape[1])
        assert past.get_seq_length() == ids.shape[1]
        assert torch.allclose(cached, full, atol=1e-5)
    a = unipic.sample_tokens(model, ["a red circle"], grid, 3, 3.0, generator=torch.Generator().manual_seed(0))
    b = unipic.sample_tokens(model, ["a red circle"], grid, 3, 3.0, generator=torch.Generator().manual_seed(0),
                             use_cache=False)
    assert torch.allclose(a, b, atol=1e-4)


def test_sampling_step_equals_diffusers_ddpm():
    from diffusers import DDPMScheduler

    diff = TokenDiffusion(1000, 100)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                          clip_sample=False, prediction_type="epsilon")
    sched.set_timesteps(timesteps=diff.timesteps.flip(0).tolist())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 16, generator=g)
    for i in (99, 50, 1):
        out = torch.cat([torch.randn(5, 16, generator=g), torch.rand(5, 16, generator=g) * 2 - 1], -1)
        t = int(diff.timesteps[i])
        gen = torch.Generator().manual_seed(i)
        ref = sched.step(out, t, x, generator=gen).prev_sample
        noise = torch.randn(5, 16, generator=torch.Generator().manual_seed(i))
        ours = diff.step(out, x, torch.full((5,), i), noise)
        assert torch.allclose(ours, ref, atol=1e-4), (i, (ours - ref).abs().max())
    # improved DDPM's respacing (space_timesteps(1000, "100")): round(i * 999 / 99)
    assert diff.timesteps.tolist() == [round(i * 999 / 99) for i in range(100)]


def test_cosine_schedule_matches_improved_ddpm():
    diff = TokenDiffusion(1000, 10)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - f(i + 1) / f(i), 0.999) for i in range(1000)]
    assert np.allclose(diff.train["betas"].numpy(), betas, atol=1e-6)


def test_understanding_paths(model):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ids, attn = unipic.tokenize(model.tokenizer, [unipic.chat_prompt("how many circles?", model.und_token_count())] * 2)
    logits = model.understanding_logits(x, ids, attn)
    assert logits.shape == (*ids.shape, model.llm.config.vocab_size)
    mar_und = unipic.unipic_tiny(understanding="mar")
    assert mar_und.und_token_count() == 64 + 4
    ids, attn = unipic.tokenize(mar_und.tokenizer, [unipic.chat_prompt("q", mar_und.und_token_count())])
    assert mar_und.understanding_logits(x[:1], ids, attn).shape[1] == ids.shape[1]
    assert isinstance(unipic.answer_questions(model, x[:1], ["how many?"], max_new_tokens=2)[0], str)


def test_mar_only_baseline_has_no_llm():
    m = unipic.unipic_tiny(conditioning="bag", understanding="none")
    assert m.llm is None
    _, tokens, grid, mask, ids, attn = _batch(m)
    assert m(tokens, mask, ids, attn, grid).shape == (2, 64, 64)
    assert unipic.generate_images(m, ["a red circle"], num_iter=2).shape == (1, 3, 32, 32)


def test_paper_config_builds_on_meta():
    with torch.device("meta"):
        m = unipic.unipic_1p5b()
    count = lambda mod: sum(p.numel() for p in mod.parameters()) / 1e6  # noqa: E731
    assert len(m.mar.encoder_blocks) == len(m.mar.decoder_blocks) == 20
    assert m.mar.encoder_dim == 1280 and m.mar.buffer_size == 64 and m.mar.seq_len == 32 * 32
    assert len(m.mar.diffloss.net.res_blocks) == 12 and m.mar.diffloss.net.input_proj.out_features == 1536
    assert m.llm.config.num_hidden_layers == 28 and m.llm.config.hidden_size == 1536
    assert m.grid(1024) == (64, 64) and m.und_token_count() == 1024
    assert abs(count(m.llm) - 1543.7) < 1 and abs(count(m.mar) - 944.1) < 1
    assert m.vae_scale == 0.2325 and not any(p.requires_grad for p in m.vae.parameters())


# ------------------------------------------------------------------------------------------- conversion
def _official_mar(sd: dict[str, torch.Tensor]) -> dict:
    """Our MAR keys -> the official MAR layout (DiffLoss time MLP mlp.0/2, a class_emb, tables of another grid)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("time_embed.linear_1.", "time_embed.mlp.0.").replace("time_embed.linear_2.", "time_embed.mlp.2.")
        out[k] = v
    out["class_emb.weight"] = torch.randn(1000, sd["fake_latent"].shape[1])
    return out


def test_official_unipic_checkpoint_converts(model, tmp_path):
    ours = model.state_dict()
    official = {}
    for k, v in ours.items():
        if k.startswith("mar."):
            continue
        k = k.replace("siglip_proj.", "siglip2_proj.") if k.startswith("siglip_proj.") else \
            k.replace("siglip.", "siglip2.", 1) if k.startswith("siglip.") else k
        official[k] = v
    official |= {f"mar.{k}": v for k, v in _official_mar(model.mar.state_dict()).items()}
    path = tmp_path / "unipic.pth"
    torch.save(official, path)
    m2 = unipic.unipic_tiny()
    zoo.load_checkpoint(m2, path)
    for k, v in m2.state_dict().items():
        assert torch.equal(v, ours[k]), k


def test_official_mar_pth_converts_with_interpolated_tables(model, tmp_path):
    src = unipic.unipic_tiny(mar=dict(unipic.TINY_MAR, img_size=16))  # 4x4 tables, like MAR's 256-px 16x16
    sd = _official_mar(src.mar.state_dict())
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": sd, "model_ema": sd, "epoch": 3}, path)
    m2 = unipic.unipic_tiny()
    before = {k: v.clone() for k, v in m2.state_dict().items() if not k.startswith("mar.")}
    zoo.load_checkpoint(m2, path)
    assert torch.equal(m2.mar.z_proj.weight, src.mar.z_proj.weight)
    assert torch.equal(m2.mar.diffloss.net.time_embed.linear_1.weight, src.mar.diffloss.net.time_embed.linear_1.weight)
    assert m2.mar.encoder_pos_embed_learned.shape == (1, 4 + 64, 64)
    assert torch.allclose(m2.mar.encoder_pos_embed_learned,
                          interpolate_pos_table(src.mar.encoder_pos_embed_learned, (4, 4), (8, 8), 4))
    for k, v in before.items():  # the rest (LLM, projections, SigLIP) keeps the model's own tensors
        assert torch.equal(m2.state_dict()[k], v)


def _diffusers_to_ldm_vae(sd: dict[str, torch.Tensor], n_blocks: int) -> dict[str, torch.Tensor]:
    """A hand-written inverse (diffusers AutoencoderKL -> LDM) to write a MAR-layout VAE file in the test."""
    import re

    out = {}
    for k, v in sd.items():
        n = k
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", n)
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.attentions\.(\d+)\.", r"encoder.down.\1.attn.\2.", n)
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", n)
        n = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                   lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}.", n)
        n = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.", n)
        n = re.sub(r"(en|de)coder\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}coder.mid.block_{int(m[2]) + 1}.", n)
        n = re.sub(r"(en|de)coder\.mid_block\.attentions\.0\.", r"\1coder.mid.attn_1.", n)
        n = n.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        for ours, theirs in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                             ("to_out.0", "proj_out")):
            if f".{ours}." in n and ".attn" in n:
                n = n.replace(f".{ours}.", f".{theirs}.")
                if theirs != "norm" and v.ndim == 2:
                    v = v[:, :, None, None]
        out[n] = v
    return out


def test_mar_vae_converts_to_diffusers_autoencoderkl():
    from diffusers import AutoencoderKL

    cfg = dict(MAR_KL16_VAE, block_out_channels=(8, 8, 16), down_block_types=("DownEncoderBlock2D",) * 2 +
               ("AttnDownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4,
               norm_num_groups=4, layers_per_block=1)
    torch.manual_seed(0)
    ref = AutoencoderKL(**cfg).eval()
    ldm = _diffusers_to_ldm_vae(ref.state_dict(), 3)
    assert any(".down.2.attn.0.q." in k for k in ldm)
    conv = convert_mar_vae({"model": ldm}, cfg)
    fresh = AutoencoderKL(**cfg)
    fresh.load_state_dict(conv, strict=True)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(fresh.encode(x).latent_dist.mode(), ref.encode(x).latent_dist.mode(), atol=1e-6)


def test_paper_vae_config_is_kl16():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**MAR_KL16_VAE)
    assert vae.config.latent_channels == 16 and 2 ** (len(vae.config.block_out_channels) - 1) == 16
    assert sum(p.numel() for p in vae.parameters()) / 1e6 == pytest.approx(66.5, abs=0.5)


def test_tokenizer_and_prompt():
    tok = unipic.ByteChatTokenizer()
    p = unipic.chat_prompt("make it green", 3)
    assert p == "<|im_start|>user\n<image><image><image>\nmake it green<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(p)
    assert ids.count(tok.image_token_id) == 3 and tok.decode(ids).endswith("assistant\n")


def test_save_pretrained_round_trip(model, tmp_path):
    zoo.save_pretrained(model, tmp_path / "m")
    m2 = zoo.create_model(f"local-dir:{tmp_path / 'm'}")
    for k, v in model.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(F.mse_loss(model.encode_images(x)[0], m2.encode_images(x)[0]), torch.tensor(0.0))
