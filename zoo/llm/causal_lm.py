"""The one way to build a Hugging Face causal LM here: :func:`build_causal_lm` (offline, from a config or a folder).

Every LLM-side method, task, benchmark and test gets its decoder from :func:`build_causal_lm`; a spec is

* a family name (``llama``, ``qwen2``, ``mistral``, ``gemma2`` — or any transformers ``model_type``) plus config
  fields as keyword arguments: a random-init model of that shape, tiny by default (2 layers, hidden 64, GQA 4/2);
* a transformers config: a :class:`~transformers.PretrainedConfig` or a ``config.json``-style dict with ``model_type``
  (random init);
* a local model folder (``config.json`` + weights, as ``save_pretrained`` writes it), or a hub id already in the local
  Hugging Face cache: the weights are loaded with ``local_files_only=True`` — nothing is downloaded; what is missing
  is named in the error.

Attention is SDPA, except for models that soft-cap their attention logits (Gemma-2: eager; HF's SDPA path has no
soft-capping).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: tiny defaults applied to a family name (RoPE + GQA); any of them is overridden by a keyword argument
TINY_DEFAULTS: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
#: the families tested here (other transformers model types are built the same way, untested)
FAMILIES = ("llama", "qwen2", "mistral", "gemma2")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def causal_lm_config(family: str = "llama", vocab_size: int = 128, **overrides: Any):
    """A transformers config of ``family`` (``llama``, ``qwen2``, ``mistral``, ``gemma2`` or another ``model_type``);
    tiny defaults (:data:`TINY_DEFAULTS`).

    ``gemma2`` keeps its attention-logit and final-logit soft-capping (defaults 50 / 30; override
    ``attn_logit_softcapping`` to make it bite in tiny random models) and its alternating sliding-window layers; it is
    built with ``eager`` attention (HF's SDPA path has no soft-capping).

    Args:
        family: model family (a transformers ``model_type``).
        vocab_size: vocabulary size.
        overrides: any config field (``hidden_size``, ``num_hidden_layers``, ...).
    """
    import transformers

    base = dict(vocab_size=vocab_size, **TINY_DEFAULTS)
    if family == "mistral":
        base["sliding_window"] = None
    if family == "qwen2":
        base["use_sliding_window"] = False
    if family == "gemma2":
        base.update(head_dim=16, query_pre_attn_scalar=16)
    base.update(overrides)
    base.pop("attn_implementation", None)
    known = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig", "gemma2": "Gemma2Config"}
    if family in known:
        cfg = getattr(transformers, known[family])(**base)
    else:
        if family not in transformers.CONFIG_MAPPING:
            raise ValueError(f"unknown causal-LM family {family!r}: one of {', '.join(FAMILIES)} (tested) or a "
                             "transformers model_type, a config, or a local model folder")
        cfg = transformers.AutoConfig.for_model(family, **base)
    cfg._attn_implementation = overrides.get("attn_implementation", _default_attn(cfg))
    return cfg


def _default_attn(config: Any) -> str:
    """SDPA, except for models whose attention SDPA cannot compute (Gemma-2's logit soft-capping: eager)."""
    return "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"


def build_causal_lm(spec: Any, attn_implementation: str | None = None, **kwargs: Any) -> nn.Module:
    """A Hugging Face causal LM from ``spec`` (module docstring): random init from a config, or weights from a folder.

    Args:
        spec: a family name, a ``PretrainedConfig``, a config dict with ``model_type``, a local model folder, or a hub
            id in the local Hugging Face cache.
        attn_implementation: None: SDPA (eager for soft-capped models); else passed to transformers.
        **kwargs: config fields (``vocab_size``, ``hidden_size``, ...): the family's tiny defaults overridden, or a
            folder's config overridden.
    """
    from transformers import AutoModelForCausalLM, PretrainedConfig

    if isinstance(spec, dict):
        spec = dict(spec)
        if "model_type" not in spec:
            raise ValueError(f"a causal-LM config dict needs 'model_type' (e.g. 'llama'); got keys {sorted(spec)}")
        import transformers

        spec = transformers.AutoConfig.for_model(spec.pop("model_type"), **{**spec, **kwargs})
        kwargs = {}
    if isinstance(spec, str) and not _is_path_like(spec):
        spec = causal_lm_config(spec, **kwargs)
        kwargs = {}
    if isinstance(spec, PretrainedConfig):
        for k, v in kwargs.items():
            setattr(spec, k, v)
        attn = attn_implementation or _default_attn(spec)
        return AutoModelForCausalLM.from_config(spec, attn_implementation=attn)
    if isinstance(spec, (str, os.PathLike)):
        return _from_folder(str(spec), attn_implementation, **kwargs)
    raise TypeError(f"build_causal_lm: unsupported spec of type {type(spec).__name__}")


def _is_path_like(spec: str) -> bool:
    return "/" in spec or os.sep in spec or Path(spec).exists()


def _from_folder(spec: str, attn_implementation: str | None, **kwargs: Any) -> nn.Module:
    """Weights from a local folder, or from a hub id's snapshot in the local HF cache; never downloads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(spec).expanduser()
    if folder.is_dir():
        missing = [] if (folder / "config.json").is_file() else ["config.json"]
        if not any((folder / f).is_file() for f in _WEIGHT_FILES):
            missing.append(f"weights ({' or '.join(_WEIGHT_FILES)})")
        if missing:
            raise FileNotFoundError(f"{folder} is not a Hugging Face model folder: {' and '.join(missing)} missing "
                                    "(write one with model.save_pretrained(folder))")
        where = str(folder)
    elif folder.exists():
        raise NotADirectoryError(f"causal-LM spec {spec!r} is a file; give the model folder that holds config.json")
    else:
        where = spec  # a hub id: only its snapshot already in the local HF cache
    try:
        if not folder.is_dir() and not _hub_cached(spec):  # decided here: some library versions still open a connection
            raise OSError(f"{spec}: config.json is not in the local Hugging Face cache")
        config = AutoConfig.from_pretrained(where, local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(
            f"causal-LM spec {spec!r}: no such local folder, and no config.json for it in the local Hugging Face "
            f"cache (nothing is downloaded here; fetch it first, e.g. `huggingface-cli download {spec}`, or give "
            f"a family name: {', '.join(FAMILIES)})"
        ) from e
    if "vocab_size" in kwargs and kwargs["vocab_size"] != config.vocab_size:
        raise ValueError(f"vocab_size={kwargs['vocab_size']} (the tokenizer's) but the model in {spec} has "
                         f"{config.vocab_size}: the tokenizer and the model must agree")
    for k, v in kwargs.items():
        setattr(config, k, v)
    attn = attn_implementation or _default_attn(config)
    return AutoModelForCausalLM.from_pretrained(where, config=config, local_files_only=True, attn_implementation=attn)


def _hub_cached(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s ``config.json`` (a file lookup, no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the hub library rejects is not cached
        return False


def tiny_causal_lm(family: str = "llama", vocab_size: int = 128, seed: int = 0, **overrides: Any) -> nn.Module:
    """A 2-layer fp32 causal LM of ``family`` with random weights (deterministic for a seed), in eval mode."""
    torch.manual_seed(seed)
    model = build_causal_lm(family, vocab_size=vocab_size, **overrides).float()
    return model.eval()


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (the classes it lists in ``_no_split_modules``): FSDP units, compile regions."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def enable_activation_checkpointing(model: nn.Module) -> None:
    """HF activation (gradient) checkpointing, non-reentrant, under the name of the installed transformers."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
