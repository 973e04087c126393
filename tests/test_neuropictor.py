"""NeuroPictor: tiny-model shapes and gradients, zero-init ControlNet, paper config on meta, official-checkpoint
conversion, subject adapters (freeze_shared), metrics against independent implementations, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from zoo.neuropictor import (
    FMRIAutoencoder,
    FMRIEncoder,
    NeuroPictor,
    convert_official_checkpoint,
    convert_official_fmri_autoencoder,
    sample_images,
    sincos_pos_embed_2d,
    to_official_state_dict,
)


@pytest.fixture(scope="module")
def tiny() -> NeuroPictor:
    torch.manual_seed(0)
    return zoo.create_model("neuropictor_tiny", subjects={"s1": 20, "s2": 30}, num_classes=3).eval()


def _inputs(b: int = 2):
    return torch.randn(b, 1, 32, 32), torch.randn(b, 4, 8, 8), torch.tensor([3, 700])[:b]


def test_tiny_shapes_and_gradients(tiny):
    surf, lat, t = _inputs()
    tiny.train()
    out = tiny(surf, lat, t)
    assert out.eps.shape == lat.shape and out.clip_txt.shape == (2, 6, 32) and out.logits.shape == (2, 3)
    assert tiny.encode_fmri(surf).shape == (2, 17, 32)  # 16 patches + cls
    out.eps.square().mean().backward()
    assert tiny.fmri_encoder.blocks[0].attn.qkv.weight.grad is not None  # the encoder is fine-tuned
    assert all(p.grad is None for p in tiny.unet.parameters())  # the UNet is frozen
    tiny.zero_grad(set_to_none=True)
    tiny.eval()


def test_zero_init_controlnet_equals_plain_unet(tiny):
    """At init the ControlNet's zero convolutions (and the fMRI mapper's zero conv) leave the UNet unchanged."""
    surf, lat, t = _inputs()
    with torch.no_grad():
        tokens = tiny.encode_fmri(surf)
        ctx, _ = tiny.condition(tokens)
        controlled = tiny.denoise(lat, t, ctx, tokens)
        plain = tiny.unet(lat, t, encoder_hidden_states=ctx).sample
        hint = tiny.controlnet.controlnet_cond_embedding(tokens)
    torch.testing.assert_close(controlled, plain, rtol=0, atol=0)
    assert hint.shape == (2, 16, 8, 8) and hint.abs().max() == 0


def test_semantic_network_token_mixing_and_zero_extra_branch(tiny):
    sem = tiny.semantic
    assert [m.kernel_size for m in sem.channel_mapper] == [(1,), (1,)]  # 1x1 Conv1d over the token axis
    assert (sem.channel_mapper[0].in_channels, sem.channel_mapper[0].out_channels) == (17, 8)
    assert sem.channel_mapper[1].out_channels == 6
    tokens = torch.randn(2, 17, 32)
    ctx, clip_txt = sem(tokens)
    torch.testing.assert_close(ctx, clip_txt)  # zero-initialised extra branch


def test_pos_embed_is_mae_sincos():
    e = sincos_pos_embed_2d(8, 2, 3)
    assert e.shape == (7, 8) and torch.all(e[0] == 0)
    # token (row 1, col 2) = [sin/cos of col 2, sin/cos of row 1] with omega = 1/10000^(k/2), k = 0, 1
    omega = 1 / 10000 ** (np.arange(2) / 2)
    ref = np.concatenate([np.sin(2 * omega), np.cos(2 * omega), np.sin(1 * omega), np.cos(1 * omega)])
    np.testing.assert_allclose(e[1 + 1 * 3 + 2].numpy(), ref, rtol=1e-6)


def test_paper_config_builds_on_meta():
    with torch.device("meta"):
        m = zoo.create_model("neuropictor_sd21")
    cfg = m.unet.config
    assert tuple(cfg.block_out_channels) == (320, 640, 1280, 1280) and cfg.cross_attention_dim == 1024
    assert m.fmri_encoder.num_tokens == 257 and m.fmri_encoder.embed_dim == 1024
    assert m.latent_size == 64 and m.controlnet.controlnet_cond_embedding.out_size == 64
    assert m.controlnet.controlnet_cond_embedding.out_channels == 320
    assert m.semantic.channel_mapper[0].out_channels == 128 and m.semantic.channel_mapper[1].out_channels == 77
    assert m.text_encoder.width == 1024 and len(m.text_encoder.transformer.resblocks) == 24
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert abs(n(m.unet) / 1e6 - 865.91) < 0.01 and abs(n(m.vae) / 1e6 - 83.65) < 0.01
    assert m.adapters.stem is None  # NSD surfaces: no adapter parameters
    assert not any(p.requires_grad for p in m.unet.parameters())
    assert "sem_target_layer" in zoo.model_card("neuropictor_sd21") or "penultimate" in zoo.model_card(
        "neuropictor_sd21")


def test_official_checkpoint_round_trip(tiny, tmp_path):
    """Ours -> the official key layout -> (diffusers' LDM converters + ours) -> ours, bit-exact; the written file
    loads through create_model(pretrained=...) like a downloaded official .ckpt."""
    official = to_official_state_dict(tiny)
    # known upstream key names (cldm_fmri_surf.CLDM_for_FMRI with ControlNet / openaimodel UNet)
    for key in ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                "model.diffusion_model.output_blocks.1.1.conv.weight",
                "model.diffusion_model.out.2.weight", "control_model.zero_convs.0.0.weight",
                "control_model.middle_block_out.0.weight", "control_model.fmri_mapper.out.weight",
                "fmri_encoder.transformer.blocks.0.attn.qkv.weight", "cond_stage.extra_clip_out.weight",
                "cond_stage_model.model.ln_final.weight"):
        assert key in official, key
    official["control_model.input_hint_block.0.weight"] = torch.zeros(16, 3, 3, 3)  # dropped, unused upstream
    official["betas"] = torch.zeros(1000)
    path = tmp_path / "epoch_080.ckpt"
    torch.save({"state_dict": official, "epoch": 80}, path)
    back = convert_official_checkpoint(torch.load(path, weights_only=True)["state_dict"], tiny)
    ours = {k: v for k, v in tiny.state_dict().items() if not k.startswith(("adapters.", "category_head."))}
    assert set(back) == set(ours)
    for k, v in ours.items():
        assert torch.equal(back[k], v), k
    fresh = zoo.create_model("neuropictor_tiny", subjects={"s1": 20, "s2": 30}, num_classes=3, pretrained=str(path))
    for k, v in ours.items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_official_checkpoint_unknown_key_is_named(tiny):
    sd = to_official_state_dict(tiny)
    sd["control_model.something_new.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="something_new"):
        convert_official_checkpoint(sd, tiny)


def test_fmri_autoencoder_and_encoder_loading(tmp_path):
    enc = FMRIEncoder(32, 8, 1, 32, 2, 4)
    ae = FMRIAutoencoder(enc, latent_dim=16, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    surf = torch.randn(2, 1, 32, 32)
    assert ae(surf).shape == surf.shape
    # the official layout: Neural_fMRI2fMRI.transformer.* (DDP 'module.' prefix), encoder + pred + decoder
    official = {}
    for k, v in ae.state_dict().items():
        official["module.transformer." + k.removeprefix("encoder.")] = v
    assert set(convert_official_fmri_autoencoder(official)) == set(ae.state_dict())
    path = tmp_path / "checkpoint_120000.pth"
    torch.save({"model": official}, path)
    model = zoo.create_model("neuropictor_tiny", fmri_encoder_path=str(path))
    for k, v in enc.state_dict().items():
        assert torch.equal(model.fmri_encoder.state_dict()[k], v)


def test_sampling_and_uncond_mask(tiny):
    surf, lat, t = _inputs()
    img = sample_images(tiny, surf, steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    assert img.shape == (2, 4, 8, 8) and 0 <= float(img.min()) and float(img.max()) <= 1
    with torch.no_grad():
        out = tiny(surf, lat, t, uncond_mask=torch.tensor([True, False]))
        unc = tiny.uncond_context(1)[0]
    torch.testing.assert_close(out.context[0], unc)
    assert not torch.allclose(out.context[1], unc)


def test_semantic_target_layers(tiny):
    pen = tiny.encode_text(["a cat"], layer="penultimate")
    fin = tiny.encode_text(["a cat"], layer="final")
    assert pen.shape == fin.shape == (1, 6, 32) and not torch.allclose(pen, fin)
    # independent: open_clip's own text-transformer forward gives the final-layer tokens before pooling
    te = tiny.text_encoder
    tokens = tiny.tokenize(["a cat"])
    x = te.transformer(te.token_embedding(tokens) + te.positional_embedding, attn_mask=te.attn_mask)
    torch.testing.assert_close(fin, te.ln_final(x))


def test_bad_inputs_are_named(tiny):
    with pytest.raises(ValueError, match=r"fMRI surface must be \(B, 1, 32, 32\)"):
        tiny.encode_fmri(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="needs subject"):
        tiny.encode_fmri(torch.randn(2, 20))
    with pytest.raises(ValueError, match=r"subject 's1' expects voxels \(B, 20\)"):
        tiny.encode_fmri(torch.randn(2, 21), "s1")
    with pytest.raises(KeyError, match="no adapter for subject 'nobody'"):
        tiny.encode_fmri(torch.randn(2, 20), "nobody")
    with pytest.raises(ValueError, match="noisy latents must be"):
        tiny(torch.randn(2, 1, 32, 32), torch.randn(2, 4, 16, 16), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="sem_target_layer"):
        zoo.create_model("neuropictor_tiny", sem_target_layer="middle")


def test_new_subject_trains_only_its_adapter():
    torch.manual_seed(0)
    m = zoo.create_model("neuropictor_tiny", subjects={"s1": 20})
    m.adapters.add_subject("s_new", 12)
    params = m.trainable_parameters(freeze_shared=True, subject="s_new")
    assert {id(p) for p in params} == {id(p) for p in m.adapters.adapters["s_new"].parameters()}
    m.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(params, lr=1e-2)
    out = m(torch.randn(4, 12), torch.randn(4, 4, 8, 8), torch.randint(0, 1000, (4,)), subject="s_new")
    (out.eps.square().mean() + out.clip_txt.square().mean()).backward()
    opt.step()
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("adapters.adapters.s_new.") for k in changed)


def test_unet_encoder_no_grad_detaches_context():
    torch.manual_seed(0)
    m = zoo.create_model("neuropictor_tiny", unet_encoder_no_grad=True, semantic_extra=False)
    ctx = torch.randn(2, 6, 32, requires_grad=True)
    lat = torch.randn(2, 4, 8, 8)
    t = torch.tensor([1, 2])
    grads = {}
    for blk_name, blk in [("down", m.unet.down_blocks[0]), ("up", m.unet.up_blocks[1])]:
        blk.register_forward_hook(lambda mod, a, o, n=blk_name: grads.setdefault(n, o))
    m.unet(lat, t, encoder_hidden_states=ctx).sample.sum().backward()
    assert ctx.grad is not None  # through the output blocks
    down_out = grads["down"][0] if isinstance(grads["down"], tuple) else grads["down"]
    assert not down_out.requires_grad  # the (frozen) input blocks saw a detached context


def test_metrics_against_independent_implementations():
    from scipy.spatial.distance import correlation
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    from tasks.metrics.fmri_recon import correlation_distance, pixcorr, ssim_gray, two_way_identification

    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 3, 24, 24, generator=g)
    b = (a + 0.4 * torch.rand(5, 3, 24, 24, generator=g)).clamp(0, 1)
    ref_pc = np.mean([np.corrcoef(a[i].flatten().numpy(), b[i].flatten().numpy())[0, 1] for i in range(5)])
    assert abs(float(pixcorr(a, b)) - ref_pc) < 1e-5
    ref_ssim = np.mean([structural_similarity(rgb2gray(a[i].permute(1, 2, 0).numpy()),
                                              rgb2gray(b[i].permute(1, 2, 0).numpy()), gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False, data_range=1.0)
                        for i in range(5)])
    assert abs(float(ssim_gray(a, b)) - ref_ssim) < 1e-6
    fp, ft = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    ft[:3] = fp[:3] + 0.1 * ft[:3]
    # independent loop: for each prediction j count targets i != j less correlated with it than target j
    n, wins = 6, []
    for j in range(n):
        own = np.corrcoef(fp[j], ft[j])[0, 1]
        wins.append(np.mean([np.corrcoef(fp[j], ft[i])[0, 1] < own for i in range(n) if i != j]))
    assert abs(float(two_way_identification(fp, ft)) - np.mean(wins)) < 1e-6
    ref_d = np.mean([correlation(fp[i].numpy(), ft[i].numpy()) for i in range(n)])
    assert abs(float(correlation_distance(fp, ft)) - ref_d) < 1e-5


def test_feature_extractor_random_init_offline():
    from tasks.metrics.fmri_recon import reconstruction_metrics

    a = torch.rand(3, 3, 32, 32)
    out = reconstruction_metrics(a, a.flip(0), feature_nets=("alexnet2", "alexnet5"))
    assert set(out) == {"pixcorr", "ssim", "psnr", "alexnet2", "alexnet5"}
    assert 0.0 <= out["alexnet2"] <= 1.0


def test_accumulating_metrics_equal_the_functions_on_all_samples():
    """The torchmetrics classes (the DDP path: summed / concatenated states) over uneven batches equal the functions
    on all samples at once; 2-way identification compares across batches (not a mean of per-batch scores)."""
    from tasks.metrics.fmri_recon import (
        CorrelationDistance,
        PixCorr,
        TwoWayIdentification,
        correlation_distance,
        pixcorr,
        reconstruction_metric_collection,
        ssim_gray,
        two_way_identification,
    )

    g = torch.Generator().manual_seed(1)
    a = torch.rand(7, 3, 16, 16, generator=g)
    b = (a + 0.5 * torch.rand(7, 3, 16, 16, generator=g)).clamp(0, 1)
    col = reconstruction_metric_collection(pixel_two_way=True)
    for sl in (slice(0, 3), slice(3, 4), slice(4, 7)):
        col.update(a[sl], b[sl])
    out = col.compute()
    torch.testing.assert_close(out["pixcorr"], pixcorr(a, b))
    torch.testing.assert_close(out["ssim"], ssim_gray(a, b))
    torch.testing.assert_close(out["pixel_2way"], two_way_identification(a, b))
    fp, ft = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    ft[:4] = fp[:4] + 0.3 * ft[:4]
    tw, cd = TwoWayIdentification(), CorrelationDistance()
    for sl in (slice(0, 2), slice(2, 9)):
        tw.update(fp[sl], ft[sl])
        cd.update(fp[sl], ft[sl])
    torch.testing.assert_close(tw.compute(), two_way_identification(fp, ft))
    per_batch = np.mean([float(two_way_identification(fp[s], ft[s])) for s in (slice(0, 2), slice(2, 9))])
    assert abs(float(tw.compute()) - per_batch) > 1e-3  # all pairs, not a mean of per-batch scores
    torch.testing.assert_close(cd.compute(), correlation_distance(fp, ft))
    # states gather across ranks: 2-way by concatenation, the pair means by summation
    assert tw._reductions["pred_feats"].__name__ == "dim_zero_cat"
    assert PixCorr()._reductions["total"].__name__ == "dim_zero_sum"
    # an extractor turns images into features inside update()
    ex = TwoWayIdentification(extractor=lambda x: x.mean(1))
    ex.update(a, b)
    torch.testing.assert_close(ex.compute(), two_way_identification(a.mean(1), b.mean(1)))


def test_official_checkpoint_round_trip_with_a_vae():
    """The VAE too: ours -> first_stage_model.* (LDM autoencoder keys, 1x1-conv attention weights, reversed decoder
    blocks) -> diffusers' own convert_ldm_vae_checkpoint -> ours, bit-exact, inside the whole-model round trip."""
    from zoo.neuropictor import vae_to_official

    torch.manual_seed(1)
    vae = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
               up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=2,
               latent_channels=4, norm_num_groups=4)
    model = zoo.create_model("neuropictor_tiny", subjects={"s1": 20}, num_classes=3, vae=vae, image_size=64)
    official = to_official_state_dict(model)
    for key in ("encoder.down.1.block.0.nin_shortcut.weight", "decoder.up.0.block.2.conv2.weight",
                "decoder.up.2.upsample.conv.weight", "encoder.mid.attn_1.q.weight", "decoder.norm_out.weight",
                "post_quant_conv.weight"):
        assert "first_stage_model." + key in official, key
    assert official["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert set(vae_to_official(model.vae.state_dict(), 3)) <= set(official)
    back = convert_official_checkpoint(official, model)
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith(("adapters.", "category_head."))}
    assert set(back) == set(ours)
    for k, v in ours.items():
        assert torch.equal(back[k].reshape(v.shape), v) and back[k].shape == v.shape, k
