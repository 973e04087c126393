"""NEO — "From Pixels to Words: Towards Native Vision-Language Primitives at Scale" (arXiv 2510.14979).

An encoder-free ("native") VLM: pixels go through a two-convolution patch embedding (:class:`PatchEmbedding`, one
token per 32×32 px) straight into one decoder-only stack — a transformers Qwen3 causal LM whose layers use native
attention (:class:`NativeAttention`: Q/K = [T | H | W], one temporal index per image, H/W on row/column; the mixed
mask) with E fresh *pre-Buffer* layers stacked below the LLM's own layers (indices 0..E-1; the LLM's are E..E+L-1).

Reads top-down: the model -> stage freezing -> initialisation from a plain Qwen3 -> the upstream checkpoint
converter -> the card -> the entrypoints. The primitives are in :mod:`zoo.neo_layers`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._builder import build_model
from ._data_config import register_data_config
from ._registry import register_model
from .layers.cuda_graph import CapturedCall
from .llm.causal_lm import build_causal_lm, causal_lm_config
from .neo_layers import (
    NativeAttention,
    NativeMask,
    NativeRope,
    PatchEmbedding,
    StaticKVCache,
    TokenIds,
    native_positions,
    patchify,
    smart_resize,
)

__all__ = ["NEO", "NEOOutput", "NEOStaticDecoder", "PatchEmbedding", "checkpoint_filter_fn", "patchify", "qwen3_to_neo",
           "smart_resize"]

#: ImageNet statistics (NEO normalises with them by default)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: pixel bounds of the smart resize per stage (pretraining; mid-training / SFT)
PIXEL_BOUNDS = {"pt": (256 * 256, 2048 * 2048), "mt": (256 * 256, 4096 * 4096), "sft": (256 * 256, 4096 * 4096)}
STAGES = ("pt", "mt", "sft")


@dataclass
class NEOOutput:
    """What :class:`NEO` returns.

    Args:
        hidden: (B, L, hidden) final-norm hidden states.
        logits: (B, L, vocab) or None (``return_hidden=True``: apply :meth:`NEO.logits` to the positions you need).
        cache: the KV cache (``use_cache=True``).
    """

    hidden: torch.Tensor
    logits: torch.Tensor | None = None
    cache: Any = None


class NEO(nn.Module):
    """NEO: patch embedding + a Qwen3 decoder with native attention and E pre-Buffer layers.

    Args:
        vocab_size: vocabulary size (ids of the tokenizer, image tokens included).
        hidden_size: decoder hidden size.
        intermediate_size: MLP size.
        num_hidden_layers: layers of the LLM (Qwen3's own), without the pre-Buffer.
        num_buffer_layers: E, the pre-Buffer layers below the LLM (12 for NEO-2.2B, 6 for NEO-9B; 0: none).
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads (GQA).
        head_dim: per-head dim of the T branch and of V (the H and W branches get head_dim / 2 each).
        rope_theta: θ of the T branch (Qwen3: 1e6).
        rope_theta_hw: θ of the H and W branches.
        rms_norm_eps: RMSNorm epsilon.
        tie_word_embeddings: tie the LM head to the word embedding (Qwen3-1.7B: yes; 8B: no).
        max_position_embeddings: Qwen3 config field (RoPE here is computed for any position).
        vision_width: channels of the first patch convolution (1024).
        patch_size: first convolution's kernel / stride (16).
        downsample: second convolution's kernel / stride (2): tokens cover (patch_size·downsample)² px.
        rope_theta_vision: θ of the 2-D RoPE on the patch features.
        image_token_ids: ids of ``<img>``, ``<IMG_CONTEXT>``, ``</img>``.
        native_rope: the H/W branch and one t per image (False: the 1-D RoPE ablation — plain Qwen3 attention,
            image tokens get consecutive t).
        mixed_mask: bidirectional attention inside an image (False: the fully causal ablation).
        attn_backend: ``flex`` (FlexAttention with a block mask; compiled on CUDA) or ``sdpa`` (the same mask as a
            dense boolean tensor).
    """

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 2048,
        intermediate_size: int = 6144,
        num_hidden_layers: int = 28,
        num_buffer_layers: int = 12,
        num_attention_heads: int = 16,
        num_key_value_heads: int = 8,
        head_dim: int = 128,
        rope_theta: float = 1e6,
        rope_theta_hw: float = 1e4,
        rms_norm_eps: float = 1e-6,
        tie_word_embeddings: bool = True,
        max_position_embeddings: int = 40960,
        vision_width: int = 1024,
        patch_size: int = 16,
        downsample: int = 2,
        rope_theta_vision: float = 1e4,
        image_token_ids: tuple[int, int, int] | list[int] = (151669, 151670, 151671),
        native_rope: bool = True,
        mixed_mask: bool = True,
        attn_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        if attn_backend not in ("flex", "sdpa"):
            raise ValueError(f"attn_backend must be 'flex' or 'sdpa', got {attn_backend!r}")
        if head_dim % 4:
            raise ValueError(f"head_dim {head_dim} must be divisible by 4 (H and W halves of rotary pairs)")
        if max(image_token_ids) >= vocab_size:
            raise ValueError(f"image_token_ids {tuple(image_token_ids)} must be < vocab_size {vocab_size}")
        self.num_buffer_layers, self.num_llm_layers = num_buffer_layers, num_hidden_layers
        self.native_rope, self.mixed_mask, self.attn_backend = native_rope, mixed_mask, attn_backend
        self.ids = TokenIds(*(int(i) for i in image_token_ids))
        self.config = causal_lm_config(
            "qwen3", vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_buffer_layers + num_hidden_layers, num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads, head_dim=head_dim, rope_theta=rope_theta,
            rms_norm_eps=rms_norm_eps, tie_word_embeddings=tie_word_embeddings,
            max_position_embeddings=max_position_embeddings, attention_bias=False, use_sliding_window=False)
        self.vision = PatchEmbedding(hidden_size, vision_width, patch_size, downsample, rope_theta_vision)
        self.lm = build_causal_lm(self.config)  # transformers Qwen3ForCausalLM; its attention is swapped below
        for i, layer in enumerate(self.lm.model.layers):
            layer.self_attn = NativeAttention(self.config, i, hw=native_rope)
            init_fresh_layer(layer, i, self.config.initializer_range)
        self.rope = NativeRope(head_dim, rope_theta, rope_theta_hw)

    # ------------------------------------------------------------------------------------------------- forward
    @property
    def token_px(self) -> int:
        """Pixels per token side (32 in the paper)."""
        return self.vision.token_px

    def layout(self, input_ids: torch.Tensor, grids: torch.Tensor | None,
               doc_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, h, w) positions (3, B, L) and image ids (B, L) of a packed batch (:func:`native_positions`)."""
        return native_positions(input_ids, grids, self.ids, doc_ids, one_t_per_image=self.native_rope)

    def mask(self, doc_ids: torch.Tensor, image_ids: torch.Tensor, q_len: int, backend: str | None = None):
        """The mixed mask (:class:`~zoo.neo_layers.NativeMask`) for the backend (``flex`` or ``sdpa``)."""
        return NativeMask(doc_ids, image_ids if self.mixed_mask else torch.full_like(image_ids, -1), q_len,
                          backend or self.attn_backend)

    def embed(self, input_ids: torch.Tensor, images: list[torch.Tensor] | None) -> tuple[torch.Tensor, Any]:
        """Word embeddings with every ``<IMG_CONTEXT>`` replaced by the images' patch tokens (in order)."""
        emb = self.lm.model.embed_tokens(input_ids)
        ctx = input_ids == self.ids.context
        if not images:
            if ctx.any():
                raise ValueError(f"{int(ctx.sum())} <IMG_CONTEXT> tokens but no images")
            return emb, None
        tokens, grids = self.vision(images)
        if tokens.shape[0] != int(ctx.sum()):
            raise ValueError(f"{tokens.shape[0]} image tokens from {len(images)} images but {int(ctx.sum())} "
                             "<IMG_CONTEXT> tokens in input_ids")
        return emb.masked_scatter(ctx[..., None], tokens.to(emb.dtype)), grids

    def forward(self, input_ids: torch.Tensor, images: list[torch.Tensor] | None = None,
                doc_ids: torch.Tensor | None = None, cache: Any = None, use_cache: bool = False,
                return_hidden: bool = False) -> NEOOutput:
        """Logits (or hidden states) of a packed batch.

        Args:
            input_ids: (B, L) token ids, each image as ``<img>`` + N × ``<IMG_CONTEXT>`` + ``</img>``.
            images: the normalised (3, H, W) images in order of appearance (row-major over the batch).
            doc_ids: (B, L) packed-document index of each token (None: one document per row); a query never sees
                another document's keys, and t restarts per document.
            cache: a transformers ``DynamicCache`` from an earlier call (decoding: t continues, plain causal mask).
            use_cache: return a cache (a new one when ``cache`` is None).
            return_hidden: skip the LM head (``logits`` None).
        """
        from transformers import DynamicCache

        if doc_ids is None:
            doc_ids = torch.zeros_like(input_ids)
        state = getattr(cache, "neo_state", None)
        if state is None:  # prefill: native positions and the mixed mask
            emb, grids = self.embed(input_ids, images)
            thw, image_ids = self.layout(input_ids, grids, doc_ids)
            kv_doc, kv_img = doc_ids, image_ids
            mask = self.mask(doc_ids, image_ids, input_ids.shape[1])
        else:  # decoding: text continues at the next t (h = w = 0), causal over the cache; O(1 token) per layer
            if images:
                raise ValueError("images after the prefill are not supported (give them in the first call)")
            emb = self.lm.model.embed_tokens(input_ids)  # no <IMG_CONTEXT> check here: it syncs with the device
            q = input_ids.shape[1]
            t = state["next_t"][:, None] + torch.arange(q, device=input_ids.device)
            thw = torch.stack((t, torch.zeros_like(t), torch.zeros_like(t)))
            kv_doc = torch.cat((state["doc"], doc_ids), 1)
            kv_img = torch.cat((state["img"], torch.full_like(doc_ids, -1)), 1)
            mask = self.mask(kv_doc, kv_img, q, backend="sdpa")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        pos = self.rope(thw, emb.dtype, hw=state is None)  # decoded text: h = w = 0, the H/W rotation is the identity
        h = emb
        for layer in self.lm.model.layers:
            h = layer(h, attention_mask=mask, position_embeddings=pos, cache=cache if use_cache else None)
        h = self.lm.model.norm(h)
        if use_cache:
            # t continues after the row's LAST token (its last document's), not after the row's largest t
            cache.neo_state = {"doc": kv_doc, "img": kv_img, "next_t": thw[0, :, -1] + 1}
        return NEOOutput(hidden=h, logits=None if return_hidden else self.logits(h), cache=cache if use_cache else None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head."""
        return self.lm.lm_head(hidden)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, images: list[torch.Tensor] | None = None, max_new_tokens: int = 16,
                 eos_id: int | None = None, doc_ids: torch.Tensor | None = None, static_cache: bool = True,
                 compile_decode: bool | str = False, cuda_graphs: bool = False,
                 max_cache_len: int | None = None) -> torch.Tensor:
        """Greedy decoding with the KV cache: the prompt is prefilled with the mixed mask, then every new token
        attends causally with t continuing. Rows may be left-padded (give ``doc_ids`` -1 on the padding).

        Args:
            input_ids: (B, L) prompt ids.
            images: the prompt's images in order of appearance.
            max_new_tokens: most tokens generated.
            eos_id: end token (a row repeats it once generated; decoding stops when every row has it).
            doc_ids: (B, L) packed-document ids (decoding continues each row's last document).
            static_cache: decode with fixed shapes (:class:`NEOStaticDecoder`: a static KV cache, one step of
                fixed-shape ops); False: the eager path with a transformers ``DynamicCache`` (same tokens).
            compile_decode: ``torch.compile`` the decode step (``fullgraph``; True: inductor, a string: that
                backend). Static cache only.
            cuda_graphs: capture the decode step as a CUDA graph (on CUDA; elsewhere it runs eagerly). Static only.
            max_cache_len: cache slots (default prompt + ``max_new_tokens``, rounded up to 64): decoders are kept
                per (batch, slots, ...), so calls with equal slots reuse a compiled / captured step.

        Returns:
            (B, n) new token ids (after ``eos_id`` a row repeats ``eos_id``).
        """
        if static_cache:
            n = max(max_cache_len or 0, input_ids.shape[1] + max_new_tokens)
            slots = n + (-n) % 64
            dec = self.static_decoder(input_ids.shape[0], slots, eos_id, compile_decode, cuda_graphs)
            return dec.generate(input_ids, images, max_new_tokens, doc_ids)
        if compile_decode or cuda_graphs:
            raise ValueError("compile_decode / cuda_graphs need static_cache=True")
        out = self(input_ids, images, doc_ids=doc_ids, use_cache=True)
        cache, nxt = out.cache, out.logits[:, -1].argmax(-1)
        row_doc = (doc_ids[:, -1:] if doc_ids is not None else torch.zeros_like(input_ids[:, -1:]))
        done = torch.zeros_like(nxt, dtype=torch.bool)
        new = []
        for _ in range(max_new_tokens):
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            new.append(nxt)
            if eos_id is not None and bool(done.all()):
                break
            out = self(nxt[:, None], doc_ids=row_doc, cache=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1)
        return torch.stack(new, 1)

    def static_decoder(self, batch: int, slots: int, eos_id: int | None = None, compile_decode: bool | str = False,
                       cuda_graphs: bool = False) -> NEOStaticDecoder:
        """The kept :class:`NEOStaticDecoder` for these settings (built on first use; the last 4 are kept)."""
        dev = self.lm.model.embed_tokens.weight
        ac = torch.is_autocast_enabled(dev.device.type), torch.get_autocast_dtype(dev.device.type)
        key = (batch, slots, eos_id, compile_decode, cuda_graphs, dev.device, dev.dtype, dev.data_ptr(), ac)
        kept = self.__dict__.setdefault("_static_decoders", _Kept())
        if key not in kept.items:
            while len(kept.items) >= 4:
                kept.items.pop(next(iter(kept.items)))
            kept.items[key] = NEOStaticDecoder(self, batch, slots, eos_id, compile_decode, cuda_graphs)
        return kept.items[key]

    def compile_regions(self) -> list[nn.Module]:
        """The decoder layers (``compile: regional``)."""
        return list(self.lm.model.layers)

    # ------------------------------------------------------------------------------------------ stage freezing
    def is_pt_trainable(self, name: str) -> bool:
        """Whether parameter ``name`` trains in pretraining (PT): the patch embedding, the pre-Buffer layers, and
        every H/W part (``q_proj_hw``, ``k_proj_hw``, ``q/k_norm_h``, ``q/k_norm_w``) of every layer."""
        if name.startswith("vision."):
            return True
        m = re.match(r"lm\.model\.layers\.(\d+)\.", name)
        if m and int(m.group(1)) < self.num_buffer_layers:
            return True
        return bool(re.search(r"\.(q|k)_(proj_hw|norm_h|norm_w)\.", name))

    def set_stage(self, stage: str) -> list[str]:
        """Freeze for a training stage (``pt``: only :meth:`is_pt_trainable` parameters; ``mt`` / ``sft``: all).

        Returns:
            the names of the trainable parameters.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        names = []
        for n, p in self.named_parameters():
            p.requires_grad_(stage != "pt" or self.is_pt_trainable(n))
            if p.requires_grad:
                names.append(n)
        return names


class _Kept:
    """Decoders kept on a model (not copied, pickled or saved with it)."""

    def __init__(self) -> None:
        self.items: dict[tuple, NEOStaticDecoder] = {}

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def __deepcopy__(self, memo: dict) -> _Kept:
        return _Kept()


class NEOStaticDecoder:
    """Greedy decoding of :class:`NEO` with fixed shapes: a :class:`~zoo.neo_layers.StaticKVCache` and one decode
    step whose tensors keep their shapes and addresses from step to step.

    The prefill runs eagerly (its length varies) and fills the cache. Each step then reads the last token from a
    static buffer, embeds it at t = the row's next t (h = w = 0), runs every layer on it — K/V written at the cache's
    position tensor, attention over all slots under the length / document mask as two explicit matmuls — and writes
    the argmax back (``eos_id`` handling on the device), advancing the position and t on the device: nothing is read
    back to the host. So the step can run eagerly, under ``torch.compile(fullgraph=True)``, or as one captured CUDA
    graph (:class:`zoo.layers.CapturedCall`, as APE's static decoder and :class:`zoo.ppgflowecg.StaticSampler`).
    Tokens equal the dynamic-cache path's (``tests/test_neo_decode.py``).

    Args:
        model: the NEO model.
        batch: rows.
        slots: cache slots (prompt + generated tokens at most).
        eos_id: end token (None: none).
        compile_decode: ``torch.compile`` the step with ``fullgraph=True`` (True: inductor; a string: that backend).
        cuda_graphs: capture the step as a CUDA graph on CUDA (elsewhere: the same step, eagerly).
        warmup: eager steps (on a side stream) before the capture.
    """

    #: on CUDA, decoding checks whether every row has ended (a host sync) every this many steps (CPU: every step)
    eos_check_every = 8

    def __init__(self, model: NEO, batch: int, slots: int, eos_id: int | None = None,
                 compile_decode: bool | str = False, cuda_graphs: bool = False, warmup: int = 2) -> None:
        self.model, self.batch, self.slots, self.eos_id, self.warmup = model, batch, slots, eos_id, warmup
        dev = model.lm.model.embed_tokens.weight.device
        self.device = dev
        self.cache = StaticKVCache(batch, slots, dev)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=dev)  # the token the next step reads
        self.next_t = torch.zeros(batch, dtype=torch.long, device=dev)  # its t
        self.done = torch.zeros(batch, dtype=torch.bool, device=dev)
        self.tokens = torch.zeros(batch, slots, dtype=torch.long, device=dev)  # the generated tokens
        self.index = torch.zeros(1, dtype=torch.long, device=dev)  # column of the next generated token
        self.step = self._step
        if compile_decode:
            backend = compile_decode if isinstance(compile_decode, str) else "inductor"
            self.step = torch.compile(self._step, fullgraph=True, dynamic=False, backend=backend)
        self.graphed = cuda_graphs and dev.type == "cuda"
        self._graph: CapturedCall | None = None

    def _emit(self, nxt: torch.Tensor) -> None:
        if self.eos_id is not None:
            nxt = torch.where(self.done, self.eos_id, nxt)
            self.done |= nxt == self.eos_id
        self.tokens.index_copy_(1, self.index, nxt[:, None])
        self.index += 1
        self.token.copy_(nxt[:, None])

    def _step(self) -> torch.Tensor:
        """One decode step on the static buffers (the graph / compiled region); returns the step's (B, vocab)
        logits (a static output: the same tensor on every replay of a captured step)."""
        m, cache = self.model, self.cache
        h = m.lm.model.embed_tokens(self.token)
        t = self.next_t[:, None]
        pos = m.rope(torch.stack((t, torch.zeros_like(t), torch.zeros_like(t))), h.dtype, hw=False)
        mask = cache.mask()
        for layer in m.lm.model.layers:
            h = layer(h, attention_mask=mask, position_embeddings=pos, cache=cache)
        logits = m.logits(m.lm.model.norm(h)[:, -1])
        self._emit(logits.argmax(-1))
        cache.pos += 1
        self.next_t += 1
        return logits

    def _autocast(self) -> torch.autocast:
        # the weight-cast cache off: a captured graph must cast the live weights on every replay
        t = self.device.type
        return torch.autocast(t, dtype=torch.get_autocast_dtype(t), enabled=torch.is_autocast_enabled(t),
                              cache_enabled=False)

    def _capture(self) -> None:
        live = (self.cache.pos, self.next_t, self.done, self.tokens, self.index, self.token)
        state = [x.clone() for x in live]

        def reset() -> None:  # the warm-up steps' K/V writes sit at slots the real steps overwrite before reading
            for x, saved in zip(live, state):
                x.copy_(saved)

        self._graph = CapturedCall(self.step, self.device, self.warmup, reset=reset, context=self._autocast)
        reset()

    def run_step(self) -> torch.Tensor:
        """One decode step (replayed graph, compiled or eager); returns its (B, vocab) logits (on a captured step the
        graph's static output, overwritten by the next replay)."""
        if not self.graphed:
            return self.step()
        if self._graph is None:
            self._capture()
        return self._graph()

    def _prefill(self, input_ids: torch.Tensor, images: list[torch.Tensor] | None, new_tokens: int,
                 doc_ids: torch.Tensor | None) -> torch.Tensor:
        """Prefill the cache, reset the decoding state and emit the first token; returns its (B, vocab) logits."""
        b, n = input_ids.shape
        if b != self.batch or n + new_tokens > self.slots:
            raise ValueError(f"decoder for {self.batch} rows and {self.slots} slots got {b} rows of {n} tokens + "
                             f"{new_tokens} new")
        doc = doc_ids if doc_ids is not None else torch.zeros_like(input_ids)
        cache = self.cache
        cache.prefilling, cache.neo_state = True, None
        out = self.model(input_ids, images, doc_ids=doc, cache=cache, use_cache=True)
        cache.start(doc)
        self.next_t.copy_(cache.neo_state["next_t"])
        self.done.zero_()
        self.index.zero_()
        logits = out.logits[:, -1]
        self._emit(logits.argmax(-1))
        return logits

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, images: list[torch.Tensor] | None = None, max_new_tokens: int = 16,
                 doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`NEO.generate`'s greedy tokens (B, n) for a prompt of this decoder's batch."""
        self._prefill(input_ids, images, max_new_tokens, doc_ids)
        every = 1 if self.device.type == "cpu" else self.eos_check_every
        emitted = 1
        while emitted < max_new_tokens:
            if self.eos_id is not None and emitted % every == 0 and bool(self.done.all()):
                break
            self.run_step()
            emitted += 1
        new = self.tokens[:, :emitted].clone()
        if self.eos_id is not None:  # cut after the first column where every row has ended (as the eager loop)
            ended = (new == self.eos_id).all(0)
            if bool(ended.any()):
                new = new[:, : int(ended.int().argmax()) + 1]
        return new

    @torch.no_grad()
    def teacher_forced(self, input_ids: torch.Tensor, tokens: torch.Tensor, images: list[torch.Tensor] | None = None,
                       doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of each decode position when the decoded tokens are ``tokens`` (B, n) instead of this
        decoder's own argmax (teacher forcing, e.g. on another decode path's tokens, to compare logits position by
        position after greedy paths diverged). The same prefill and step (eager, compiled or captured) as
        :meth:`generate`; ``eos_id`` is not applied.

        Returns:
            (n, B, vocab) float32 logits: [0] after the prompt, [i] after the prompt and ``tokens[:, :i]``.
        """
        n = tokens.shape[1]
        rows = [self._prefill(input_ids, images, n, doc_ids).to(torch.float32, copy=True)]
        for i in range(1, n):
            self.token.copy_(tokens[:, i - 1: i])
            rows.append(self.run_step().to(torch.float32, copy=True))  # a copy: the next replay overwrites it
        return torch.stack(rows)


def init_fresh_layer(layer: nn.Module, index: int, std: float = 0.02) -> None:
    """NEO's fresh-layer init: normal(0, std) for the q/k/v (T and H/W), gate and up projections; the output
    projections (o_proj, down_proj) scaled to std / sqrt(2·(index + 1)); biases 0, norms 1."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0 if "norm" in name else 0.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / (2 * (index + 1)) ** 0.5)
            else:
                p.normal_(0.0, std)


# -------------------------------------------------------------------------------- init from a plain Qwen3 model
def qwen3_to_neo(state_dict: dict[str, torch.Tensor], model: NEO) -> dict[str, torch.Tensor]:
    """A full NEO state dict initialised from a plain Qwen3 causal LM's (``model.layers.{i}`` ...).

    The LLM's layer i becomes layer E + i; ``q_proj_hw`` is built from ``q_proj``: per head, its 1st and 3rd
    quarters (the first half of the rotary pairs) concatenated, then tiled ×2 (H and W); ``k_proj_hw`` is zero, so
    the H/W scores start at 0 and text behaves as the plain Qwen3 does; the H/W norms are 1. The pre-Buffer layers
    and the patch embedding keep ``model``'s fresh weights.
    """
    out = dict(model.state_dict())
    e, d = model.num_buffer_layers, model.config.head_dim
    for k, v in state_dict.items():
        m = re.match(r"model\.layers\.(\d+)\.(.*)", k)
        key = f"lm.model.layers.{int(m.group(1)) + e}.{m.group(2)}" if m else f"lm.{k}"
        if key not in out:
            if k.endswith("rotary_emb.inv_freq"):
                continue
            raise KeyError(f"Qwen3 key {k!r} has no NEO counterpart {key!r}")
        out[key] = v
    if model.native_rope:
        for i in range(e, e + model.num_llm_layers):
            pre = f"lm.model.layers.{i}.self_attn."
            wq = out[pre + "q_proj.weight"].view(-1, d, out[pre + "q_proj.weight"].shape[-1])
            half = torch.cat((wq[:, : d // 4], wq[:, d // 2: 3 * d // 4]), dim=1)
            out[pre + "q_proj_hw.weight"] = half.repeat(1, 2, 1).reshape(-1, wq.shape[-1]).clone()
            out[pre + "k_proj_hw.weight"] = torch.zeros_like(out[pre + "k_proj_hw.weight"])
            for n in ("q_norm_h", "q_norm_w", "k_norm_h", "k_norm_w"):
                out[pre + n + ".weight"] = torch.ones_like(out[pre + n + ".weight"])
    if model.config.tie_word_embeddings:
        out["lm.lm_head.weight"] = out["lm.model.embed_tokens.weight"]
    return out


# --------------------------------------------------------------------------------- upstream checkpoint converter
_UPSTREAM = (("vision_model.embeddings.patch_embedding.", "vision.patch."),
             ("vision_model.embeddings.dense_embedding.", "vision.merge."),
             ("language_model.", "lm."))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: NEO) -> dict[str, torch.Tensor]:
    """Map a released NEO checkpoint (VLMTrainKit layout: ``vision_model.embeddings.{patch,dense}_embedding``,
    ``language_model.model.layers.{i}`` with pre-Buffer layers first) to this model's keys; a plain Qwen3 state dict
    (``model.layers.{i}``) goes through :func:`qwen3_to_neo`; our own keys pass unchanged."""
    if any(k.startswith("model.layers.") for k in state_dict):
        return qwen3_to_neo(state_dict, model)
    if not any(k.startswith(("vision_model.", "language_model.")) for k in state_dict):
        return state_dict
    out = {}
    for k, v in state_dict.items():
        if k.endswith(("rotary_emb.inv_freq", "rotary_emb_hw.inv_freq", "cos_cached_x", "sin_cached_x",
                       "cos_cached_y", "sin_cached_y")):
            continue
        for old, new in _UPSTREAM:
            if k.startswith(old):
                out[new + k[len(old):]] = v
                break
        else:
            raise KeyError(f"unexpected key {k!r} in a NEO checkpoint (expected vision_model.embeddings.* or "
                           "language_model.*)")
    if model.config.tie_word_embeddings and "lm.lm_head.weight" not in out:
        out["lm.lm_head.weight"] = out["lm.model.embed_tokens.weight"]
    return out


# ------------------------------------------------------------------------------------------------------ the card
MODEL_CARD = {
    "paper": "From Pixels to Words: Towards Native Vision-Language Primitives at Scale (NEO, ICLR 2026)",
    "url": "https://arxiv.org/abs/2510.14979",
    "code": "https://github.com/EvolvingLMMs-Lab/NEO",
    "license": "Apache-2.0 (code); weights Paranioar/NEO1_0-* on the HF hub",
    "reported_params_m": {"neo_2b": 2200.0, "neo_9b": 9000.0},
    "deviations": [
        "Parameter counts: the names count parameters without the word embedding / LM head (neo_2b 2.27 B of 2.585 B "
        "in total with the tied 151,936-row embedding; neo_9b 9.00 B of 10.25 B).",
        "No released weights are loaded here (no network); checkpoint_filter_fn maps the VLMTrainKit key layout and "
        "a plain Qwen3 state dict, tested on files the tests write.",
        "Tokeniser: the GPT-2 BPE bundled here plus ChatML / image special tokens (no Qwen tokenizer installs "
        "offline); the paper-size entrypoints keep Qwen3's 151,936-row vocabulary with placeholder image-token ids "
        "(151669-151671), which a real Qwen tokenizer would replace.",
        "rope_theta_vision defaults to 1e4 (the upstream config class); the training scripts pass 1000 — which one "
        "the "
        "checkpoints use is not verified.",
        "Attention: FlexAttention with a block mask (compiled on CUDA, eager elsewhere) or the same mask as a dense "
        "boolean for SDPA (attn_backend); no padding to a multiple of 128 (recent FlexAttention takes any length).",
        "Decoding: images only in the prefill; left-padded batches are masked through doc_ids (-1 on padding).",
        "The 1-D RoPE ablation (native_rope=False) drops the H/W branch and gives image tokens consecutive t; it is "
        "an ablation switch, not a paper model.",
    ],
}

register_data_config("neo_2b", mean=IMAGENET_MEAN, std=IMAGENET_STD, token_px=32, pixel_bounds=PIXEL_BOUNDS)
register_data_config("neo_9b", mean=IMAGENET_MEAN, std=IMAGENET_STD, token_px=32, pixel_bounds=PIXEL_BOUNDS)
register_data_config("neo_tiny", mean=IMAGENET_MEAN, std=IMAGENET_STD, token_px=8)


# ------------------------------------------------------------------------------------------------- entrypoints
@register_model
def neo_2b(pretrained: bool | str = False, **kwargs: Any) -> NEO:
    """NEO-2.2B: Qwen3-1.7B-Base (28 layers, hidden 2048, 16/8 heads) + 12 pre-Buffer layers, 32-px tokens."""
    return build_model(NEO, "neo_2b", pretrained, dict(
        hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_buffer_layers=12, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True), **kwargs)


@register_model
def neo_9b(pretrained: bool | str = False, **kwargs: Any) -> NEO:
    """NEO-9B: Qwen3-8B-Base (36 layers, hidden 4096, 32/8 heads) + 6 pre-Buffer layers, 32-px tokens."""
    return build_model(NEO, "neo_9b", pretrained, dict(
        hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_buffer_layers=6, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=False), **kwargs)


@register_model
def neo_tiny(pretrained: bool | str = False, **kwargs: Any) -> NEO:
    """Tiny NEO for CPU tests: hidden 64, 4/2 heads of 16, 2 pre-Buffer + 2 LLM layers, 8-px tokens (4 px × 2)."""
    return build_model(NEO, "neo_tiny", pretrained, dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_buffer_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
        max_position_embeddings=4096, vision_width=32, patch_size=4, downsample=2,
        image_token_ids=(509, 510, 511)), **kwargs)
