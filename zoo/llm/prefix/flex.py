"""FlexAttention for the shared-prefix layouts: one fused kernel per layer, block masks built once per batch.

* :func:`block_mask_from_fn` turns an elementwise mask function ``allowed(b, q, k) -> bool`` into a FlexAttention
  :class:`~torch.nn.attention.flex_attention.BlockMask` without materialising the whole ``[L, L]`` mask: the mask is
  evaluated in query-block chunks and reduced to block level (empty blocks are skipped by the kernel, full blocks
  skip the mask function, only the blocks on a boundary evaluate it).
* :func:`flex_attention_call` is the one entry point of the kernel: the compiled (fused, Triton) FlexAttention on
  CUDA, eager FlexAttention elsewhere (it materialises the scores: tests and CPU inference). FlexAttention has no CPU
  backward, so on CPU with gradients it evaluates the *same* mask function densely (SDPA / the eager soft-cap path);
  the results agree (``tests/test_llm_prefix_flex.py``). Soft-capping (Gemma-2) and APE's temperature enter as a
  ``score_mod`` (``tanh(s / c) * c``, then ``/ T``), GQA through ``enable_gqa``; the log-sum-exp is returned on demand.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

BLOCK = 128  # FlexAttention's default block size (the block mask is built at this granularity)
_COMPILED: dict[bool | None, Callable] = {}
_DEFAULTS: dict[str, bool | None] = {"dynamic": None}


def configure_flex(dynamic: bool | None = None) -> None:
    """The ``dynamic`` setting the compiled kernel uses when a call does not give one (None: PyTorch's default;
    True: one compile for every length, e.g. a benchmark sweeping many shapes)."""
    _DEFAULTS["dynamic"] = dynamic


def flex_supported() -> bool:
    """True when ``torch.nn.attention.flex_attention`` can be imported."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:  # pragma: no cover - torch < 2.5
        return False
    return True


def needs_dense_fallback(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """FlexAttention has no backward off CUDA: CPU calls that need gradients take the dense path of the same mask."""
    return (not q.is_cuda) and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))


def compiled_flex(dynamic: bool | None = None) -> Callable:
    """``torch.compile(flex_attention)`` (one per ``dynamic`` setting, created on first use).

    ``dynamic=None`` (PyTorch's default) compiles the first shape statically and recompiles once with dynamic lengths
    when a second length arrives, so ragged GRPO batches do not recompile per step.
    """
    if dynamic not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED[dynamic] = torch.compile(flex_attention, dynamic=dynamic)
    return _COMPILED[dynamic]


def _eager_flex(flex_attention: Callable) -> Callable:
    """Eager FlexAttention without its "not compiled, will be slow" warning (asked for on purpose: CPU and tests)."""

    def call(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention.*compil.*")
            warnings.filterwarnings("ignore", message=".*return_lse is deprecated.*")
            return flex_attention(*args, **kwargs)

    return call


def block_mask_from_fn(
    allowed: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    batch: int,
    q_len: int,
    kv_len: int,
    device: torch.device | str,
    block: int = BLOCK,
    chunk_elements: int = 1 << 26,
):
    """The :class:`BlockMask` of ``allowed`` (True = attend), computed chunk by chunk at block level.

    Args:
        allowed: elementwise mask function of broadcastable index tensors ``(b, q, k)``; it is also the block mask's
            ``mask_mod`` (with a head argument), so it must accept indices up to the lengths rounded up to ``block``.
        batch: batch size (one mask per row; heads share it).
        q_len: number of queries.
        kv_len: number of keys.
        device: where the mask lives (the attention's device).
        block: block size of the mask.
        chunk_elements: at most this many mask entries are evaluated at once.

    Returns:
        A ``BlockMask`` of shape ``[batch, 1, q_len, kv_len]``.
    """
    from torch.nn.attention.flex_attention import BlockMask

    nq, nk = math.ceil(q_len / block), math.ceil(kv_len / block)
    rows = max(1, chunk_elements // max(1, batch * nk * block * block))  # query blocks per chunk
    b = torch.arange(batch, device=device)[:, None, None]
    ki = torch.arange(nk * block, device=device)[None, None, :]
    any_parts, all_parts = [], []
    for q0 in range(0, nq, rows):
        q1 = min(nq, q0 + rows)
        qi = torch.arange(q0 * block, q1 * block, device=device)[None, :, None]
        m = allowed(b, qi, ki) & (qi < q_len) & (ki < kv_len)
        m = m.view(batch, q1 - q0, block, nk, block)
        any_parts.append(m.any(4).any(2))
        all_parts.append(m.all(4).all(2))
    any_b, full = torch.cat(any_parts, 1), torch.cat(all_parts, 1)
    partial = any_b & ~full

    def to_kv(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num = m.sum(-1, dtype=torch.int32)[:, None]
        idx = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)[:, None]
        return num.contiguous(), idx.contiguous()

    kv_num, kv_idx = to_kv(partial)
    full_num, full_idx = to_kv(full)

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(b, q_idx, kv_idx)

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(q_len, kv_len))


def dense_from_fn(allowed: Callable, batch: int, q_len: int, kv_len: int, device) -> torch.Tensor:
    """``[batch, 1, q_len, kv_len]`` boolean mask of ``allowed`` (the dense twin of :func:`block_mask_from_fn`)."""
    b = torch.arange(batch, device=device)[:, None, None]
    qi = torch.arange(q_len, device=device)[None, :, None]
    ki = torch.arange(kv_len, device=device)[None, None, :]
    return allowed(b, qi, ki)[:, None]


def score_mod_for(softcap: float | None, temperature: float = 1.0) -> Callable | None:
    """FlexAttention ``score_mod``: soft-capping ``tanh(s / c) * c`` then ``/ T`` (None when both are off)."""
    if softcap is None and temperature == 1.0:
        return None
    if softcap is None:  # folded into the scale by flex_attention_call; kept here for completeness
        return lambda score, b, h, q_idx, kv_idx: score / temperature
    if temperature == 1.0:
        return lambda score, b, h, q_idx, kv_idx: torch.tanh(score / softcap) * softcap
    return lambda score, b, h, q_idx, kv_idx: torch.tanh(score / softcap) * softcap / temperature


def flex_attention_call(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask,
    scale: float | None,
    softcap: float | None = None,
    temperature: float = 1.0,
    return_lse: bool = False,
    dense_mask: Callable[[], torch.Tensor] | None = None,
    compile: bool | None = None,
    dynamic: bool | None = None,
):
    """One FlexAttention call (``q [b, H, Tq, d]``, ``k/v [b, Hkv, Tk, d]``) -> ``out [b, H, Tq, d]`` (``, lse``).

    Args:
        q: queries.
        k: keys (GQA: fewer heads, broadcast by the kernel).
        v: values.
        block_mask: the ``BlockMask`` (None: every key visible).
        scale: score scale (None: ``1/sqrt(d)``).
        softcap: attention-logit soft-capping (Gemma-2), applied before the temperature; None = off.
        temperature: divides the (capped) scores (APE's T).
        return_lse: also return the natural-log log-sum-exp of the (modified, masked) scores, float32 ``[b, H, Tq]``.
        dense_mask: returns the dense ``[b, 1, Tq, Tk]`` mask of the same function, used where FlexAttention cannot
            run (CPU with gradients); None with ``block_mask=None`` means no mask.
        compile: use the compiled kernel (default: on CUDA).
        dynamic: ``torch.compile``'s ``dynamic`` for the compiled kernel.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if needs_dense_fallback(q, k, v):
        from .eager import attention_with_lse

        mask = dense_mask() if dense_mask is not None else None
        if return_lse or softcap is not None or temperature != 1.0:
            out, lse = attention_with_lse(q, k, v, mask, scale, temperature=temperature, softcap=softcap)
            return (out, lse) if return_lse else out
        n_rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=n_rep > 1)
    from torch.nn.attention.flex_attention import flex_attention

    use_compiled = q.is_cuda if compile is None else compile
    dynamic = _DEFAULTS["dynamic"] if dynamic is None else dynamic
    fn = compiled_flex(dynamic) if use_compiled else _eager_flex(flex_attention)
    if softcap is None and temperature != 1.0:  # exact: s * scale / T
        scale, temperature = scale / temperature, 1.0
    score_mod = score_mod_for(softcap, temperature)
    gqa = q.shape[1] != k.shape[1]
    if return_lse:
        try:
            from torch.nn.attention.flex_attention import AuxRequest
        except ImportError:  # torch < 2.9: the older keyword
            out, lse = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa,
                          return_lse=True)
            return out, lse.float()
        out, aux = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa,
                      return_aux=AuxRequest(lse=True))
        return out, aux.lse.float()
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa)
