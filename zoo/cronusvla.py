"""CronusVLA: a Prismatic/OpenVLA VLM whose per-frame EOS "cognition" features, cached over M frames, condition a
cross-frame diffusion action decoder.

"CronusVLA: Transferring Latent Motion Across Time for Multi-Frame Prediction in Manipulation" (v2: "... Towards
Efficient and Robust Manipulation via Multi-Frame Vision-Language-Action Modeling"), Li et al., arXiv 2506.19816.
Structure (the released ``vla/cronusvla.py`` and Prismatic):

- vision: timm DINOv2-L/14-reg4 and SigLIP-So400m/14 at 224 px, each read at its second-to-last block (Prismatic's
  ``get_intermediate_layers``, prefix tokens dropped), patch features channel-concatenated (1024 + 1152 = 2176), each
  backbone fed its own normalisation of the same [0, 1] image;
- projector: the fused GELU MLP (2176 -> 4 * 2176 -> d -> d);
- LLM: a Hugging Face causal LM from a config (``zoo.llm.build_causal_lm``): Llama-2-7B (d 4096) or Qwen2.5-0.5B
  (d 896); the patch embeddings are inserted after the BOS token;
- stage 1 (OpenVLA): next-token logits over the prompt + 7 action tokens (256 bins on the last vocabulary ids,
  :class:`ActionTokenizer`); the loss is in ``tasks.cronusvla``;
- post-training: :meth:`CronusVLA.cognition_features` runs the ``B * M`` frames as independent single-frame passes
  and takes the last-layer hidden state at the last non-pad position (the appended EOS); the M - 1 past features
  get no gradient (computed under ``no_grad``: the same values and gradients as the released ``detach``, without
  storing their activations); :class:`zoo.cronusvla_decoder.CrossFrameDiT` denoises the action chunk.

Inference (one VLM pass per control step, the feature deque, padding, un-normalisation, ensembling) is
:class:`zoo.cronusvla_policy.CronusVLAPolicy`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._builder import build_model
from ._registry import register_model
from .cronusvla_decoder import DIT_SIZES, CrossFrameDiT, sample_action_chunk

__all__ = ["ActionTokenizer", "PrismaticVision", "CronusVLA", "CronusVLAOutput", "convert_upstream_checkpoint",
           "checkpoint_filter_fn", "read_checkpoint", "LLAMA2_7B", "QWEN25_05B", "DINO_L14_REG4", "SIGLIP_SO400M"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Llama-2-7B as Prismatic builds it (32000 + <PAD>, padded to a multiple of 64)
LLAMA2_7B: dict[str, Any] = dict(model_type="llama", vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                 max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=32000)
#: Qwen2.5-0.5B (MiniVLA's prismatic 0.5B)
QWEN25_05B: dict[str, Any] = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                  max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                                  tie_word_embeddings=True, use_sliding_window=False, bos_token_id=151643,
                                  eos_token_id=151645, pad_token_id=151643)
DINO_L14_REG4: dict[str, Any] = dict(name="vit_large_patch14_reg4_dinov2", img_size=224)
SIGLIP_SO400M: dict[str, Any] = dict(name="vit_so400m_patch14_siglip_224", img_size=224)
#: the cognition suffix appended after the prompt: Llama "" (29871) + EOS; Qwen " " (220) + <|im_end|>
COGNITION_SUFFIX = {"llama": (29871, 2), "qwen2": (220, 151645)}

MODEL_CARD: dict[str, Any] = {
    "paper": "Li, Liu, Cheng, Yao, ..., Pang. CronusVLA: Transferring Latent Motion Across Time for Multi-Frame "
             "Prediction in Manipulation (v2: Towards Efficient and Robust Manipulation via Multi-Frame "
             "Vision-Language-Action Modeling). arXiv 2506.19816 (AAAI 2026)",
    "url": "https://arxiv.org/abs/2506.19816",
    "code": "https://github.com/InternRobotics/CronusVLA",
    "license": "architecture: paper; Llama-2 / Qwen2.5 / DINOv2 / SigLIP configs: their licences; this "
               "implementation: Apache-2.0 (no code copied from the official repository)",
    "reported_params_m": {},
    "deviations": [
        "Past frames are encoded under torch.no_grad instead of with grad then .detach() (released): identical "
        "features and gradients (tested), without storing the past frames' activations.",
        "CFG guidance keeps the released time-axis quirk by default (time_axis_cfg_quirk=True: only the first "
        "action_dim=7 actions of the chunk are guided, the rest use the conditional prediction); False guides the "
        "whole chunk.",
        "Feature-action retrieval (v1 'action adaptation') is not in the released code; here it is optional "
        "(retrieval_prior=True + FeatureActionBank) and every detail is an ASSUMPTION, configurable: the key "
        "(current feature, cosine), k=1, mean of the k chunks, and the prior entering the decoder as T extra "
        "self-attention tokens (Linear(7 -> hidden) + a zero-initialised position table).",
        "The released Prismatic VLM pads the Llama vocabulary to 32064 and appends token 29871 + EOS; the 0.5B uses "
        "MiniVLA's 'extra' action tokenizer (not reproduced: 256 bins on the last ids for both).",
        "Image augmentation, RLDS mixtures with per-dataset sampling weights and the 250k shuffle buffer are not "
        "reproduced; datamodules.rlds reads TFDS/RLDS TFRecords without TensorFlow (PNG/JPEG frames).",
        "No released weights are mirrored (HF JeasLee/*); convert a downloaded Prismatic-format .pt with "
        "create_model(name, pretrained='step-...pt') (read_checkpoint + convert_upstream_checkpoint).",
        "Tiny variant: 2+2-block tiny timm ViTs (patch 14 at 28 px), a 2-layer Llama of hidden 64 over a byte "
        "vocabulary of 300, DiT depth 2 / hidden 32 / 4 heads, chunk 4, M=3; for tests and the PyBullet demo "
        "(which overrides image size 56 px and M).",
        "CPU results recipe only (named options, off by default): stage 1 with objective='regression' (an MSE head "
        "on the EOS feature instead of OpenVLA action tokens) and post-training on a frozen VLM with cached "
        "per-frame features (CronusVLATask(freeze_vlm=True, feature_cache=True)); the paper fine-tunes the VLM.",
    ],
}


class ActionTokenizer:
    """OpenVLA's action tokenisation: each normalised dimension in [-1, 1] falls into one of ``bins`` uniform bins
    (edges ``linspace(-1, 1, bins)``), mapped onto the *last* ``bins`` vocabulary ids (bin index i -> id
    ``vocab_size - i``); decoding returns the bin centre.

    Args:
        vocab_size: the LLM's vocabulary size (Prismatic: the tokenizer's, without padding).
        bins: bins per dimension (256).
    """

    def __init__(self, vocab_size: int, bins: int = 256) -> None:
        self.vocab_size, self.bins = vocab_size, bins
        self.edges = torch.linspace(-1, 1, bins)
        self.centers = (self.edges[:-1] + self.edges[1:]) / 2

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """``[..., A]`` normalised actions -> token ids."""
        idx = torch.bucketize(actions.clamp(-1, 1).float().contiguous(), self.edges.to(actions.device), right=True)
        return self.vocab_size - idx.clamp(1, self.bins)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> bin-centre actions."""
        idx = (self.vocab_size - ids - 1).clamp(0, self.bins - 2)
        return self.centers.to(ids.device)[idx]


class PrismaticVision(nn.Module):
    """DINOv2 + SigLIP patch features, channel-concatenated (Prismatic's ``dinosiglip``).

    Args:
        dino: timm ViT spec (``name`` + kwargs such as ``img_size``, ``embed_dim``, ``depth``), ImageNet-normalised.
        siglip: timm ViT spec, normalised with mean = std = 0.5.
    """

    def __init__(self, dino: dict[str, Any], siglip: dict[str, Any]) -> None:
        super().__init__()
        import timm

        def make(spec: dict[str, Any]) -> nn.Module:
            spec = dict(spec)
            return timm.create_model(spec.pop("name"), pretrained=False, num_classes=0, **spec)

        self.dino, self.siglip = make(dino), make(siglip)
        self.register_buffer("dino_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("dino_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.embed_dim = self.dino.embed_dim + self.siglip.embed_dim

    @staticmethod
    def _patches(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # Prismatic reads the second-to-last block's output, without the final norm and without prefix tokens
        return vit.get_intermediate_layers(x, n=[len(vit.blocks) - 2])[0]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> ``[N, P, embed_dim]``."""
        d = self._patches(self.dino, (pixels - self.dino_mean) / self.dino_std)
        s = self._patches(self.siglip, (pixels - 0.5) / 0.5)
        return torch.cat([d, s], dim=-1)


@dataclass
class CronusVLAOutput:
    """``logits``: LM logits over the text positions (stage 1); ``features``: ``[B, M, d]`` feature chunk."""

    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None


class CronusVLA(nn.Module):
    """The CronusVLA network (VLM + cross-frame decoder).

    Args:
        llm: causal-LM spec for ``zoo.llm.build_causal_lm`` (a config dict with ``model_type``).
        dino: timm DINOv2 spec.
        siglip: timm SigLIP spec.
        image_size: input resolution (224); sets both ViTs' ``img_size``.
        patch_size: ViT patch size override (None: the timm model's, 14).
        num_frames: M, frames in the feature chunk (7: 7B SimplerEnv; 4: 0.5B and LIBERO).
        chunk_len: T, actions per chunk (16 post-training, 8 LIBERO).
        action_dim: action width (7).
        decoder_size: 'S', 'B' or 'L' (DIT_SIZES), or None to use ``decoder_depth/hidden/heads``.
        decoder_depth: decoder blocks (when ``decoder_size`` is None).
        decoder_hidden: decoder width (when ``decoder_size`` is None).
        decoder_heads: decoder heads (when ``decoder_size`` is None).
        extend_num: tokens of the current feature in the decoder (6).
        cfg_dropout_prob: null-chunk probability in training (0.1).
        retrieval_prior: decoder takes a retrieved prior chunk (v1 action adaptation; off, assumptions in the card).
        action_bins: bins per action dimension of stage 1 (256).
        action_stats_dims: width of the q01/q99 statistics buffers (= action_dim).
    """

    def __init__(self, llm: dict[str, Any] | None = None, dino: dict[str, Any] | None = None,
                 siglip: dict[str, Any] | None = None, image_size: int = 224, patch_size: int | None = None,
                 num_frames: int = 7, chunk_len: int = 16, action_dim: int = 7, decoder_size: str | None = "B",
                 decoder_depth: int = 12, decoder_hidden: int = 768, decoder_heads: int = 12, extend_num: int = 6,
                 cfg_dropout_prob: float = 0.1, retrieval_prior: bool = False, action_bins: int = 256,
                 action_stats_dims: int | None = None) -> None:
        super().__init__()
        from .llm import build_causal_lm

        llm = dict(llm or LLAMA2_7B)
        self.llm_family = llm["model_type"]
        self.image_size, self.num_frames = image_size, num_frames
        self.chunk_len, self.action_dim = chunk_len, action_dim
        size = dict(img_size=image_size) | (dict(patch_size=patch_size) if patch_size else {})
        self.vision = PrismaticVision(dict(dino or DINO_L14_REG4) | size, dict(siglip or SIGLIP_SO400M) | size)
        self.llm = build_causal_lm(llm)
        d = self.llm.config.hidden_size
        self.feature_dim = d
        v = self.vision.embed_dim
        self.projector = nn.Sequential(nn.Linear(v, 4 * v), nn.GELU(), nn.Linear(4 * v, d), nn.GELU(), nn.Linear(d, d))
        depth, hidden, heads = DIT_SIZES[decoder_size] if decoder_size else (decoder_depth, decoder_hidden,
                                                                             decoder_heads)
        self.decoder = CrossFrameDiT(action_dim, d, num_frames, chunk_len, hidden, depth, heads,
                                     extend_num=extend_num, cfg_dropout_prob=cfg_dropout_prob,
                                     retrieval_prior=retrieval_prior)
        self.action_tokenizer = ActionTokenizer(self.llm.config.vocab_size, action_bins)
        # per-dataset q01 / q99 action statistics (normalisation), saved with the weights; the mask leaves the
        # gripper unscaled (it is binarised instead)
        n = action_stats_dims or action_dim
        self.register_buffer("action_q01", -torch.ones(n))
        self.register_buffer("action_q99", torch.ones(n))
        self.register_buffer("action_mask", torch.tensor([1.0] * (n - 1) + [0.0]))

    # ------------------------------------------------------------------------------------------------ the VLM
    def embed_inputs(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings with the projected patches inserted after BOS, and the matching attention mask."""
        patches = self.projector(self.vision(pixels))
        tok = self.llm.get_input_embeddings()(input_ids)
        embeds = torch.cat([tok[:, :1], patches.to(tok.dtype), tok[:, 1:]], dim=1)
        ones = attention_mask.new_ones(patches.shape[:2])
        return embeds, torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)

    def token_logits(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                     ) -> torch.Tensor:
        """Stage 1: next-token logits at the text positions ``[N, L, vocab]`` (patch positions removed)."""
        embeds, mask = self.embed_inputs(pixels, input_ids, attention_mask)
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        p = embeds.shape[1] - input_ids.shape[1]
        return torch.cat([logits[:, :1], logits[:, 1 + p:]], dim=1)

    def frame_features(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                       ) -> torch.Tensor:
        """Single-frame passes: ``[N, 3, H, W]`` + prompts -> ``[N, d]`` last-layer hidden state at the last non-pad
        position (the EOS "cognition" token; prompts are right-padded)."""
        embeds, mask = self.embed_inputs(pixels, input_ids, attention_mask)
        # one full pass per frame, nothing decoded after it: no KV cache (building one costs time, and its per-layer
        # state made the regionally compiled layers recompile past dynamo's limit on the H200)
        hidden = self.llm.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        last = mask.long().cumsum(1).argmax(1)  # the last position whose mask is 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def cognition_features(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                           ) -> torch.Tensor:
        """The feature chunk ``[B, M, d]`` of ``[B, M, 3, H, W]`` frames (oldest first) sharing one prompt per
        sample; the M - 1 past features carry no gradient."""
        b, m = pixels.shape[:2]
        current = self.frame_features(pixels[:, -1], input_ids, attention_mask)
        if m == 1:
            return current[:, None]
        with torch.no_grad():  # stop-gradient on the history (released: the same forward, then .detach())
            past = self.frame_features(pixels[:, :-1].flatten(0, 1), input_ids.repeat_interleave(m - 1, 0),
                                       attention_mask.repeat_interleave(m - 1, 0)).view(b, m - 1, -1)
        return torch.cat([past.to(current.dtype), current[:, None]], dim=1)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> CronusVLAOutput:
        """``[B, M, 3, H, W]`` frames + ``[B, L]`` prompt -> the feature chunk (post-training path)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return CronusVLAOutput(features=self.cognition_features(pixels, input_ids, attention_mask))

    # -------------------------------------------------------------------------------------------- the decoder
    def predict_noise(self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor,
                      drop_ids: torch.Tensor | None = None, prior_actions: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """The decoder's noise prediction (see :class:`CrossFrameDiT`)."""
        return self.decoder(noisy_actions, timesteps, features, drop_ids, prior_actions)

    def sample_actions(self, features: torch.Tensor, num_steps: int = 10, cfg_scale: float = 1.5,
                       time_axis_cfg_quirk: bool = True, generator: torch.Generator | None = None,
                       prior_actions: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised action chunk ``[B, T, action_dim]`` from a feature chunk (DDIM + CFG)."""
        return sample_action_chunk(self.decoder, features, num_steps, cfg_scale, time_axis_cfg_quirk, generator,
                                   prior_actions)

    def unnormalize(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised [-1, 1] actions -> the dataset's units with the q01/q99 bounds (masked dims unchanged)."""
        lo, hi, mask = self.action_q01.to(actions), self.action_q99.to(actions), self.action_mask.to(actions)
        return torch.where(mask.bool(), 0.5 * (actions + 1) * (hi - lo) + lo, actions)

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        """Dataset units -> [-1, 1] with the q01/q99 bounds, clipped (masked dims unchanged)."""
        lo, hi, mask = self.action_q01.to(actions), self.action_q99.to(actions), self.action_mask.to(actions)
        scaled = (2 * (actions - lo) / (hi - lo).clamp_min(1e-8) - 1).clamp(-1, 1)
        return torch.where(mask.bool(), scaled, actions)

    def set_action_stats(self, q01: Any, q99: Any, mask: Any | None = None) -> None:
        """Store the dataset's q01 / q99 bounds (and the normalisation mask) in the weights."""
        with torch.no_grad():
            self.action_q01.copy_(torch.as_tensor(q01, dtype=torch.float32))
            self.action_q99.copy_(torch.as_tensor(q99, dtype=torch.float32))
            if mask is not None:
                self.action_mask.copy_(torch.as_tensor(mask, dtype=torch.float32))

    @property
    def cognition_suffix(self) -> tuple[int, ...]:
        """Token ids appended after the prompt (the released code's empty token + EOS) for the paper LLMs; the tiny
        byte vocabulary appends EOS only."""
        if self.llm.config.vocab_size < 1000:
            return (int(self.llm.config.eos_token_id),)
        return COGNITION_SUFFIX.get(self.llm_family, (int(self.llm.config.eos_token_id),))

    def compile_regions(self) -> list[nn.Module]:
        """Blocks compiled in place by ``compile='regional'``: the ViT, LLM and decoder blocks."""
        return [*self.vision.dino.blocks, *self.vision.siglip.blocks, *self.llm.base_model.layers,
                *self.decoder.blocks]


# ------------------------------------------------------------------------------------------ upstream checkpoints
#: key prefixes only a released file has (ours also start with "projector.": a stage-1 Lightning checkpoint of
#: this repository must pass through, not be converted)
_UPSTREAM_ONLY = ("vision_backbone.", "projector.projector.", "llm_backbone.", "action_model.")
_DECODER_RENAMES = (  # released ActionModel.net -> CrossFrameDiT
    ("x_embedder.linear.", "action_embed."), ("t_embedder.mlp.0.", "time_embedding.linear_1."),
    ("t_embedder.mlp.2.", "time_embedding.linear_2."), ("z_embedder.linear_0.", "condition.past."),
    ("z_embedder.extend_net.0.", "condition.expand."), ("z_embedder.linear.", "condition.current."),
    ("z_embedder.uncondition", "condition.null_chunk"), ("positional_embedding", "pos_embed"),
    ("condition_positional_embedding", "cond_pos_embed"), ("final_layer.linear.", "head."), ("blocks.", "blocks."),
)


def read_checkpoint(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """A Prismatic/CronusVLA ``.pt`` (``{"model": {"vision_backbone": ..., "projector": ..., "llm_backbone": ...,
    "action_model": ...}}``) flattened to ``part.key``; our safetensors / Lightning files load as usual."""
    from ._pretrained import load_state_dict_file

    p = str(path)
    if p.endswith((".pt", ".pth")):
        obj = torch.load(p, map_location="cpu", weights_only=True)
        nested = obj.get("model", obj)
        if isinstance(nested, dict) and any(isinstance(v, dict) for v in nested.values()):
            return {f"{part}.{k}": v for part, sd in nested.items() if isinstance(sd, dict) for k, v in sd.items()}
        return nested
    return load_state_dict_file(path)


def convert_upstream_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released keys -> ours: ``vision_backbone.{dino,siglip}_featurizer.*`` -> ``vision.{dino,siglip}.*``,
    ``projector.projector.{0,2,4}`` -> ``projector.{0,2,4}``, ``llm_backbone.llm.*`` -> ``llm.*``,
    ``action_model.net.*`` -> ``decoder.*`` (renamed; EMA copies dropped)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.startswith("vision_backbone."):
            rest = k[len("vision_backbone."):]
            for theirs, ours in (("dino_featurizer.", "vision.dino."), ("siglip_featurizer.", "vision.siglip.")):
                if rest.startswith(theirs):
                    out[ours + rest[len(theirs):]] = v
                    break
            else:
                raise KeyError(f"unknown vision key {k!r}")
        elif k.startswith("projector."):
            out["projector." + k[len("projector."):].removeprefix("projector.")] = v
        elif k.startswith("llm_backbone."):
            out["llm." + k[len("llm_backbone."):].removeprefix("llm.")] = v
        elif k.startswith("action_model.net."):
            rest = k[len("action_model.net."):]
            for theirs, ours in _DECODER_RENAMES:
                if rest.startswith(theirs):
                    out["decoder." + ours + rest[len(theirs):]] = v
                    break
            else:
                raise KeyError(f"unknown decoder key {k!r}")
        elif k.startswith(("ema_diffusion.", "action_model.")):
            continue
        else:
            raise KeyError(f"unknown CronusVLA checkpoint key {k!r}")
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None
                         ) -> dict[str, torch.Tensor]:
    """Used by ``load_checkpoint``: released keys are converted (a stage-1 checkpoint without a decoder, or a file
    without our action-statistics buffers, keeps the model's own); ours pass through."""
    if not any(k.startswith(_UPSTREAM_ONLY) for k in state_dict):
        return state_dict
    out = convert_upstream_checkpoint(state_dict)
    if model is not None:
        own = model.state_dict()
        out |= {k: v for k, v in own.items() if k not in out and (k.startswith("decoder.") or k.startswith("action_"))}
    return out


# ------------------------------------------------------------------------------------------------------ entrypoints
def _variant(name: str, pretrained: bool | str, defaults: dict[str, Any], **kwargs: Any) -> CronusVLA:
    return build_model(CronusVLA, name, pretrained, defaults, **kwargs)  # type: ignore[return-value]


@register_model
def cronusvla_7b(pretrained: bool | str = False, **kwargs: Any) -> CronusVLA:
    """CronusVLA 7B (prism-dinosiglip-224px+7b): DINOv2-L/14-reg4 + SigLIP-So400m/14 at 224, fused GELU MLP,
    Llama-2-7B (d 4096), M = 7, DiT-B decoder, 16-action chunks (post-training / SimplerEnv)."""
    return _variant("cronusvla_7b", pretrained, dict(llm=LLAMA2_7B, num_frames=7, chunk_len=16), **kwargs)


@register_model
def cronusvla_0_5b(pretrained: bool | str = False, **kwargs: Any) -> CronusVLA:
    """CronusVLA 0.5B (prism-qwen25-extra-dinosiglip-224px+0_5b): the same vision pair with Qwen2.5-0.5B (d 896),
    M = 4, DiT-B decoder, 16-action chunks."""
    return _variant("cronusvla_0_5b", pretrained, dict(llm=QWEN25_05B, num_frames=4, chunk_len=16), **kwargs)


@register_model
def cronusvla_7b_libero(pretrained: bool | str = False, **kwargs: Any) -> CronusVLA:
    """CronusVLA 7B for LIBERO fine-tuning: M = 4 (past 3), 8-action chunks, DiT-B."""
    return _variant("cronusvla_7b_libero", pretrained, dict(llm=LLAMA2_7B, num_frames=4, chunk_len=8), **kwargs)


#: tiny LLM: a 2-layer Llama of hidden 64 over the byte vocabulary (datamodules.libero.BytePrompt: 300 ids)
TINY_LLM: dict[str, Any] = dict(model_type="llama", vocab_size=300, hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1,
                                eos_token_id=2, pad_token_id=0)


@register_model
def cronusvla_tiny(pretrained: bool | str = False, **kwargs: Any) -> CronusVLA:
    """Tiny CronusVLA for CPU tests and the PyBullet demo: 2-block tiny DINOv2-reg / SigLIP ViTs (patch 14, 28 px,
    widths 32 / 24), a 2-layer Llama of hidden 64 (byte vocabulary 300), M = 3, DiT depth 2 / hidden 32 / 4 heads,
    chunk 4."""
    return _variant("cronusvla_tiny", pretrained, dict(
        llm=TINY_LLM, image_size=28, num_frames=3, chunk_len=4, decoder_size=None, decoder_depth=2,
        decoder_hidden=32, decoder_heads=4,
        dino=dict(name="vit_small_patch14_reg4_dinov2", embed_dim=32, depth=2, num_heads=2),
        siglip=dict(name="vit_so400m_patch14_siglip_224", embed_dim=24, depth=2, num_heads=2, mlp_ratio=2.0)),
        **kwargs)
