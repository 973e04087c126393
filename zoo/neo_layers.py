"""NEO's native vision-language primitives (arXiv 2510.14979): the two-convolution patch embedding with 2-D RoPE on
its features, Native-RoPE (T / H / W) and the native attention layer on transformers' Qwen3 attention, and the mixed
mask (bidirectional inside an image, causal elsewhere, packed documents kept apart) as a FlexAttention block mask or
an equal dense boolean mask for SDPA.

Reads top-down: smart resize -> patch embedding -> (t, h, w) positions and the mask -> Native-RoPE -> attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3RMSNorm, apply_rotary_pos_emb

__all__ = [
    "NativeAttention", "NativeMask", "NativeRope", "PatchEmbedding", "StaticKVCache", "attend_masked",
    "native_positions", "smart_resize",
]


# ----------------------------------------------------------------------------------------------------- resizing
def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 65536,
                 max_pixels: int = 4194304) -> tuple[int, int]:
    """(H, W) nearest to (``height``, ``width``) with both sides multiples of ``factor`` and the area within
    [``min_pixels``, ``max_pixels``], keeping the aspect ratio as closely as the rounding allows (the NEO / Qwen2-VL
    native-resolution rule; PT bounds 256²..2048², MT/SFT up to 4096²).

    Args:
        height: input height in pixels.
        width: input width in pixels.
        factor: both output sides are multiples of it (32 = one NEO token).
        min_pixels: lower bound of the output area.
        max_pixels: upper bound of the output area.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


# ---------------------------------------------------------------------------------------------- patch embedding
def _inv_freq(dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))


def rotate_pairs(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """1-D RoPE on adjacent channel pairs (2i, 2i+1) of ``x`` (..., N, D) at integer positions ``pos`` (N,), in
    float32 (the convention of NEO's patch-feature RoPE)."""
    ang = pos.to(torch.float32)[:, None] * _inv_freq(x.shape[-1], theta, x.device)  # (N, D/2)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).to(x.dtype)


class PatchEmbedding(nn.Module):
    """NEO's "vision model": Conv2d(3 -> width, p/p) + GELU, 2-D RoPE on the patch features (first half of the
    channels rotated by the patch column, second half by the row), then Conv2d(width -> hidden, d/d): one LLM token
    per (p·d)² pixels (16·2 = 32 px in the paper).

    Images of different sizes are zero-padded to the largest one for the strided convolutions; the kernels equal their
    strides, so padding never mixes into a valid token.

    Args:
        hidden_size: LLM hidden size (output channels).
        width: channels of the first convolution (1024 in the paper).
        patch_size: first kernel / stride (16).
        downsample: second kernel / stride (2).
        rope_theta: base of the patch-feature 2-D RoPE.
    """

    def __init__(self, hidden_size: int, width: int = 1024, patch_size: int = 16, downsample: int = 2,
                 rope_theta: float = 10000.0) -> None:
        super().__init__()
        if width % 4:
            raise ValueError(f"width {width} must be divisible by 4 (two RoPE halves of channel pairs)")
        self.patch_size, self.downsample, self.width, self.rope_theta = patch_size, downsample, width, rope_theta
        self.patch = nn.Conv2d(3, width, patch_size, patch_size)
        self.merge = nn.Conv2d(width, hidden_size, downsample, downsample)

    @property
    def token_px(self) -> int:
        """Pixels per token side (patch_size * downsample)."""
        return self.patch_size * self.downsample

    def forward(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings of normalised images (each (3, H, W), sides multiples of :attr:`token_px`).

        Returns:
            (ΣN, hidden) embeddings in row-major token order per image, and the (n, 2) token grids (rows, cols).
        """
        s = self.token_px
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[0] != 3 or im.shape[1] % s or im.shape[2] % s:
                raise ValueError(f"image {i}: expected (3, H, W) with H and W multiples of {s}, got "
                                 f"{tuple(im.shape)} (smart_resize it first)")
        hmax, wmax = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
        x = torch.stack([F.pad(im, (0, wmax - im.shape[2], 0, hmax - im.shape[1])) for im in images])
        x = F.gelu(self.patch(x.to(self.patch.weight.dtype)))  # (n, C, Hp, Wp)
        n, c, hp, wp = x.shape
        rows = torch.arange(hp, device=x.device).repeat_interleave(wp)
        cols = torch.arange(wp, device=x.device).repeat(hp)
        x = x.permute(0, 2, 3, 1).reshape(n, hp * wp, c)
        x = torch.cat((rotate_pairs(x[..., : c // 2], cols, self.rope_theta),
                       rotate_pairs(x[..., c // 2:], rows, self.rope_theta)), dim=-1)
        y = self.merge(x.reshape(n, hp, wp, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (n, Ht, Wt, hidden)
        grids = torch.tensor([[im.shape[1] // s, im.shape[2] // s] for im in images], device=x.device)
        tokens = torch.cat([y[i, : g[0], : g[1]].reshape(-1, y.shape[-1]) for i, g in enumerate(grids.tolist())])
        return tokens, grids

    def from_patches(self, pixel_values: torch.Tensor, grid_hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The upstream input format: flattened patches (ΣP, 3·p·p) (each patch channel-major, patches row-major per
        image) and ``grid_hw`` (n, 2) in patches."""
        p = self.patch_size
        images, start = [], 0
        for h, w in grid_hw.tolist():
            x = pixel_values[start: start + h * w].reshape(h, w, 3, p, p)
            images.append(x.permute(2, 0, 3, 1, 4).reshape(3, h * p, w * p))
            start += h * w
        if start != pixel_values.shape[0]:
            raise ValueError(f"grid_hw covers {start} patches, pixel_values has {pixel_values.shape[0]}")
        return self(images)


def patchify(image: torch.Tensor, patch_size: int = 16) -> torch.Tensor:
    """(3, H, W) -> (H/p · W/p, 3·p·p): the upstream flattened-patch format (inverse of ``from_patches``)."""
    c, h, w = image.shape
    p = patch_size
    return image.reshape(c, h // p, p, w // p, p).permute(1, 3, 0, 2, 4).reshape(-1, c * p * p)


# ------------------------------------------------------------------------------------------ positions and masks
@dataclass(frozen=True)
class TokenIds:
    """The ids of NEO's image tokens.

    Args:
        start: ``<img>``.
        context: ``<IMG_CONTEXT>`` (replaced by patch embeddings).
        end: ``</img>``.
    """

    start: int
    context: int
    end: int


def native_positions(input_ids: torch.Tensor, grids: torch.Tensor | None, ids: TokenIds,
                     doc_ids: torch.Tensor | None = None, one_t_per_image: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, h, w) position ids and image ids of a (packed) batch.

    Text tokens step t by one (h = w = 0); every ``<IMG_CONTEXT>`` of one image shares one t (one more than its
    ``<img>``'s) and carries its row / column on the token grid as (h, w); ``</img>`` continues at t + 1. t restarts
    at 0 in each packed document. With ``one_t_per_image=False`` (the 1-D RoPE ablation) image tokens step t too.

    Args:
        input_ids: (B, L) ids.
        grids: (n, 2) token grids of the images in order of appearance (row-major over the batch).
        ids: the image token ids.
        doc_ids: (B, L) document index of each token (None: one document per row).
        one_t_per_image: NEO's rule (True) or one t per token (False).

    Returns:
        ``thw`` (3, B, L) long and ``image_ids`` (B, L): the image's index for image tokens, -1 elsewhere.
    """
    b, n = input_ids.shape
    dev = input_ids.device
    ctx = input_ids == ids.context
    prev = F.pad(input_ids, (1, 0), value=-1)[:, :-1]
    first = ctx & (prev != ids.context)  # first context token of an image
    n_img = int(first.sum())
    if n_img and (grids is None or grids.shape[0] != n_img):
        raise ValueError(f"{n_img} images in input_ids but {0 if grids is None else grids.shape[0]} grids")
    # image index of each token (-1 for text)
    img_running = first.flatten().cumsum(0).view(b, n) - 1
    image_ids = torch.where(ctx, img_running, torch.full_like(img_running, -1))
    step = (~ctx) | first if one_t_per_image else torch.ones_like(ctx)
    t = step.long().cumsum(1) - 1
    if doc_ids is not None:  # restart t at each document: subtract t of the token before the document's start
        idx = torch.arange(n, device=dev).expand(b, n)
        starts = F.pad(doc_ids[:, 1:] != doc_ids[:, :-1], (1, 0), value=True)
        start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(1).values
        t = t - (t.gather(1, start_idx) + 1 - step.long().gather(1, start_idx))
    h = torch.zeros_like(t)
    w = torch.zeros_like(t)
    if n_img:
        flat = torch.arange(b * n, device=dev)
        first_idx = torch.where(first.flatten(), flat, torch.zeros_like(flat)).cummax(0).values
        ordinal = (flat - first_idx).view(b, n)
        gw = grids[:, 1].to(dev)[image_ids.clamp(min=0)]
        h = torch.where(ctx, ordinal // gw, h)
        w = torch.where(ctx, ordinal % gw, w)
        counts = torch.bincount(image_ids[ctx], minlength=n_img)
        want = (grids[:, 0] * grids[:, 1]).to(dev)
        if not torch.equal(counts, want):
            raise ValueError(f"<IMG_CONTEXT> runs of {counts.tolist()} tokens do not match the grids' {want.tolist()}")
    return torch.stack((t, h, w)), image_ids


class NativeMask:
    """NEO's mixed mask over a (packed) batch: a query sees a key of its own document that is not after it, or any
    key of the same image (bidirectional inside an image). Queries are the last ``q_len`` of the keys. The same mask
    function gives FlexAttention's block mask and SDPA's dense boolean mask (each built once, shared by the layers).

    Args:
        doc_ids: (B, Lk) document of each key (equal ids across rows are unrelated).
        image_ids: (B, Lk) image index of each key, -1 for text (all -1: plain causal).
        q_len: number of queries (the last ``q_len`` keys; less than Lk when decoding with a cache).
        backend: ``flex`` or ``sdpa``. FlexAttention has no CPU backward: on CPU with gradients the dense mask of the
            same function is used (the results agree; ``tests/test_neo.py``).
    """

    def __init__(self, doc_ids: torch.Tensor, image_ids: torch.Tensor, q_len: int, backend: str = "sdpa") -> None:
        self.doc_ids, self.image_ids, self.q_len, self.backend = doc_ids, image_ids, q_len, backend
        self._dense: torch.Tensor | None = None
        self._block = None

    def allowed(self, b: torch.Tensor, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        """The mask function (works elementwise on broadcast index tensors; FlexAttention's ``mask_mod``)."""
        qa = qi + (self.doc_ids.shape[1] - self.q_len)
        same_doc = self.doc_ids[b, qa] == self.doc_ids[b, ki]
        img = self.image_ids[b, qa]
        same_img = (img >= 0) & (img == self.image_ids[b, ki])
        return same_doc & ((ki <= qa) | same_img)

    def dense(self) -> torch.Tensor:
        """(B, 1, q_len, Lk) boolean mask (True = attend), the SDPA form."""
        if self._dense is None:
            bsz, lk = self.doc_ids.shape
            dev = self.doc_ids.device
            b = torch.arange(bsz, device=dev)[:, None, None]
            qi = torch.arange(self.q_len, device=dev)[None, :, None]
            ki = torch.arange(lk, device=dev)[None, None, :]
            self._dense = self.allowed(b, qi, ki)[:, None]
        return self._dense

    def block_mask(self):
        """The FlexAttention :class:`BlockMask` of the same function."""
        if self._block is None:
            from torch.nn.attention.flex_attention import create_block_mask

            def mask_mod(b, h, q_idx, kv_idx):
                return self.allowed(b, q_idx, kv_idx)

            bsz, lk = self.doc_ids.shape
            self._block = create_block_mask(mask_mod, bsz, None, self.q_len, lk, device=self.doc_ids.device)
        return self._block


# ------------------------------------------------------------------------------------------------- Native-RoPE
class NativeRope(nn.Module):
    """cos / sin tables of Native-RoPE: T over the full head_dim (θ_T, Qwen3's 1e6) on t, H and W over head_dim/2
    each (θ_HW = 1e4) on the row and column (transformers' rotate-half convention, as Qwen3).

    Args:
        head_dim: attention head dim of the T branch.
        theta: θ_T.
        theta_hw: θ_HW.
    """

    def __init__(self, head_dim: int, theta: float = 1e6, theta_hw: float = 1e4) -> None:
        super().__init__()
        self.register_buffer("inv_t", _inv_freq(head_dim, theta), persistent=False)
        self.register_buffer("inv_hw", _inv_freq(head_dim // 2, theta_hw), persistent=False)

    @staticmethod
    def _table(pos: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        ang = pos[..., None].float() * inv.float()
        emb = torch.cat((ang, ang), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, thw: torch.Tensor, dtype: torch.dtype, hw: bool = True
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``thw`` (3, B, L) -> {"t": (cos, sin) each (B, L, head_dim), "hw": (cos, sin) each (B, L, 2, head_dim/2),
        H then W}. ``hw=False`` (every h = w = 0, as for decoded text): no "hw" entry — the rotation at position 0
        is the identity, so :class:`NativeAttention` skips it (bit-exact, fewer kernels per decoded token)."""
        out = {"t": self._table(thw[0], self.inv_t, dtype)}
        if hw:
            out["hw"] = self._table(thw[1:].permute(1, 2, 0), self.inv_hw, dtype)
        return out


def _norm_pair(x: torch.Tensor, first: Qwen3RMSNorm, second: Qwen3RMSNorm) -> torch.Tensor:
    """``first`` on ``x[..., 0, :]`` and ``second`` on ``x[..., 1, :]`` in one pass: the arithmetic of two
    :class:`Qwen3RMSNorm` calls with one set of kernels."""
    dtype = x.dtype
    y = x.float()
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + first.variance_epsilon)
    return torch.stack((first.weight, second.weight)) * y.to(dtype)


# --------------------------------------------------------------------------------------------- native attention
_compiled_flex = None


def _flex(q, k, v, block_mask, scale):
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if q.is_cuda:  # the fused kernel needs torch.compile; the eager path materialises the scores
        _compiled_flex = _compiled_flex or torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)
    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)


def attend_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float
                  ) -> torch.Tensor:
    """Attention as two explicit matmuls: softmax(scale · q·kᵀ masked by ``allowed``)·v, the queries grouped per KV
    head (GQA without repeating the keys). For decoding (one query row): SDPA with a boolean mask and Q/K wider than V
    (2·head_dim vs head_dim) falls back to its unfused math path; these few ops fuse under ``torch.compile``.

    Args:
        q: (B, Hq, Lq, Dqk) queries.
        k: (B, Hkv, Lk, Dqk) keys.
        v: (B, Hkv, Lk, Dv) values.
        allowed: boolean, broadcastable to (B, 1, Lq, Lk) (True = attend; every query needs one allowed key).
        scale: score scale.
    """
    b, hq, lq, _ = q.shape
    hkv = k.shape[1]
    rep = hq // hkv
    scores = torch.matmul(q.reshape(b, hkv, rep * lq, -1), k.transpose(-1, -2)).float() * scale
    if lq > 1:  # grouped rows are (repeat, query): the mask rows repeat per query head of the group
        allowed = allowed.expand(b, 1, lq, k.shape[2]).repeat(1, 1, rep, 1)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).to(v.dtype)
    return torch.matmul(probs, v).view(b, hq, lq, -1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: NativeMask | torch.Tensor | None,
           scale: float) -> torch.Tensor:
    """Attention of (B, Hq, Lq, Dqk) queries on (B, Hkv, Lk, Dqk) keys and (B, Hkv, Lk, Dv) values under ``mask``
    (None: every key visible): FlexAttention with the block mask, SDPA with the dense mask, or for a boolean tensor
    (the fixed-shape decode step's, :class:`StaticKVCache`) :func:`attend_masked`."""
    if isinstance(mask, torch.Tensor):
        return attend_masked(q, k, v, mask, scale)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    no_flex_backward = not q.is_cuda and torch.is_grad_enabled() and (q.requires_grad or v.requires_grad)
    if mask.backend == "flex" and not no_flex_backward:
        return _flex(q, k, v, mask.block_mask(), scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(), scale=scale, enable_gqa=True)


class StaticKVCache:
    """A KV cache of fixed size for decoding with fixed shapes (the step can be compiled or captured as a CUDA graph).

    Per layer K (B, Hkv, capacity, 2·head_dim) and V (B, Hkv, capacity, head_dim), allocated at the first prefill in
    its dtype and then reused (written in place, never reallocated). While ``prefilling`` the layers' K/V are copied
    into slots [0, L) and returned unchanged (the prefill attends with its own mixed mask); afterwards each
    :meth:`update` writes one token at :attr:`pos` (a 0-d tensor on the device) and returns the whole buffers, which
    are attended under :meth:`mask`: the prompt keys of the row's last document, and every decoded key up to ``pos``
    (the unwritten tail and the stale slots of an earlier call are masked out).

    Args:
        batch: rows.
        capacity: slots (prompt + decoded tokens).
        device: where the buffers live.
    """

    def __init__(self, batch: int, capacity: int, device: torch.device | str) -> None:
        self.batch, self.capacity = batch, capacity
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.key_index = torch.arange(capacity, device=device)
        self.allowed = torch.zeros(batch, capacity, dtype=torch.bool, device=device)  # before the ``pos`` cut
        self.prefilling = True
        self.neo_state = None  # NEO.forward's decoding state (set by the prefill)

    def start(self, doc_ids: torch.Tensor) -> None:
        """After a prefill of ``doc_ids`` (B, L): decoding continues each row's last document at slot L."""
        n = doc_ids.shape[1]
        if n >= self.capacity:
            raise ValueError(f"prompt of {n} tokens leaves no slot in a cache of {self.capacity}")
        self.allowed[:, :n] = doc_ids == doc_ids[:, -1:]
        self.allowed[:, n:] = True
        self.pos.fill_(n)
        self.prefilling = False

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the layer's new K/V; returns the K/V to attend (see the class docstring)."""
        if self.prefilling:
            kb = self.keys.get(layer_idx)
            want = (self.batch, k.shape[1], self.capacity)
            if kb is None or kb.shape[:3] != want or kb.shape[3] != k.shape[3] or kb.dtype != k.dtype:
                self.keys[layer_idx] = k.new_zeros(*want, k.shape[3])
                self.values[layer_idx] = v.new_zeros(*want, v.shape[3])
            self.keys[layer_idx][:, :, : k.shape[2]].copy_(k)
            self.values[layer_idx][:, :, : v.shape[2]].copy_(v)
            return k, v
        at = self.pos.view(1)
        self.keys[layer_idx].index_copy_(2, at, k)
        self.values[layer_idx].index_copy_(2, at, v)
        return self.keys[layer_idx], self.values[layer_idx]

    def mask(self) -> torch.Tensor:
        """(B, 1, 1, capacity) keys the token at :attr:`pos` attends."""
        return (self.allowed & (self.key_index <= self.pos))[:, None, None]


class NativeAttention(Qwen3Attention):
    """Qwen3 attention with NEO's H/W branch: ``q_proj_hw`` / ``k_proj_hw`` (the shapes of q_proj / k_proj) split
    into H and W halves with their own RMSNorms and 1-D RoPE on the row / column; Q and K are [T | H | W]
    (2·head_dim per head), V keeps head_dim, and the scale stays 1/sqrt(head_dim). The score is therefore
    q_T·k_T + q_H·k_H + q_W·k_W. With ``hw=False`` it is plain Qwen3 attention (the 1-D RoPE ablation).

    Args:
        config: the Qwen3 config.
        layer_idx: index of the layer in the whole stack (pre-Buffer layers first).
        hw: build the H/W branch.
    """

    def __init__(self, config, layer_idx: int, hw: bool = True) -> None:
        super().__init__(config, layer_idx)
        self.hw = hw
        if hw:
            d, eps = self.head_dim, config.rms_norm_eps
            self.q_proj_hw = nn.Linear(config.hidden_size, config.num_attention_heads * d, bias=config.attention_bias)
            self.k_proj_hw = nn.Linear(config.hidden_size, config.num_key_value_heads * d,
                                       bias=config.attention_bias)
            self.q_norm_h, self.q_norm_w = Qwen3RMSNorm(d // 2, eps), Qwen3RMSNorm(d // 2, eps)
            self.k_norm_h, self.k_norm_w = Qwen3RMSNorm(d // 2, eps), Qwen3RMSNorm(d // 2, eps)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: dict, attention_mask=None, cache=None,
                **kwargs) -> tuple[torch.Tensor, None]:
        """``position_embeddings``: :class:`NativeRope`'s tables (without "hw": every h = w = 0, no H/W rotation);
        ``attention_mask``: a :class:`NativeMask` or None (every key visible)."""
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        q = self.q_norm(self.q_proj(hidden_states).view(shape)).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden_states).view(shape)).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings["t"])
        if self.hw:  # the H and W halves as an axis of 2: (..., 2, head_dim / 2), [H | W] once flattened
            hw_shape = (*shape[:-1], 2, self.head_dim // 2)
            qhw = _norm_pair(self.q_proj_hw(hidden_states).view(hw_shape), self.q_norm_h, self.q_norm_w)
            khw = _norm_pair(self.k_proj_hw(hidden_states).view(hw_shape), self.k_norm_h, self.k_norm_w)
            qhw, khw = qhw.transpose(1, 2), khw.transpose(1, 2)  # (B, heads, L, 2, head_dim / 2)
            if "hw" in position_embeddings:
                qhw, khw = apply_rotary_pos_emb(qhw, khw, *position_embeddings["hw"])
            q, k = torch.cat((q, qhw.flatten(-2)), dim=-1), torch.cat((k, khw.flatten(-2)), dim=-1)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = attend(q, k, v, attention_mask, self.scaling)  # scaling = head_dim ** -0.5 (= sqrt(2·head_dim / 2))
        return self.o_proj(out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)), None
