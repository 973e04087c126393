"""NeuroPictorTask's speed switches change no maths: channels-last UNet / ControlNet / VAE and the fused AdamW give the
same loss, gradients and updated parameters as the default path (a tiny model with a VAE and the text tower, the
fine-tuning loss with its semantic term); compile_vae wires the VAE encoder into the in-place compiled regions."""
from __future__ import annotations

import pytest
import torch

from tasks.neuropictor import NeuroPictorTask

#: a 3-level VAE (f = 4): 16-px images -> 4x4x4 latents, enough to run every VAE encoder block
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
                latent_channels=4, norm_num_groups=4)


def _task(**kw) -> NeuroPictorTask:
    torch.manual_seed(0)
    task = NeuroPictorTask(model="neuropictor_tiny", model_kwargs=dict(vae=TINY_VAE, image_size=16),
                           sem_loss_weight=0.1, **kw)
    task.log_dict = lambda *a, **k: None  # no Trainer attached
    torch.manual_seed(1)
    for p in task.net.controlnet.parameters():  # move the zero-initialised convolutions off zero: gradients flow
        p.data.add_(0.02 * torch.randn(p.shape))  # not randn_like: a format-free draw
    return task.train()


def _step(task: NeuroPictorTask) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(2)
    batch = task.example_batch(3)
    batch["caption"] = ["a cat", "a house", "a face"]
    opt = task.configure_optimizers()
    torch.manual_seed(3)  # the noise, timesteps and VAE posterior sample
    loss = task.training_step(batch, 0)
    loss.backward()
    names = dict(task.named_parameters())
    grads = {n: p.grad.clone() for n, p in names.items() if p.grad is not None}
    opt.step()
    return loss.detach(), grads, {n: p.detach().clone() for n, p in names.items()}


@pytest.fixture(scope="module")
def reference():
    return _step(_task(channels_last=False, fused_adamw=False))


@pytest.mark.parametrize("kw", [dict(channels_last=True, fused_adamw=False),
                                dict(channels_last=False, fused_adamw=True),
                                dict(channels_last=True, fused_adamw=True)], ids=["channels_last", "fused", "both"])
def test_fast_paths_equal_the_default(reference, kw):
    task = _task(**kw)
    if kw["channels_last"]:
        for m in (task.net.unet, task.net.controlnet, task.net.vae.encoder, task.net.vae.decoder):
            assert m.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert bool(task.configure_optimizers().defaults["fused"]) == kw["fused_adamw"]
    loss, grads, params = _step(task)
    ref_loss, ref_grads, ref_params = reference
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) > 50
    assert any(n.startswith("net.controlnet.") for n in grads) and any(n.startswith("net.fmri_encoder.") for n in grads)
    assert not any(n.startswith(("net.unet.", "net.vae.", "net.text_encoder.")) for n in grads)  # frozen: no grads
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    # Adam's first step moves every weight by ~lr * sign(grad): near-zero gradients make it sensitive to float
    # rounding, so the updated weights agree to 5% of lr (1e-4; measured: 2e-6 channels-last, 1e-9 fused)
    for n, p in params.items():
        torch.testing.assert_close(p, ref_params[n], rtol=1e-5, atol=5e-6, msg=n)


def test_fused_adamw_default_follows_the_device():
    task = _task()  # fused_adamw=None: fused only when every trained parameter is on CUDA
    assert not task.configure_optimizers().defaults["fused"]
    assert task.channels_last is False and task.compile_vae is True


def test_compile_vae_joins_the_in_place_regions():
    """compile on: the VAE encoder (outside the network's forward) is compiled in place and listed in the regions
    eager_network() switches off; compile off, or compile_vae False: left alone. Nothing is run (no compilation)."""
    on = _task(compile=True)
    assert on._compiled is not None and on._regions == [on.net.vae.encoder]
    assert on.net.vae.encoder._compiled_call_impl is not None
    with on.eager_network():
        assert on.net.vae.encoder._compiled_call_impl is None
    assert on.net.vae.encoder._compiled_call_impl is not None
    assert "vae.encoder.conv_in.weight" in on.net.state_dict()  # names unchanged
    for kw in (dict(compile=True, compile_vae=False), dict()):
        off = _task(**kw)
        assert off._regions == [] and off.net.vae.encoder._compiled_call_impl is None
