"""Skywork UniPic: one LLM shared by text-to-image, image editing and image understanding.

"Skywork UniPic: Unified Autoregressive Modeling for Visual Understanding and Generation" (Skywork AI, arXiv
2508.03320); official code ``SkyworkAI/UniPic`` folder ``UniPic-1`` (``src/models/skywork_unipic_siglip.py``,
``skywork_unipic_dev.py``). Structure:

- a frozen VAE (MAR's KL-16, latents x 0.2325) -> MAR-Huge encoder over the visible tokens, 64 buffer tokens holding
  the learned ``fake_latent`` (:mod:`zoo.unipic_mar`);
- the LLM bridge (Qwen2.5-1.5B-Instruct): the encoder output goes through ``proj_in``, the buffer tokens are moved
  to the END of the image sequence, which follows the ChatML-formatted prompt; the LLM runs causally (position ids =
  cumsum of the padding mask); its last hidden states over the image tokens are rotated back (buffer first), go
  through ``proj_out`` and are ADDED to the MAR-encoder output (residual), which the MAR decoder turns into one
  condition per token for the DiffLoss head;
- editing: the source image's unmasked encoder features are spliced (through ``proj_in``, rotated) into the
  ``<image>`` slots of the instruction prompt, and fill the decoder's masked slots (``x_con``);
- understanding: SigLIP2 so400m/16 at 512 px + a 2-layer MLP into the ``<image>`` slots (the paper), or the
  released code's VAE + MAR-encoder features through ``proj_in`` (``understanding="mar"``); next-token prediction;
- sampling (:func:`generate_images`, :func:`edit_images`): MaskGIT cosine schedule over ``num_iter`` steps, CFG 3.0
  against the negative prompt "Generate an image." ("Repeat this image." for edits), generation orders and masks
  shared by the conditional and unconditional halves, the text prefix's KV cache cropped back after every step.

``conditioning="bag"`` replaces the LLM by a mean of learned token embeddings written into the buffer tokens: the
MAR-only baseline of the results (not in the paper). Losses live in :mod:`tasks.unipic`.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._builder import build_model
from ._registry import register_model
from .llm import build_causal_lm
from .unipic_mar import MAR, MAR_KL16_VAE, PixelLatents, convert_mar_checkpoint, convert_mar_vae, \
    interpolate_pos_table, mask_by_order, next_mask_len

__all__ = [
    "UniPic", "ByteChatTokenizer", "load_tokenizer", "chat_prompt", "tokenize", "rotate_buffer_to_end",
    "rotate_buffer_to_front", "t2i_text", "generate_images", "edit_images", "answer_questions", "convert_unipic_checkpoint",
    "checkpoint_filter_fn", "QWEN25_15B", "SIGLIP2_SO400M_512", "MAR_HUGE", "NEGATIVE_PROMPT", "EDIT_NEGATIVE_PROMPT",
]

#: the ChatML instruction template of the official config (xtuner's qwen_chat INSTRUCTION)
CHAT_TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
IMAGE_TOKEN = "<image>"
NEGATIVE_PROMPT = "Generate an image."
#: text-to-image prompts are "Generate an image: <caption>" in training and sampling (the official datasets/scripts)
T2I_PREFIX = "Generate an image: "
EDIT_NEGATIVE_PROMPT = "Repeat this image."

#: Qwen2.5-1.5B-Instruct (its config.json)
QWEN25_15B: dict[str, Any] = dict(
    model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False, bos_token_id=151643,
    eos_token_id=151645,
)
#: google/siglip2-so400m-patch16-512 vision tower (transformers SiglipVisionConfig, as the official code loads it)
SIGLIP2_SO400M_512: dict[str, Any] = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=16,
    image_size=512,
)
#: mar_huge as UniPic configures it (img_size 512: 32x32 position tables, DiffLoss 12 x 1536)
MAR_HUGE: dict[str, Any] = dict(
    img_size=512, vae_stride=16, patch_size=1, latent_channels=16, encoder_dim=1280, encoder_depth=20,
    encoder_heads=16, decoder_dim=1280, decoder_depth=20, decoder_heads=16, buffer_size=64, attn_drop=0.1,
    proj_drop=0.1, mask_ratio_min=0.7, diffloss_width=1536, diffloss_depth=12, diffusion_steps=1000,
    sampling_steps=100, diffusion_batch_mul=4,
)

MODEL_CARD: dict[str, Any] = {
    "paper": "Skywork AI. Skywork UniPic: Unified Autoregressive Modeling for Visual Understanding and Generation. "
             "Tech report, arXiv 2508.03320 (2025)",
    "url": "https://arxiv.org/abs/2508.03320",
    "code": "https://github.com/SkyworkAI/UniPic (UniPic-1)",
    "license": "architecture: paper; Qwen2.5 / SigLIP2 / MAR configs: their licences (Apache-2.0, Apache-2.0, MIT); "
               "this implementation: Apache-2.0 (no code copied from the official repository)",
    "reported_params_m": {},
    "component_params_m": {
        "unipic_1p5b": "measured on the meta device, 2995.8 in all: LLM 1543.7 (Qwen2.5-1.5B, tied embeddings), "
                       "MAR-H 944.1 (encoder 393.5 + decoder 393.5 + DiffLoss 151.2 + tables/projections), SigLIP2 "
                       "so400m/16 428.8 + projector 4.1, proj_in/proj_out 8.7, VAE 66.5 (frozen); the paper: ~1B "
                       "for MAR (elsewhere '800M MAR module') and a 1.5B LLM",
    },
    "deviations": [
        "Understanding defaults to the paper's SigLIP2 tower (transformers SiglipVisionModel, last hidden state) + "
        "MLP projector; the released code instead feeds VAE + MAR-encoder features through proj_in (issue #22): "
        "selectable with understanding='mar'. Which SigLIP layer the paper reads is not stated.",
        "The negative prompt's padding: the official prefill runs the right-padded prompt pair without an attention "
        "mask (padding visible to nothing that matters, as padding comes last); here the prefill uses the mask.",
        "DiffLoss schedule quantities are computed in float64 from diffusers' float32 cosine betas (improved DDPM "
        "computes the betas in float64): differences ~1e-7.",
        "Sampling noise comes from torch.Generator on the CPU (the official code draws CUDA noise): same distribution, "
        "not the same numbers.",
        "Training masks: one mask ratio per batch (as MAR) drawn by inverse-CDF sampling of the truncated normal "
        "(MAR: scipy.stats.truncnorm); orders from torch.rand().argsort() (MAR: numpy shuffles).",
        "conditioning='bag' (learned mean token embedding in the buffer tokens, no LLM) is this repository's MAR-only "
        "baseline for the results, not a paper model.",
        "Tiny models (unipic_tiny): pixel latents (avg-pool 2, nearest upsampling) instead of a VAE, a byte-level "
        "ChatML tokenizer (256 bytes + 5 specials) instead of Qwen's BPE, a 2-layer Qwen2-shaped LLM.",
        "No released-weight manifest: Skywork/Skywork-UniPic-1.5B is a .pth of the official layout; it converts "
        "through checkpoint_filter_fn (tested on files the tests write), with MAR's kl16.ckpt for the VAE.",
    ],
}


# ------------------------------------------------------------------------------------------------ tokenizers
class ByteChatTokenizer:
    """A byte-level tokenizer with the ChatML specials (the tiny models' stand-in for Qwen's BPE): ids 0-255 are
    bytes, then ``<|endoftext|> <|im_start|> <|im_end|> <image> <pad>``."""

    SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN, "<pad>")

    def __init__(self) -> None:
        self.special_ids = {s: 256 + i for i, s in enumerate(self.SPECIALS)}
        self._split = re.compile("(" + "|".join(re.escape(s) for s in self.SPECIALS) + ")")
        self.image_token_id = self.special_ids[IMAGE_TOKEN]
        self.pad_token_id = self.special_ids["<pad>"]
        self.eos_token_id = self.special_ids["<|im_end|>"]
        self.vocab_size = 256 + len(self.SPECIALS)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._split.split(text):
            ids.extend([self.special_ids[part]] if part in self.special_ids else part.encode("utf-8"))
        return ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFChatTokenizer:
    """A transformers tokenizer from a local folder (Qwen2.5's), with ``<image>`` added as a special token.

    Args:
        path: local tokenizer folder (or a hub id already in the local cache; nothing is downloaded).
    """

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        self.image_token_id = self.tok.convert_tokens_to_ids(IMAGE_TOKEN)
        self.eos_token_id = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.pad_token_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=True)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(spec: str) -> ByteChatTokenizer | HFChatTokenizer:
    """``"bytes"`` -> :class:`ByteChatTokenizer`; else a local tokenizer folder -> :class:`HFChatTokenizer`."""
    return ByteChatTokenizer() if spec == "bytes" else HFChatTokenizer(spec)


def t2i_text(caption: str) -> str:
    """The user text of a text-to-image prompt: ``"Generate an image: <caption>"``."""
    return T2I_PREFIX + caption.strip()


def chat_prompt(text: str, image_tokens: int = 0) -> str:
    """The ChatML user turn of ``text``; with ``image_tokens`` > 0 it starts with that many ``<image>`` tokens and a
    newline (the official scripts' ``"<image>\\n" + prompt``, the placeholder repeated)."""
    return CHAT_TEMPLATE.format(input=(IMAGE_TOKEN * image_tokens + "\n" if image_tokens else "") + text.strip())


def tokenize(tokenizer: Any, texts: list[str], device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (pad id) and the boolean attention mask of already-formatted ``texts``."""
    ids = [torch.tensor(tokenizer.encode(t), dtype=torch.long) for t in texts]
    n = max(len(i) for i in ids)
    out = torch.full((len(ids), n), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(ids), n, dtype=torch.bool)
    for r, i in enumerate(ids):
        out[r, :len(i)], mask[r, :len(i)] = i, True
    return out.to(device), mask.to(device)


# -------------------------------------------------------------------------------------------- buffer rotation
def rotate_buffer_to_end(x: torch.Tensor, buffer: int) -> torch.Tensor:
    """[buffer, image] -> [image, buffer] along dim 1 (before the LLM)."""
    return torch.cat([x[:, buffer:], x[:, :buffer]], dim=1)


def rotate_buffer_to_front(x: torch.Tensor, buffer: int) -> torch.Tensor:
    """[image, buffer] -> [buffer, image] along dim 1 (after the LLM); the inverse of :func:`rotate_buffer_to_end`."""
    return torch.cat([x[:, -buffer:], x[:, :-buffer]], dim=1)


def scale_gradient(x: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Identity forward; the gradient multiplied by ``scale`` (the official ``_ScaleGradient``)."""
    return x if scale is None or scale == 1.0 else x * scale + x.detach() * (1 - scale)


def crop_cache(cache: Any, length: int) -> None:
    """Cut a transformers cache back to its first ``length`` positions (the prompt), across the API change of
    ``Cache.crop`` (older: the length to keep; 5.2x: minus the number of positions to remove)."""
    extra = cache.get_seq_length() - length
    if extra <= 0:
        return
    try:
        cache.crop(-extra)
    except ValueError:
        cache.crop(length)


def _cache_kwarg(module: nn.Module) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values``: the decoder's name for the KV cache argument."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


# --------------------------------------------------------------------------------------------------- the model
class UniPic(nn.Module):
    """Skywork UniPic (module docstring).

    Args:
        mar: :class:`~zoo.unipic_mar.MAR` arguments (MAR-H by default).
        llm: the LLM: a causal-LM config dict with ``model_type`` (random init), or a local model folder.
        vae: diffusers ``AutoencoderKL`` config (MAR KL-16), or None for pixel latents (tiny models).
        pixel_stride: pooling of the pixel latents when ``vae`` is None.
        vae_scale: latent scale (0.2325).
        tokenizer: ``"bytes"`` or a local tokenizer folder (Qwen2.5's).
        conditioning: ``"llm"`` (UniPic) or ``"bag"`` (the MAR-only baseline: no LLM).
        understanding: ``"siglip2"`` (the paper), ``"mar"`` (the released code) or ``"none"``.
        siglip: transformers ``SiglipVisionConfig`` fields of the understanding tower.
        grad_scale: gradient scale on the source-image / understanding features (the official 0.1; None = 1).
    """

    def __init__(self, mar: dict[str, Any] | None = None, llm: dict[str, Any] | str | None = None,
                 vae: dict[str, Any] | None = None, pixel_stride: int = 2, vae_scale: float = 0.2325,
                 tokenizer: str = "bytes", conditioning: str = "llm", understanding: str = "siglip2",
                 siglip: dict[str, Any] | None = None, grad_scale: float | None = 0.1) -> None:
        super().__init__()
        if conditioning not in ("llm", "bag"):
            raise ValueError(f"conditioning must be 'llm' or 'bag', got {conditioning!r}")
        if understanding not in ("siglip2", "mar", "none"):
            raise ValueError(f"understanding must be 'siglip2', 'mar' or 'none', got {understanding!r}")
        if conditioning == "bag" and understanding != "none":
            raise ValueError("understanding needs the LLM: use conditioning='llm' or understanding='none'")
        self.conditioning, self.understanding = conditioning, understanding
        self.vae_scale, self.grad_scale = vae_scale, grad_scale
        self.tokenizer = load_tokenizer(tokenizer)
        self.mar = MAR(**(mar or MAR_HUGE))
        if vae is None:
            self.vae: nn.Module = PixelLatents(pixel_stride)
            self.latent_stride = pixel_stride
        else:
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL(**vae)
            self.latent_stride = 2 ** (len(vae["block_out_channels"]) - 1)
        self.vae.requires_grad_(False)
        if self.vae_channels != self.mar.latent_channels:
            raise ValueError(f"the VAE gives {self.vae_channels} latent channels, MAR expects "
                             f"{self.mar.latent_channels}")
        enc = self.mar.encoder_dim
        if conditioning == "llm":
            spec = dict(llm or QWEN25_15B) if not isinstance(llm, str) else llm
            if isinstance(spec, dict) and spec.get("vocab_size", 0) < self.tokenizer.vocab_size:
                spec["vocab_size"] = self.tokenizer.vocab_size
            self.llm = build_causal_lm(spec)
            hidden = self.llm.config.hidden_size
            self.proj_in = _mlp(enc, hidden, hidden)
            self.proj_out = _mlp(hidden, hidden, enc)
        else:
            self.llm = None
            self.text_bag = nn.Embedding(self.tokenizer.vocab_size, enc)
            nn.init.normal_(self.text_bag.weight, std=0.02)
        self.siglip = None
        if understanding == "siglip2":
            from transformers import SiglipVisionConfig, SiglipVisionModel

            cfg = SiglipVisionConfig(**(siglip or SIGLIP2_SO400M_512))
            self.siglip = SiglipVisionModel(cfg)
            self.siglip_proj = _mlp(cfg.hidden_size, self.llm.config.hidden_size, self.llm.config.hidden_size)

    # -------------------------------------------------------------------------------------------- shapes
    @property
    def vae_channels(self) -> int:
        return 3 if isinstance(self.vae, PixelLatents) else int(self.vae.config.latent_channels)

    @property
    def image_size(self) -> int:
        """The image size MAR's position tables are learned for."""
        return self.mar.img_size

    @property
    def und_image_size(self) -> int:
        return int(self.siglip.config.image_size) if self.siglip is not None else self.mar.img_size

    def grid(self, image_size: int) -> tuple[int, int]:
        g = image_size // self.latent_stride // self.mar.patch_size
        return g, g

    def image_token_count(self, image_size: int | None = None) -> int:
        """``<image>`` slots of a source image in an editing prompt: grid tokens + buffer."""
        g = self.grid(image_size or self.image_size)
        return g[0] * g[1] + self.mar.buffer_size

    def und_token_count(self) -> int:
        """``<image>`` slots of an understanding prompt."""
        if self.siglip is not None:
            return (self.siglip.config.image_size // self.siglip.config.patch_size) ** 2
        return self.image_token_count(self.und_image_size)

    # ------------------------------------------------------------------------------------------- the VAE
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images in [-1, 1] (B, 3, H, W) -> MAR tokens (B, L, C) scaled by ``vae_scale``, and their grid."""
        self.vae.eval()
        if isinstance(self.vae, PixelLatents):
            z = self.vae.encode(images)
        else:
            z = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        z = z.float() * self.vae_scale
        p = self.mar.patch_size
        return self.mar.patchify(z), (z.shape[-2] // p, z.shape[-1] // p)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """MAR tokens -> images in [-1, 1]."""
        z = self.mar.unpatchify(tokens.float(), grid) / self.vae_scale
        if isinstance(self.vae, PixelLatents):
            return self.vae.decode(z).clamp(-1, 1)
        return self.vae.decode(z.to(self.vae.dtype)).sample.float().clamp(-1, 1)

    # ------------------------------------------------------------------------------------------ the bridge
    def embed_text(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """LLM input embeddings of ``input_ids``, the ``<image>`` slots filled with ``image_embeds`` (B, N, H) in
        order (each row must hold N slots)."""
        image = input_ids == self.tokenizer.image_token_id
        ids = input_ids.masked_fill(image, 0)
        emb = self.llm.get_input_embeddings()(ids)
        if image_embeds is None:
            if image.any():
                raise ValueError("the prompt has <image> slots but no image features were given")
            return emb
        n = image.sum(1)
        if (n != image_embeds.shape[1]).any():
            raise ValueError(f"<image> slots per prompt {n.tolist()} != image tokens {image_embeds.shape[1]}")
        return emb.masked_scatter(image[..., None], image_embeds.to(emb.dtype))

    def visual_features(self, tokens: torch.Tensor, grid: tuple[int, int], mask: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """MAR-encoder features of the visible tokens (``fake_latent`` buffer) and their LLM-side version:
        ``proj_in`` applied, the buffer moved to the end."""
        if mask is None:
            mask = tokens.new_zeros(tokens.shape[:2])
        x_enc = self.mar.forward_encoder(tokens, mask, grid)
        return x_enc, rotate_buffer_to_end(self.proj_in(x_enc), self.mar.buffer_size)

    def bridge(self, tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int], text_embeds: torch.Tensor,
               attention_mask: torch.Tensor, past_key_values: Any = None) -> torch.Tensor:
        """MAR-encoder output + proj_out(LLM(prompt, image tokens)) (the residual bridge), buffer first.

        Args:
            tokens: (B, L, C) tokens (masked ones are ignored).
            mask: (B, L), 1 = masked.
            grid: token grid.
            text_embeds: (B, T, H) prompt embeddings (ignored when ``past_key_values`` holds them).
            attention_mask: (B, T) prompt padding mask.
            past_key_values: a cache holding exactly the prompt (it grows by the image tokens; crop it after).
        """
        x_enc, z_enc = self.visual_features(tokens, grid, mask)
        n = z_enc.shape[1]
        attn = torch.cat([attention_mask.bool(), attention_mask.new_ones(attention_mask.shape[0], n).bool()], 1)
        pos = (attn.long().cumsum(1) - 1).clamp(min=0)
        if past_key_values is None:
            inputs = torch.cat([text_embeds, z_enc.to(text_embeds.dtype)], dim=1)
        else:
            inputs, pos = z_enc.to(self.llm.dtype), pos[:, -n:]
        out = self.llm.model(inputs_embeds=inputs, attention_mask=attn, position_ids=pos,
                             use_cache=past_key_values is not None, **{_cache_kwarg(self.llm.model): past_key_values})
        z_llm = rotate_buffer_to_front(out.last_hidden_state[:, -n:], self.mar.buffer_size)
        return x_enc + self.proj_out(z_llm).to(x_enc.dtype)

    def bag_buffer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The MAR-only baseline's buffer: the mean of learned embeddings of the prompt's tokens."""
        m = attention_mask.to(self.text_bag.weight.dtype)[..., None]
        return (self.text_bag(input_ids) * m).sum(1) / m.sum(1).clamp(min=1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, grid: tuple[int, int] | None = None,
                source_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token DiffLoss conditions z (B, L, D) of text-to-image (or editing, with ``source_tokens``).

        Args:
            tokens: (B, L, C) target tokens (``encode_images``).
            mask: (B, L), 1 = masked (predicted).
            input_ids: (B, T) ChatML prompt ids (editing: with ``image_token_count()`` ``<image>`` slots).
            attention_mask: (B, T) prompt padding mask.
            grid: token grid (square from L by default).
            source_tokens: (B, L, C) source-image tokens of an edit.
        """
        if grid is None:
            g = int(round(tokens.shape[1] ** 0.5))
            grid = (g, g)
        if self.conditioning == "bag":
            x_enc = self.mar.forward_encoder(tokens, mask, grid, buffer=self.bag_buffer(input_ids, attention_mask))
            x_con = None
            if source_tokens is not None:
                x_con = scale_gradient(self.mar.forward_encoder(
                    source_tokens, source_tokens.new_zeros(source_tokens.shape[:2]), grid,
                    buffer=self.bag_buffer(input_ids, attention_mask)), self.grad_scale)
            return self.mar.forward_decoder(x_enc, mask, grid, x_con)
        x_con = image_embeds = None
        if source_tokens is not None:
            x_con, image_embeds = self.visual_features(source_tokens, grid)
            x_con, image_embeds = scale_gradient(x_con, self.grad_scale), scale_gradient(image_embeds, self.grad_scale)
        text = self.embed_text(input_ids, image_embeds)
        x_enc = self.bridge(tokens, mask, grid, text, attention_mask)
        return self.mar.forward_decoder(x_enc, mask, grid, x_con)

    # ------------------------------------------------------------------------------------- understanding
    def understanding_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, H) LLM-side features of images in [-1, 1] for the ``<image>`` slots."""
        size = self.und_image_size
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
        if self.understanding == "siglip2":
            dtype = self.siglip.dtype
            feats = self.siglip(pixel_values=images.to(dtype)).last_hidden_state  # SigLIP's mean/std 0.5: [-1, 1]
            return scale_gradient(self.siglip_proj(feats), self.grad_scale)
        if self.understanding == "mar":
            tokens, grid = self.encode_images(images)
            return scale_gradient(self.visual_features(tokens, grid)[1], self.grad_scale)
        raise ValueError("this model was built with understanding='none'")

    def understanding_logits(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                             ) -> torch.Tensor:
        """Next-token logits of a conversation whose ``<image>`` slots hold the image's features."""
        emb = self.embed_text(input_ids, self.understanding_features(images))
        pos = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        return self.llm(inputs_embeds=emb, attention_mask=attention_mask, position_ids=pos).logits

    # ---------------------------------------------------------------------------------------- compile
    def compile_regions(self) -> list[nn.Module]:
        """The repeated blocks ``compile='regional'`` compiles in place (blocks of one class share one graph): the MAR
        encoder / decoder blocks, the DiffLoss residual blocks, the LLM decoder layers and the SigLIP encoder
        layers."""
        blocks = list(self.mar.encoder_blocks) + list(self.mar.decoder_blocks)
        blocks += list(self.mar.diffloss.net.res_blocks)
        if self.llm is not None:
            from .llm import decoder_layers

            blocks += decoder_layers(self.llm)
        if self.siglip is not None:
            blocks += list(getattr(self.siglip, "vision_model", self.siglip).encoder.layers)  # transformers 4 / 5
        return blocks


# ------------------------------------------------------------------------------------------------- sampling
def _cfg_pairs(texts: list[str], negative: str, cfg: float) -> list[str]:
    return texts + [negative] * len(texts) if cfg != 1.0 else texts


@torch.no_grad()
def sample_tokens(model: UniPic, texts: list[str], grid: tuple[int, int], num_iter: int = 64, cfg: float = 3.0,
                  negative_prompt: str = NEGATIVE_PROMPT, temperature: float = 1.0,
                  generator: torch.Generator | None = None, source_tokens: torch.Tensor | None = None,
                  use_cache: bool = True) -> torch.Tensor:
    """MaskGIT-style sampling of (n, L, C) tokens for ``texts`` (already the user text, not ChatML).

    With ``cfg != 1`` the batch is [cond; uncond] (the negative prompt): one generation order, one mask per step and
    one set of sampled tokens shared by both halves. ``source_tokens`` (n, L, C) makes it an edit (the source
    features in the prompt's ``<image>`` slots and as the decoder's ``x_con``).
    """
    device = model.mar.fake_latent.device
    n, L = len(texts), grid[0] * grid[1]
    slots = source_tokens.shape[1] + model.mar.buffer_size if source_tokens is not None else 0
    prompts = [chat_prompt(t, slots) for t in _cfg_pairs(texts, negative_prompt, cfg)]
    input_ids, attn = tokenize(model.tokenizer, prompts, device)
    b = input_ids.shape[0]
    x_con = image_embeds = None
    if source_tokens is not None:
        src = torch.cat([source_tokens, source_tokens]) if cfg != 1.0 else source_tokens
        if model.conditioning == "llm":
            x_con, image_embeds = model.visual_features(src.to(device), grid)
    past = text = None
    if model.conditioning == "llm":
        text = model.embed_text(input_ids, image_embeds)
        if use_cache:
            from transformers import DynamicCache

            past = DynamicCache()
            pos = (attn.long().cumsum(1) - 1).clamp(min=0)
            model.llm.model(inputs_embeds=text, attention_mask=attn, position_ids=pos, use_cache=True,
                            **{_cache_kwarg(model.llm.model): past})
    else:
        buffer = model.bag_buffer(input_ids, attn)
        if source_tokens is not None:
            x_con = model.mar.forward_encoder(src.to(device), src.new_zeros(src.shape[:2]).to(device), grid,
                                              buffer=buffer)
    tokens = torch.zeros(b, L, model.mar.token_dim, device=device)
    mask = torch.ones(b, L, device=device)
    orders = model.mar.sample_orders(n, L, generator)
    if cfg != 1.0:
        orders = torch.cat([orders, orders])  # the same order for the conditional and unconditional halves
    for step in range(num_iter):
        if model.conditioning == "llm":
            x_enc = model.bridge(tokens, mask, grid, text, attn, past)
            if past is not None:
                crop_cache(past, input_ids.shape[1])  # back to the prompt: the next step's image tokens differ
        else:
            x_enc = model.mar.forward_encoder(tokens, mask, grid, buffer=buffer)
        z = model.mar.forward_decoder(x_enc, mask, grid, x_con)
        masked_now = int(mask[0].sum())
        mask_len = next_mask_len(step, num_iter, L, masked_now)
        mask_next = mask_by_order(mask_len, orders).to(mask.dtype)
        to_pred = mask.bool() if step >= num_iter - 1 else mask.bool() & ~mask_next.bool()
        # rows [cond; uncond] share to_pred, so z[to_pred] lists the cond tokens then the same uncond tokens
        sampled = model.mar.diffloss.sample(z[to_pred], temperature, cfg, generator)
        half = to_pred[:n]
        new = tokens[:n].clone()
        new[half] = sampled.to(new.dtype)
        tokens = torch.cat([new, new]) if cfg != 1.0 else new
        mask = mask_next
    return tokens[:n]


@torch.no_grad()
def generate_images(model: UniPic, prompts: list[str], num_iter: int = 64, cfg: float = 3.0,
                    negative_prompt: str = NEGATIVE_PROMPT, image_size: int | None = None, temperature: float = 1.0,
                    seed: int | None = 0) -> torch.Tensor:
    """Text-to-image: images in [-1, 1] (n, 3, H, W) at ``image_size`` (default: the MAR tables' size; any multiple
    of the token stride works through the interpolated position tables)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    grid = model.grid(image_size or model.image_size)
    prompts = [t2i_text(p) for p in prompts]
    return model.decode_tokens(sample_tokens(model, prompts, grid, num_iter, cfg, negative_prompt, temperature, gen),
                               grid)


@torch.no_grad()
def edit_images(model: UniPic, images: torch.Tensor, instructions: list[str], num_iter: int = 64, cfg: float = 3.0,
                negative_prompt: str = EDIT_NEGATIVE_PROMPT, temperature: float = 1.0, seed: int | None = 0
                ) -> torch.Tensor:
    """Image editing: source images in [-1, 1] + instructions -> edited images at the source size."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    src, grid = model.encode_images(images.to(model.mar.fake_latent.device))
    tokens = sample_tokens(model, instructions, grid, num_iter, cfg, negative_prompt, temperature, gen,
                           source_tokens=src)
    return model.decode_tokens(tokens, grid)


@torch.no_grad()
def answer_questions(model: UniPic, images: torch.Tensor, questions: list[str], max_new_tokens: int = 16
                     ) -> list[str]:
    """Greedy answers to ``questions`` about ``images`` (in [-1, 1]); stops at ``<|im_end|>``."""
    from transformers import DynamicCache

    device = model.mar.fake_latent.device
    prompts = [chat_prompt(q, model.und_token_count()) for q in questions]
    ids, attn = tokenize(model.tokenizer, prompts, device)
    # left-align the answers: generate per row (rows differ in length)
    out: list[str] = []
    feats = model.understanding_features(images.to(device))
    for r in range(len(prompts)):
        row = ids[r:r + 1, : int(attn[r].sum())]
        emb = model.embed_text(row, feats[r:r + 1])
        past, answer = DynamicCache(), []
        key = _cache_kwarg(model.llm.model)
        logits = model.llm(inputs_embeds=emb, use_cache=True, **{key: past}).logits
        for _ in range(max_new_tokens):
            nxt = int(logits[0, -1].argmax())
            if nxt == model.tokenizer.eos_token_id:
                break
            answer.append(nxt)
            logits = model.llm(input_ids=torch.tensor([[nxt]], device=device), use_cache=True, **{key: past}).logits
        out.append(model.tokenizer.decode(answer).strip())
    return out


# -------------------------------------------------------------------------------------- official checkpoints
def convert_unipic_checkpoint(state_dict: dict[str, torch.Tensor], model: UniPic) -> dict[str, torch.Tensor]:
    """An official UniPic checkpoint (``mar.*``, ``llm.*``, ``proj_in/out.*``, ``siglip2.*``, ``siglip2_proj.*``,
    optionally LDM ``vae.*``) or an official MAR ``.pth`` (its ``model_ema`` / ``model``) -> this model's keys. MAR
    position tables of another grid (MAR's 256-px 16x16 tables) are interpolated to the model's; keys the file lacks
    (the VAE, the SigLIP tower of a MAR-only file) keep the model's own tensors."""
    sd = state_dict
    for key in ("model_ema", "model", "state_dict"):
        if isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if not any(k.startswith("mar.") for k in sd):  # a MAR-only checkpoint
        sd = {f"mar.{k}": v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    mar = convert_mar_checkpoint({k[4:]: v for k, v in sd.items() if k.startswith("mar.")})
    grid = (model.mar.seq_h, model.mar.seq_w)
    for k, v in mar.items():
        if k.endswith("pos_embed_learned") and v.shape != getattr(model.mar, k).shape:
            buf = 0 if k.startswith("diffusion") else model.mar.buffer_size
            g = int(round((v.shape[1] - buf) ** 0.5))
            v = interpolate_pos_table(v, (g, g), grid, buf)
        out[f"mar.{k}"] = v
    renames = (("siglip2_proj.", "siglip_proj."), ("siglip2.", "siglip."), ("llm.", "llm."), ("proj_in.", "proj_in."),
               ("proj_out.", "proj_out."))
    for k, v in sd.items():
        for old, new in renames:
            if k.startswith(old):
                out[new + k[len(old):]] = v
                break
    vae = {k[4:]: v for k, v in sd.items() if k.startswith("vae.")}
    if vae and not isinstance(model.vae, PixelLatents):
        out |= {f"vae.{k}": v for k, v in convert_mar_vae(vae, dict(model.vae.config)).items()}
    known = ("mar.", "vae.") + tuple(old for old, _ in renames)
    unknown = [k for k in sd if not k.startswith(known)]
    if unknown:
        raise KeyError(f"official UniPic keys without a counterpart: {unknown[:8]}")
    own = model.state_dict()
    out = _retie(out, model)
    return out | {k: v for k, v in own.items() if k not in out}


def _retie(sd: dict[str, torch.Tensor], model: nn.Module | None) -> dict[str, torch.Tensor]:
    """Give the LLM's tied input embedding / LM head the twin an official checkpoint may lack, before the converter
    fills the keys it lacks from the model (which would otherwise give the missing twin the model's own, different
    values)."""
    llm = getattr(model, "llm", None)
    if llm is None or not getattr(llm.config, "tie_word_embeddings", False):
        return sd
    a, b = "llm.model.embed_tokens.weight", "llm.lm_head.weight"
    if a in sd and b not in sd:
        sd = {**sd, b: sd[a]}
    elif b in sd and a not in sd:
        sd = {**sd, a: sd[b]}
    return sd


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None
                         ) -> dict[str, torch.Tensor]:
    """Used by ``zoo.load_checkpoint`` / ``create_model(pretrained=path)``: official UniPic / MAR files convert;
    this repository's own state dicts pass through."""
    sd = state_dict
    for key in ("model_ema", "model"):
        if isinstance(sd.get(key), dict):
            sd = sd[key]
    official = any(k.startswith(("siglip2.", "siglip2_proj.")) for k in sd) or \
        any(k.startswith("encoder_blocks.") for k in sd) or any(k.startswith("mar.diffloss.net.time_embed.mlp") for k in
                                                                  sd)
    if not official:  # a tied twin that our safetensors stored once is refilled by zoo._pretrained.load_into
        return state_dict
    if not isinstance(model, UniPic):
        raise TypeError("converting an official UniPic / MAR checkpoint needs the target model")
    return convert_unipic_checkpoint(state_dict, model)


# ------------------------------------------------------------------------------------------------ entrypoints
def _variant(name: str, pretrained: bool | str, defaults: dict[str, Any], **kwargs: Any) -> UniPic:
    return build_model(UniPic, name, pretrained, defaults, **kwargs)  # type: ignore[return-value]


@register_model
def unipic_1p5b(pretrained: bool | str = False, **kwargs: Any) -> UniPic:
    """Skywork UniPic 1.5B, paper size: Qwen2.5-1.5B-Instruct + MAR-Huge (20+20 x 1280, 64 buffer tokens, DiffLoss
    12 x 1536) over MAR's KL-16 VAE (x 0.2325) + SigLIP2 so400m/16 at 512 px; position tables for 512 px,
    interpolated for 1024 px generation. Needs a local Qwen2.5 tokenizer folder (``tokenizer=``)."""
    return _variant("unipic_1p5b", pretrained, dict(mar=MAR_HUGE, llm=QWEN25_15B, vae=MAR_KL16_VAE,
                                                    siglip=SIGLIP2_SO400M_512, tokenizer="bytes"), **kwargs)


#: the tiny config (spec "Tiny faithful config"): 2+2 blocks x 64, 4 heads, buffer 4, DiffLoss 2 x 64, 50/5 steps
TINY_MAR: dict[str, Any] = dict(
    img_size=32, vae_stride=2, patch_size=2, latent_channels=3, encoder_dim=64, encoder_depth=2, encoder_heads=4,
    decoder_dim=64, decoder_depth=2, decoder_heads=4, buffer_size=4, attn_drop=0.0, proj_drop=0.0,
    mask_ratio_min=0.7, diffloss_width=64, diffloss_depth=2, diffusion_steps=50, sampling_steps=5,
    diffusion_batch_mul=4,
)
TINY_LLM: dict[str, Any] = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                vocab_size=261, tie_word_embeddings=False, use_sliding_window=False)
TINY_SIGLIP: dict[str, Any] = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   patch_size=8, image_size=32)


@register_model
def unipic_tiny(pretrained: bool | str = False, **kwargs: Any) -> UniPic:
    """Tiny UniPic for CPU tests: 32-px pixel latents (stride 2, patch 2 -> 8x8 tokens of 12), MAR 2+2 x 64 with 4
    buffer tokens, DiffLoss 2 x 64 (50 training / 5 sampling steps), a 2-layer Qwen2-shaped LLM (hidden 64) on a
    byte-level ChatML tokenizer, a 2-layer SigLIP-shaped tower (patch 8, width 48)."""
    return _variant("unipic_tiny", pretrained, dict(mar=TINY_MAR, llm=TINY_LLM, vae=None, pixel_stride=2,
                                                    vae_scale=1.0, siglip=TINY_SIGLIP), **kwargs)
