"""CronusVLA model: feature chunk with stop-gradient history, cross-frame decoder (condition tokens, zero-init, null
chunk), repeated diffusion, DDIM + CFG (the released time-axis quirk), inference (padding, post-processing, ensemble,
sticky gripper), action tokens, upstream checkpoint conversion, paper configs on the meta device."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from zoo.cronusvla import ActionTokenizer, CronusVLA, convert_upstream_checkpoint
from zoo.cronusvla_decoder import CrossFrameDiT, FeatureActionBank, ddim_scheduler, ddpm_scheduler, sample_action_chunk
from zoo.cronusvla_policy import AdaptiveEnsembler, CronusVLAPolicy, StickyGripper, pad_history, postprocess_actions


@pytest.fixture(scope="module")
def tiny() -> CronusVLA:
    torch.manual_seed(0)
    return zoo.create_model("cronusvla_tiny").eval()


def _batch(b: int = 2, m: int = 3, size: int = 28):
    ids = torch.randint(3, 250, (b, 9))
    ids[:, 0], ids[:, -1] = 1, 2
    mask = torch.ones_like(ids)
    mask[-1, 6:] = 0  # a right-padded prompt: its feature is read at position 5
    return torch.rand(b, m, 3, size, size), ids, mask


def test_shapes_and_condition_tokens(tiny):
    px, ids, mask = _batch()
    feats = tiny(px, ids, mask).features
    assert feats.shape == (2, 3, 64)
    dec = tiny.decoder
    assert dec.num_condition_tokens == (3 - 1) + 6 and dec.condition(feats).shape == (2, 8, 32)
    assert dec.condition.extend_dim == 64 // 6
    eps = tiny.predict_noise(torch.randn(2, 4, 7), torch.tensor([1, 50]), feats)
    assert eps.shape == (2, 4, 7) and eps.abs().max() == 0  # zero-initialised output layer
    assert tiny.sample_actions(feats, num_steps=2).shape == (2, 4, 7)


def test_feature_is_last_non_pad_hidden_state(tiny):
    px, ids, mask = _batch()
    with torch.no_grad():
        f = tiny.frame_features(px[:, -1], ids, mask)
        embeds, full_mask = tiny.embed_inputs(px[:, -1], ids, mask)
        h = tiny.llm(inputs_embeds=embeds, attention_mask=full_mask, output_hidden_states=True).hidden_states[-1]
    p = embeds.shape[1] - ids.shape[1]
    torch.testing.assert_close(f[0], h[0, -1])
    torch.testing.assert_close(f[1], h[1, p + 5])  # the EOS of the padded prompt


def test_single_frame_passes_build_no_kv_cache(tiny):
    """One full pass per frame and nothing decoded after it: the LLM is asked for no cache (a cache's per-layer state
    is wasted work and made the compiled layers recompile on the H200)."""
    seen = []
    hook = tiny.llm.base_model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("use_cache")),
                                                         with_kwargs=True)
    try:
        px, ids, mask = _batch()
        with torch.no_grad():
            tiny(px, ids, mask)
            tiny.token_logits(px[:, -1], ids, mask)
    finally:
        hook.remove()
    assert seen == [False, False, False]  # current frame, past frames, stage-1 logits


def test_past_features_receive_no_gradient_and_equal_detached_features(tiny):
    px, ids, mask = _batch()
    px.requires_grad_(True)
    tiny.train()
    feats = tiny.cognition_features(px, ids, mask)
    feats.sum().backward()
    tiny.eval()
    assert px.grad[:, :-1].abs().sum() == 0 and px.grad[:, -1].abs().sum() > 0
    assert not feats[:, :-1].requires_grad or feats.grad_fn is not None
    # the released form: all frames with grad, then the past detached -> same values
    with torch.no_grad():
        per_frame = torch.stack([tiny.frame_features(px[:, i], ids, mask) for i in range(3)], 1)
    torch.testing.assert_close(feats.detach(), per_frame, atol=1e-5, rtol=1e-5)
    tiny.zero_grad(set_to_none=True)


def test_null_chunk_cfg_drop(tiny):
    dec = tiny.decoder
    feats = torch.randn(3, 3, 64)
    with torch.no_grad():
        dec.head.weight.normal_()
        x, t = torch.randn(3, 4, 7), torch.tensor([5, 5, 5])
        dropped = dec(x, t, feats, drop_ids=torch.tensor([True, False, True]))
        other = dec(x, t, torch.randn(3, 3, 64), drop_ids=torch.tensor([True, True, True]))
        null = dec(x, t, dec.condition.null_chunk.expand(3, -1, -1), drop_ids=torch.zeros(3, dtype=torch.bool))
        dec.head.weight.zero_()
    # a dropped sample sees the learned null chunk (whole chunk), whatever its features
    torch.testing.assert_close(dropped[[0, 2]], other[[0, 2]])
    torch.testing.assert_close(dropped[[0, 2]], null[[0, 2]])
    assert not torch.allclose(dropped[1], other[1])
    assert dec.condition.null_chunk.shape == (3, 64)
    torch.manual_seed(0)
    drops = dec.condition.drop(torch.ones(4000, 3, 64)).eq(1).all(-1).all(-1).logical_not().float().mean()
    assert abs(drops.item() - 0.1) < 0.02  # p = 0.1


def test_repeated_diffusion_tiles_with_fresh_noise(tiny, monkeypatch):
    from tasks.cronusvla import CronusVLATask

    task = CronusVLATask("cronusvla_tiny", repeated_diffusion_steps=4)
    seen = {}

    def spy(noisy, t, feats, drop_ids=None, prior_actions=None):
        seen.update(noisy=noisy, t=t, feats=feats)
        return torch.zeros_like(noisy)

    monkeypatch.setattr(task.net, "predict_noise", spy)
    feats, actions = torch.randn(2, 3, 64), torch.rand(2, 4, 7) * 2 - 1
    loss = task.diffusion_loss(feats, actions)
    assert seen["noisy"].shape == (8, 4, 7) and torch.equal(seen["feats"], feats.repeat(4, 1, 1))
    sched = task.scheduler
    ab = sched.alphas_cumprod[seen["t"]].view(-1, 1, 1)
    noise = (seen["noisy"] - ab.sqrt() * actions.repeat(4, 1, 1)) / (1 - ab).sqrt()
    copies = noise.view(4, 2, 4, 7)
    assert all(not torch.allclose(copies[0], copies[i]) for i in range(1, 4))  # fresh noise per copy
    torch.testing.assert_close(loss, noise.square().mean(), atol=1e-4, rtol=1e-4)  # eps-MSE vs a zero prediction


def test_schedulers_match_the_released_diffusion():
    ddpm = ddpm_scheduler()
    steps = np.arange(101) / 100
    abar = np.cos((steps + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.minimum(1 - abar[1:] / abar[:-1], 0.999)  # improved-DDPM cosine, computed independently
    np.testing.assert_allclose(ddpm.betas.numpy(), betas, rtol=1e-5)
    ddim = ddim_scheduler()
    ddim.set_timesteps(10)
    assert ddim.timesteps.tolist() == list(range(90, -1, -10))


def test_cfg_time_axis_quirk():
    torch.manual_seed(0)
    dec = CrossFrameDiT(7, 24, 2, 16, 16, 1, 2).eval()
    with torch.no_grad():
        dec.head.weight.normal_()
    feats = torch.randn(2, 2, 24)
    run = lambda quirk, scale=1.5: sample_action_chunk(  # noqa: E731
        dec, feats, 1, scale, quirk, torch.Generator().manual_seed(0))
    quirk, full, cond = run(True), run(False), run(True, 1.0)
    torch.testing.assert_close(quirk[:, :7], full[:, :7])  # the first 7 actions are guided
    torch.testing.assert_close(quirk[:, 7:], cond[:, 7:])  # the rest come from the conditional branch
    assert not torch.allclose(full[:, 7:], cond[:, 7:])


def test_history_padding_and_policy_cache(tiny):
    a, b, c = (torch.full((1, 2), float(i)) for i in (1, 2, 3))
    assert pad_history([], c, 4)[0, :, 0].tolist() == [3, 3, 3, 3]
    assert pad_history([a], c, 4)[0, :, 0].tolist() == [1, 1, 1, 3]  # padded by the OLDEST feature
    assert pad_history([a, b], c, 4)[0, :, 0].tolist() == [1, 1, 2, 3]
    assert pad_history([a, b, c, a], c, 3)[0, :, 0].tolist() == [3, 1, 3]
    _, ids, _ = _batch(1)
    pol = CronusVLAPolicy(tiny, ids, num_steps=2)
    img = torch.rand(3, 28, 28)
    first = pol.features(img)
    assert torch.equal(first[:, 0], first[:, -1])
    for _ in range(4):
        chunk = pol.act(torch.rand(3, 28, 28))
    assert pol.vlm_passes == 5 and len(pol.history) == 2 and chunk.shape == (4, 7)


def test_postprocess_clip_binarise_unnormalise():
    a = torch.tensor([[1.5, -1.0, 0.0, 0.2, 0.0, 0.0, 0.7], [-3.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.3]])
    q01, q99 = torch.tensor([-0.1] * 6 + [0.0]), torch.tensor([0.3] * 6 + [1.0])
    mask = torch.tensor([1.0] * 6 + [0.0])
    out = postprocess_actions(a, q01, q99, mask)
    ref = np.clip(a.numpy(), -1, 1)
    ref[:, :6] = 0.5 * (ref[:, :6] + 1) * 0.4 - 0.1
    ref[:, 6] = ref[:, 6] > 0.5
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


def test_adaptive_ensemble_weights():
    ens = AdaptiveEnsembler(horizon=3, alpha=0.1)
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(4, 7)) for _ in range(4)]
    for c in chunks:
        out = ens(c)
    assert abs(ens.last_weights.sum() - 1) < 1e-12
    preds = np.stack([chunks[1][2], chunks[2][1], chunks[3][0]])  # this step's action from the last 3 chunks
    cos = np.array([p @ preds[-1] / np.linalg.norm(p) / np.linalg.norm(preds[-1]) for p in preds])
    w = np.exp(0.1 * cos) / np.exp(0.1 * cos).sum()
    np.testing.assert_allclose(out, (w[:, None] * preds).sum(0))


def test_sticky_gripper():
    g = StickyGripper(repeat=3)
    assert [g(x) for x in (1, 1, 0, 1, 1, 1, 1)] == [1, 1, 0, 0, 0, 1, 1]


def test_action_tokenizer_matches_openvla_binning():
    tok = ActionTokenizer(vocab_size=300, bins=256)
    a = torch.linspace(-1.2, 1.2, 97)
    ids = tok.encode(a)
    ref = 300 - np.clip(np.digitize(a.numpy(), np.linspace(-1, 1, 256)), 1, 256)
    assert ids.tolist() == ref.tolist() and ids.min() >= 300 - 256
    back = tok.decode(ids)
    assert (back - a.clamp(-1, 1)).abs().max() <= 2 / 255 + 1e-6


def test_stage1_sequence_and_loss():
    from tasks.cronusvla import IGNORE_INDEX, OpenVLATokenTask, action_token_inputs

    ids = torch.tensor([[1, 10, 11, 2], [1, 12, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    act = torch.tensor([[290, 291], [295, 296]])
    out, m, labels = action_token_inputs(ids, mask, act, suffix_len=1, eos_id=2)
    assert out.tolist() == [[1, 10, 11, 290, 291, 2], [1, 12, 295, 296, 2, 0]]
    assert labels.tolist() == [[IGNORE_INDEX] * 3 + [290, 291, 2], [IGNORE_INDEX] * 2 + [295, 296, 2, IGNORE_INDEX]]
    task = OpenVLATokenTask("cronusvla_tiny")
    px, ids, mask = _batch()
    loss, acc = task._loss({"pixels": px, "input_ids": ids, "attention_mask": mask, "actions": torch.rand(2, 4, 7)})
    assert loss.item() > 0 and 0 <= acc.item() <= 1


def test_retrieval_bank_and_prior_decoder():
    bank = FeatureActionBank(key="current", k=1)
    keys = torch.eye(3, 8)[:, None].repeat(1, 2, 1)
    acts = torch.arange(3.0).view(3, 1, 1).expand(3, 4, 7)
    bank.add(keys, acts)
    q = torch.eye(3, 8)[[2, 0]][:, None].repeat(1, 2, 1)
    assert bank.query(q)[:, 0, 0].tolist() == [2.0, 0.0]
    dec = CrossFrameDiT(7, 8, 2, 4, 16, 1, 2, retrieval_prior=True)
    with pytest.raises(ValueError, match="prior_actions"):
        dec(torch.randn(2, 4, 7), torch.tensor([1, 2]), q)
    assert dec(torch.randn(2, 4, 7), torch.tensor([1, 2]), q, prior_actions=bank.query(q)).shape == (2, 4, 7)


def _to_upstream(model: CronusVLA) -> dict:
    """Our weights in the released Prismatic/CronusVLA checkpoint layout (names written out independently)."""
    dec = {"action_embed.": "x_embedder.linear.", "time_embedding.linear_1.": "t_embedder.mlp.0.",
           "time_embedding.linear_2.": "t_embedder.mlp.2.", "condition.past.": "z_embedder.linear_0.",
           "condition.expand.": "z_embedder.extend_net.0.", "condition.current.": "z_embedder.linear.",
           "condition.null_chunk": "z_embedder.uncondition", "pos_embed": "positional_embedding",
           "cond_pos_embed": "condition_positional_embedding", "head.": "final_layer.linear.", "blocks.": "blocks."}
    parts: dict[str, dict] = {"vision_backbone": {}, "projector": {}, "llm_backbone": {}, "action_model": {}}
    for k, v in model.state_dict().items():
        if k.startswith("vision.dino."):
            parts["vision_backbone"]["dino_featurizer." + k[12:]] = v.clone()
        elif k.startswith("vision.siglip."):
            parts["vision_backbone"]["siglip_featurizer." + k[14:]] = v.clone()
        elif k.startswith("projector."):
            parts["projector"]["projector." + k[10:]] = v.clone()
        elif k.startswith("llm."):
            parts["llm_backbone"]["llm." + k[4:]] = v.clone()
        elif k.startswith("decoder."):
            rest = k[8:]
            ours = next(o for o in dec if rest.startswith(o))
            parts["action_model"]["net." + dec[ours] + rest[len(ours):]] = v.clone()
    return {"model": parts}


def test_upstream_checkpoint_converts(tmp_path):
    torch.manual_seed(1)
    src = zoo.create_model("cronusvla_tiny")
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.rand_like(p) * 0.01)
    torch.save(_to_upstream(src), tmp_path / "step-000100-epoch-00-loss=0.1.pt")
    loaded = zoo.create_model("cronusvla_tiny", pretrained=str(tmp_path / "step-000100-epoch-00-loss=0.1.pt"))
    sa, sb = src.state_dict(), loaded.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    with pytest.raises(KeyError, match="unknown"):
        convert_upstream_checkpoint({"action_model.net.mystery.weight": torch.zeros(1)})
    from zoo.cronusvla import checkpoint_filter_fn

    ours = src.state_dict()  # our own keys (e.g. a stage-1 checkpoint for init_from) pass through unconverted
    assert checkpoint_filter_fn(ours, loaded) is ours


def test_paper_configs_build_on_meta():
    with torch.device("meta"):
        m7 = zoo.create_model("cronusvla_7b")
        m05 = zoo.create_model("cronusvla_0_5b")
        lib = zoo.create_model("cronusvla_7b_libero")
    assert m7.feature_dim == 4096 and m05.feature_dim == 896
    assert (m7.num_frames, m7.chunk_len, lib.num_frames, lib.chunk_len, m05.num_frames) == (7, 16, 4, 8, 4)
    dec = m7.decoder
    assert len(dec.blocks) == 12 and dec.pos_embed.shape == (17, 768) and dec.num_condition_tokens == 12
    assert dec.condition.extend_dim == 682 and m7.projector[0].in_features == 1024 + 1152
    assert m7.vision.dino.patch_embed.num_patches == 256 and len(m7.vision.dino.blocks) == 24
    assert len(m7.vision.siglip.blocks) == 27 and m7.llm.config.num_hidden_layers == 32
    n7 = sum(p.numel() for p in m7.parameters())
    nd = sum(p.numel() for p in dec.parameters())
    assert 7.5e9 < n7 - nd < 7.7e9  # OpenVLA-7B: ~7.54B (Llama-2 6.74B + ViTs 0.73B + projector)
    assert 1.2e9 < sum(p.numel() for p in m05.parameters()) < 1.5e9
