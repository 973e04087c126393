"""Uni-Encoder (Song et al., Findings of ACL 2023): all candidates packed after one context, scored in one forward.

Spec (``shared/papers/llm/uni-encoder.md``): the context and its N candidates are one sequence; every candidate gets the
same position ids (right after the context, :class:`zoo.llm.prefix.PrefixLayout`); the attention mask lets
candidates see the context and themselves but not each other. ``attn_map``:

* ``arrow`` — as released: context rows see every valid token (context and all candidates); candidates bidirectional;
* ``arrow_context_masked`` — context rows see only the context: each candidate's representation equals scoring that
  candidate alone (tested);
* ``causal`` — decoder backbones (Llama/Qwen2): the Prefix Grouper layout; equals per-candidate scoring (tested).

Score: mean-pool each candidate's final hidden states, a linear layer (one logit per candidate; the softmax over the
candidates, the loss and the ranking metrics are in :mod:`tasks.llm.uni_encoder`).

Input layout (``token_types``; the task sets it from the datamodule's ``candidate_format``): ``official`` is the
released one, ``[CLS] c [SEP] [CLS] r_1 [SEP] [CLS] r_2 [SEP] ...`` with ``token_type_ids`` 0 on the context and 1 on
every candidate token (BERT backbones; decoders have no segment embeddings and ignore it); each candidate block is its
``[CLS] r_j [SEP]``, so the masks, the shared position ids (every block starts at the context length, the released
``bos_locations[0]``) and the mean pooling (the released one averages a candidate's block from its ``[CLS]`` through its
``[SEP]``) cover the wrapped tokens. ``plain``: bare candidate tokens, no token types.

Backbones are transformers models built from config (random init, offline): BERT (``BertModel`` without pooler) or a
decoder family through :func:`zoo.llm.causal_lm_config`; deviations from the paper are in :data:`MODEL_CARD`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._builder import build_model
from ._registry import register_model
from .llm.causal_lm import causal_lm_config, decoder_layers
from .llm.prefix import GroupedAttention, MaskedAttention, PrefixLayout, enable_prefix_attention
from .llm.prefix.hf import placeholder_mask

__all__ = ["UniEncoder", "build_backbone", "MODEL_CARD"]

MODEL_CARD: dict[str, Any] = {
    "paper": "Song, He, Yu, Fang, Cui, Lan. Uni-Encoder: A Fast and Accurate Response Selection Paradigm for "
             "Generation-Based Dialogue Systems. Findings of ACL 2023 (arXiv 2106.01263)",
    "url": "https://arxiv.org/abs/2106.01263",
    "code": "https://github.com/dll-wu/Uni-Encoder",
    "license": "architecture: paper; this implementation: Apache-2.0 (no code copied from the official repository)",
    "deviations": [
        "Backbones are built from config with random init (offline); the paper fine-tunes bert-base-uncased / "
        "bert-base-chinese, optionally BERT-FP post-trained. No auxiliary masked-LM loss (the paper keeps BERT's MLM "
        "head and adds its loss).",
        "Attention dropout is 0 (the shared-prefix attention specs refuse attention dropout in training); hidden "
        "dropout is 0.1 in uni_encoder_bert_base (as BERT) and 0 in uni_encoder_tiny (set hidden_dropout_prob in "
        "the backbone spec).",
        "Vocabulary and text layout come from the datamodule (datamodules.llm_response_selection): a word-level "
        "vocabulary from the training set instead of the BERT WordPiece tokenizer; the context's utterances are "
        "joined with [SEP] ([CLS] u_1 [SEP] ... u_k [SEP]) instead of the released speaker tokens "
        "([CLS] [unused1] u_1 [unused2] u_2 ... [SEP]); responses keep their first words, not their last.",
        "attn_map 'arrow' is the released mask (not per-candidate exact by construction); 'arrow_context_masked' and "
        "'causal' (decoder backbones) are added variants that equal scoring each candidate alone (tested). The "
        "released 'square' / 'diag' maps are not provided.",
    ],
}

#: BERT-base (bert-base-uncased shape and vocabulary), built from config; attention dropout 0 (see the card)
BERT_BASE: dict[str, Any] = dict(family="bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, hidden_dropout_prob=0.1)

def build_backbone(spec: dict[str, Any], vocab_size: int) -> nn.Module:
    """``{'family': 'bert'|'llama'|'qwen2'|'mistral', <config fields>}`` -> an HF base model (random init)."""
    import transformers

    spec = dict(spec)
    family = spec.pop("family", "bert")
    if family == "bert":
        base = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, max_position_embeddings=512, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
        base.update(spec)
        cfg = transformers.BertConfig(**base)
        cfg._attn_implementation = "sdpa"
        return transformers.BertModel(cfg, add_pooling_layer=False)
    cfg = causal_lm_config(family, vocab_size=vocab_size, **spec)
    return transformers.AutoModel.from_config(cfg, attn_implementation="sdpa")


class UniEncoder(nn.Module):
    """Response selection scoring all candidates of a context in one forward.

    Args:
        backbone: backbone spec, ``{'family': 'bert'|'llama'|'qwen2', ...config fields}``.
        vocab_size: vocabulary size.
        attn_map: ``arrow`` (released), ``arrow_context_masked`` or ``causal`` (decoder backbones).
        token_types: BERT backbones: ``token_type_ids`` 0 on the context, 1 on the candidate tokens (the released
            ``official`` layout); ignored by decoder backbones (no segment embeddings). A plain attribute (no
            parameters depend on it): the task sets it from the datamodule's ``candidate_format``.
    """

    def __init__(self, backbone: dict[str, Any], vocab_size: int, attn_map: str = "arrow",
                 token_types: bool = False) -> None:
        super().__init__()
        if attn_map not in ("arrow", "arrow_context_masked", "causal"):
            raise ValueError(f"unknown attn_map {attn_map!r}")
        self.attn_map = attn_map
        self.token_types = token_types
        self.backbone = enable_prefix_attention(build_backbone(backbone, vocab_size))
        self.score = nn.Linear(self.backbone.config.hidden_size, 1)

    def compile_regions(self) -> list[nn.Module]:
        """The backbone's transformer blocks (``compile: regional``)."""
        return decoder_layers(self.backbone)

    def pack(
        self, contexts: list[torch.Tensor], candidates: list[list[torch.Tensor]]
    ) -> tuple[PrefixLayout, torch.Tensor, torch.Tensor | None]:
        """The packed layout, input ids ``[b, L]`` and ``token_type_ids`` ``[b, L]`` (None unless a BERT backbone
        with ``token_types``): 0 on the context and padding, 1 on every candidate token."""
        device = contexts[0].device
        layout = PrefixLayout.build([c.numel() for c in contexts], [[r.numel() for r in g] for g in candidates], device)
        ids = layout.pack(list(contexts), [list(g) for g in candidates])
        types = None
        if self.token_types and self.backbone.config.model_type == "bert":
            pos = torch.arange(layout.length, device=device)
            ctx_len = torch.tensor(layout.prefix_lens, device=device)[:, None]
            types = ((pos[None] >= ctx_len) & layout.valid).long()
        return layout, ids, types

    def forward(
        self, contexts: list[torch.Tensor], candidates: list[list[torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[b, N_max]`` (``-inf`` where a context has fewer candidates) and their validity mask."""
        device = contexts[0].device
        layout, ids, types = self.pack(contexts, candidates)
        if self.attn_map == "causal":
            spec = GroupedAttention(layout)
        else:
            spec = MaskedAttention.for_layout(layout, self.attn_map)  # FlexAttention block mask on CUDA
        extra = {} if types is None else {"token_type_ids": types}
        out = self.backbone(
            input_ids=ids, position_ids=layout.position_ids, attention_mask=placeholder_mask(device),
            prefix_attention=spec, **extra,
        )
        hidden = out.last_hidden_state
        b, length, d = hidden.shape
        tok = hidden.reshape(b * length, d)[layout.suffix_index.reshape(-1)].view(*layout.suffix_index.shape, d)
        v = layout.suffix_valid[..., None].to(tok.dtype)
        pooled = (tok * v).sum(1) / v.sum(1)  # mean over each candidate's tokens
        flat = self.score(pooled)[:, 0]
        n_max = max(len(g) for g in candidates)
        scores = flat.new_full((len(candidates), n_max), float("-inf"))
        valid = torch.zeros(len(candidates), n_max, dtype=torch.bool, device=device)
        k = 0
        for i, g in enumerate(candidates):
            scores[i, : len(g)] = flat[k : k + len(g)]
            valid[i, : len(g)] = True
            k += len(g)
        return scores, valid


# ------------------------------------------------------------------------------------------------------ entrypoints
def _variant(name: str, pretrained: bool | str, defaults: dict[str, Any], **kwargs: Any) -> UniEncoder:
    if "backbone" in kwargs:  # a partial backbone spec overrides the variant's fields, not the whole backbone
        kwargs["backbone"] = {**defaults["backbone"], **kwargs["backbone"]}
    return build_model(UniEncoder, name, pretrained, defaults, **kwargs)  # type: ignore[return-value]


@register_model
def uni_encoder_bert_base(pretrained: bool | str = False, **kwargs: Any) -> UniEncoder:
    """Uni-Encoder, paper size: a BERT-base ranker (12 layers, hidden 768, WordPiece-sized vocabulary 30522 unless
    ``vocab_size`` is given), released ``arrow`` mask and input layout, built from config (random init)."""
    return _variant("uni_encoder_bert_base", pretrained, dict(
        backbone=BERT_BASE, vocab_size=30522, attn_map="arrow", token_types=True), **kwargs)


@register_model
def uni_encoder_tiny(pretrained: bool | str = False, **kwargs: Any) -> UniEncoder:
    """Tiny Uni-Encoder for CPU tests: a 2-layer BERT of hidden 64 (4 heads), vocabulary 128, released ``arrow`` mask
    and input layout; ``backbone={'family': 'llama', ...}`` with ``attn_map='causal'`` gives the decoder variant."""
    return _variant("uni_encoder_tiny", pretrained, dict(
        backbone=dict(family="bert"), vocab_size=128, attn_map="arrow", token_types=True), **kwargs)
