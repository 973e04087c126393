"""NEO: the scene-VQA ablations (Native-RoPE / mixed mask / pre-Buffer), the packed training step at the 2.2B shape
(FlexAttention block mask vs SDPA dense mask) and KV-cached decoding.

    python3 benchmarks/bench_neo.py ablation --device cpu                  # the CPU ablation of docs/neo.md
    python3 benchmarks/bench_neo.py ablation --device cuda --size small --steps 3000   # larger, on a GPU
    python3 benchmarks/bench_neo.py step --device cuda                     # neo_2b packed step, bf16, flex vs sdpa
    python3 benchmarks/bench_neo.py decode --device cuda                   # neo_2b decode tokens/s per decode mode
    python3 benchmarks/bench_neo.py ablation --tiny                        # smoke test of each mode (also step/decode)

``ablation``: each variant of :data:`VARIANTS` is trained from scratch with the same seed, data order, steps and
optimiser (``tasks.neo.NEOTask``, SFT stage: everything trains; the paper's PT-stage freezing needs a pretrained LLM
that does not exist here) on the synthetic scene set's VQA (``datamodules.synthetic.scenes.write_scene_dataset``),
then answers every held-out test question greedily; exact match overall, per question kind, and on square vs
non-square test images (aspect ratios never seen in training). ``step``: one packed row of ``--seq`` tokens (documents
of one 512×512 image = 256 tokens + text), forward + backward + AdamW step in bf16 autocast, tokens/s and MFU
(6·N_non-embedding·tokens + the attention matmuls, against ``--peak-tflops``). ``decode``: prefill one image +
question, then greedy decoding of ``--new`` tokens with the KV cache, one row per mode of :data:`DECODE_MODES`
(dynamic cache eager; static cache eager / compiled / CUDA graph / compiled + CUDA graph) and batch, each with its
agreement with the first mode (:func:`agreement`: first diverging token, and each mode teacher-forced on the first
mode's tokens: logit differences relative to the logit scale, argmax agreement, the reference's margin where the
argmax flips), then a ``decode_fp32`` row per batch (:func:`fp32_check`: the model in float32, greedy tokens of
``--fp32-modes`` against the dynamic path's, and every mode's low-precision logits against float32's). Weights are
random. Every result is one JSON line with the command, machine, versions and commit (``--out``; ``--tiny`` writes to
a temporary file).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tasks.bench import git_commit  # noqa: E402

#: ablation variants: model kwargs changed from the full NEO
VARIANTS: dict[str, dict[str, Any]] = {
    "neo": {},
    "rope_1d": {"native_rope": False},
    "causal_mask": {"mixed_mask": False},
    "no_prebuffer": {"num_buffer_layers": 0},
    "no_prebuffer_same_depth": {"num_buffer_layers": 0, "num_hidden_layers": 4},
}
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                 vision_width=16, patch_size=8, downsample=2, num_buffer_layers=1, num_hidden_layers=1,
                 tie_word_embeddings=True),
    "cpu": dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                vision_width=64, patch_size=8, downsample=2, num_buffer_layers=2, num_hidden_layers=2,
                tie_word_embeddings=True),
    "small": dict(hidden_size=384, intermediate_size=1152, num_attention_heads=6, num_key_value_heads=2, head_dim=64,
                  vision_width=256, patch_size=8, downsample=2, num_buffer_layers=2, num_hidden_layers=4,
                  tie_word_embeddings=True),
}


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    dev = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    return {"command": "python3 benchmarks/bench_neo.py " + shlex.join(sys.argv[1:]), "device": dev,
            "torch": torch.__version__, "commit": git_commit()[0][:12], "threads": torch.get_num_threads()}


def _write(args: argparse.Namespace, row: dict[str, Any]) -> None:
    row = {**row, **_meta(args)}
    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------------------ ablation
def scene_root(args: argparse.Namespace) -> Path:
    from datamodules.synthetic.scenes import write_scene_dataset

    root = Path(args.root or tempfile.gettempdir()) / f"neo_scenes_{args.n_train}_{args.seed}"
    if not (root / "test" / "vqa.jsonl").is_file():
        write_scene_dataset(root, n_train=args.n_train, n_val=20, n_test=args.n_test, seed=args.seed, size=64,
                            questions_per_image=4)
    return root


def evaluate(task, dm, device: str) -> dict[str, float]:
    """Exact match on the test split: overall, per kind, square vs non-square images."""
    from tasks.neo import normalise_answer

    hits: dict[str, list[float]] = {}
    task.net.eval()
    for batch in dm.test_dataloader():
        batch = {**batch, "input_ids": batch["input_ids"].to(device), "doc_ids": batch["doc_ids"].to(device),
                 "images": [im.to(device) for im in batch["images"]], "tokenizer": dm.tokenizer}
        preds = task.answer(batch)
        for p, a, k, im in zip(preds, batch["answers"], batch["kinds"], batch["images"]):
            h = float(normalise_answer(p) == normalise_answer(a))
            aspect = "square" if im.shape[1] == im.shape[2] else "non_square"
            for key in ("all", k, aspect):
                hits.setdefault(key, []).append(h)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(hits.items())} | {"n_test": len(hits["all"])}


def ablation(args: argparse.Namespace) -> None:
    import pytorch_lightning as pl

    from datamodules.vlm_conversations import VLMConversationDataModule
    from tasks.neo import NEOTask

    root = scene_root(args)
    if args.prepare_only:
        print(f"scene set ready: {root}")
        return
    train_seed = args.seed if args.train_seed is None else args.train_seed
    for name in args.variants.split(","):
        pl.seed_everything(train_seed, verbose=False)
        dm = VLMConversationDataModule(str(root), token_px=16, min_pixels=16 * 16, max_pixels=128 * 128,
                                       max_len=args.max_len, batch_size=args.batch, eval_batch_size=64,
                                       limit_eval=args.limit_eval, seed=train_seed, num_workers=args.workers)
        kw = {**SIZES[args.size], **VARIANTS[name]}
        task = NEOTask("neo_tiny", model_kwargs=kw, lr=args.lr, warmup_steps=max(args.steps // 20, 1),
                       max_new_tokens=3)
        trainer = pl.Trainer(max_steps=args.steps, accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                             precision="bf16-mixed" if args.device == "cuda" else "32-true", logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, gradient_clip_val=1.0,
                             limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False)
        t0 = time.time()
        trainer.fit(task, dm)
        train_s = time.time() - t0
        task.to(args.device)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            em = evaluate(task, dm, args.device)
        _write(args, {"bench": "ablation", "variant": name, "size": args.size, "steps": args.steps,
                      "scene_seed": args.seed, "train_seed": train_seed,
                      "batch_rows": args.batch, "max_len": args.max_len, "lr": args.lr, "n_train_scenes": args.n_train,
                      "params": sum(p.numel() for p in task.net.parameters()),
                      "final_loss": round(float(trainer.callback_metrics["train/loss"]), 4),
                      "train_s": round(train_s, 1), "exact_match": em})


# ------------------------------------------------------------------------------------------ packed training step
def packed_row(model, seq: int, grid: int, text: int, device: str) -> dict[str, Any]:
    """One packed row of documents ``[text] <img> grid² × <IMG_CONTEXT> </img> [answer]``."""
    ids_, docs, labels, images, d = [], [], [], [], 0
    s, c, e = model.ids.start, model.ids.context, model.ids.end
    px = model.token_px
    while True:
        doc = [11] * text + [s] + [c] * grid * grid + [e] + [12] * text
        if len(ids_) + len(doc) > seq:
            break
        ids_ += doc
        docs += [d] * len(doc)
        labels += [-100] * (len(doc) - text) + [12] * text
        images.append(torch.randn(3, grid * px, grid * px, device=device))
        d += 1
    ids = torch.tensor([ids_], device=device)
    lab = torch.tensor([labels], device=device)
    return {"input_ids": ids, "labels": lab, "doc_ids": torch.tensor([docs], device=device),
            "loss_weight": (lab != -100).float(), "images": images, "n_docs": d}


def step(args: argparse.Namespace) -> None:
    import zoo
    from tasks.neo import weighted_next_token_loss

    for backend in args.backends.split(","):
        torch.manual_seed(0)
        with torch.device(args.device):
            model = zoo.create_model(args.model, attn_backend=backend)
        if args.ckpt:
            model.lm.gradient_checkpointing_enable()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, fused=args.device == "cuda")
        batch = packed_row(model, args.seq, args.grid, args.text, args.device)
        tokens = batch["input_ids"].numel()

        def one() -> float:
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
                out = model(batch["input_ids"], batch["images"], doc_ids=batch["doc_ids"], return_hidden=True)
                loss = weighted_next_token_loss(out.hidden, batch["labels"], batch["loss_weight"], model.logits)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss)

        try:
            for _ in range(args.warmup):
                one()
            if args.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.time()
            for _ in range(args.iters):
                one()
            if args.device == "cuda":
                torch.cuda.synchronize()
            dt = (time.time() - t0) / args.iters
        except torch.OutOfMemoryError as err:
            _write(args, {"bench": "step", "model": args.model, "backend": backend, "seq": args.seq,
                          "error": str(err)[:200]})
            del model, opt
            torch.cuda.empty_cache()
            continue
        cfg = model.config
        n_emb = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
        n = sum(p.numel() for p in model.parameters()) - n_emb
        # attention matmuls: QK^T with 2·head_dim (T|H|W) and AV with head_dim, causal-ish (half), fwd + 2× bwd
        L, hq, d = tokens, cfg.num_attention_heads, cfg.head_dim
        doc_len = tokens / max(batch["n_docs"], 1)
        attn = 3 * 2 * len(model.lm.model.layers) * hq * (2 * d + d) * L * doc_len / 2
        flops = 6 * n * tokens + attn
        _write(args, {"bench": "step", "model": args.model, "backend": backend, "seq": args.seq,
                      "docs": batch["n_docs"],
                      "grad_ckpt": args.ckpt, "step_s": round(dt, 4), "tokens_per_s": round(tokens / dt, 1),
                      "mfu": round(flops / dt / (args.peak_tflops * 1e12), 4),
                      "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.device == "cuda"
                      else None})
        del model, opt
        if args.device == "cuda":
            torch.cuda.empty_cache()


#: decode modes: generate() options of each row
DECODE_MODES: dict[str, dict[str, Any]] = {
    "dynamic": {"static_cache": False},  # the eager path with a transformers DynamicCache
    "static": {},  # static KV cache, fixed-shape step, eager
    "static_compile": {"compile_decode": True},  # ... the step under torch.compile(fullgraph=True) (inductor)
    "static_graph": {"cuda_graphs": True},  # ... the eager step captured as one CUDA graph
    "static_compile_graph": {"compile_decode": True, "cuda_graphs": True},  # ... the compiled step, captured
}


class RowTimeout(Exception):
    """A decode row ran past ``--row-timeout``."""


def _alarm(seconds: int):
    import contextlib
    import signal

    @contextlib.contextmanager
    def limit():
        if seconds <= 0:
            yield
            return

        def fire(signum, frame):
            raise RowTimeout(f"row ran past {seconds} s")

        old = signal.signal(signal.SIGALRM, fire)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)

    return limit()


def _sig(x: float | torch.Tensor, digits: int = 4) -> float:
    return float(f"{float(x):.{digits}g}")


def cache_slots(prompt_len: int, new: int, max_cache_len: int | None) -> int:
    """The cache slots :meth:`zoo.neo.NEO.generate` picks (its kept static decoder is looked up by them)."""
    n = max(max_cache_len or 0, prompt_len + new)
    return n + (-n) % 64


@torch.no_grad()
def dynamic_teacher_forced(model, input_ids: torch.Tensor, images: list[torch.Tensor], tokens: torch.Tensor
                           ) -> torch.Tensor:
    """(n, B, vocab) float32 logits of the dynamic-cache path (``generate(static_cache=False)``'s prefill and steps)
    when the decoded tokens are ``tokens`` (B, n): [0] after the prompt, [i] after ``tokens[:, :i]``."""
    out = model(input_ids, images, use_cache=True)
    rows, cache = [out.logits[:, -1].to(torch.float32, copy=True)], out.cache
    doc = torch.zeros_like(input_ids[:, -1:])
    for i in range(1, tokens.shape[1]):
        out = model(tokens[:, i - 1: i], doc_ids=doc, cache=cache, use_cache=True)
        rows.append(out.logits[:, -1].to(torch.float32, copy=True))
    return torch.stack(rows)


@torch.no_grad()
def teacher_forced(model, mode: str, input_ids: torch.Tensor, images: list[torch.Tensor], tokens: torch.Tensor,
                   slots: int) -> torch.Tensor:
    """:func:`dynamic_teacher_forced` for a mode of :data:`DECODE_MODES`: a static mode runs the kept decoder of its
    generate() calls (the same compiled / captured step: no recompilation) through
    :meth:`zoo.neo.NEOStaticDecoder.teacher_forced`."""
    kw = DECODE_MODES[mode]
    if not kw.get("static_cache", True):
        return dynamic_teacher_forced(model, input_ids, images, tokens)
    dec = model.static_decoder(input_ids.shape[0], slots, None, kw.get("compile_decode", False),
                               kw.get("cuda_graphs", False))
    return dec.teacher_forced(input_ids, tokens, images)


@torch.no_grad()
def logit_diff(ref: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Per-position differences of (n, B, vocab) logits: the largest absolute one, the largest and median of
    max|Δ| / std(ref logits over the vocabulary) (relative to the logit scale), and argmax agreement."""
    diff = (other - ref).abs().amax(-1)
    rel = diff / ref.std(-1).clamp_min(1e-12)
    return {"max_abs": _sig(diff.max()), "max_rel": _sig(rel.max()), "median_rel": _sig(rel.median()),
            "argmax_agreement": _sig((other.argmax(-1) == ref.argmax(-1)).float().mean())}


@torch.no_grad()
def agreement(ref_tokens: torch.Tensor, ref_logits: torch.Tensor, tokens: torch.Tensor, tf_logits: torch.Tensor
              ) -> dict[str, Any]:
    """How a mode's greedy decode agrees with the reference mode's.

    Args:
        ref_tokens: (B, n) the reference's greedy tokens.
        ref_logits: (n, B, vocab) the reference's logits on them (teacher-forced: its own).
        tokens: (B, m) the mode's greedy tokens.
        tf_logits: (n, B, vocab) the mode's logits teacher-forced on ``ref_tokens``.

    Returns:
        ``first_divergence_step`` (first token column that differs in any row; None: none), ``token_agreement``
        (fraction of equal tokens), ``tf_step0_max_abs_logit_diff`` (the prefill's), ``tf_max_abs_logit_diff``,
        ``tf_max_rel_logit_diff`` / ``tf_median_rel_logit_diff`` (per position max|Δ| over the reference's logit std),
        ``tf_argmax_agreement`` (the mode's teacher-forced argmax == the reference token), ``tf_argmax_flips``, and
        ``tf_flip_max_ref_margin_rel``: the largest reference margin (its logit of its token minus its logit of the
        mode's argmax, over its logit std) among the flips — small when flips only happen at near-ties (rounding),
        large for a real bug; ``ref_margin_rel_median``: the reference's median top-1 minus top-2 margin, for scale;
        at the first divergence, ``ref_margin_rel_at_divergence`` and ``tf_rel_logit_diff_at_divergence``.
    """
    n = min(ref_tokens.shape[1], tokens.shape[1])
    same = tokens[:, :n] == ref_tokens[:, :n]
    cols = same.all(0)
    first = None if bool(cols.all()) else int((~cols).int().argmax())
    d = logit_diff(ref_logits, tf_logits)
    scale = ref_logits.std(-1).clamp_min(1e-12)  # (n, B)
    rel = (tf_logits - ref_logits).abs().amax(-1) / scale
    ref_tok = ref_tokens.T[: ref_logits.shape[0], :, None]  # (n, B, 1)
    arg = tf_logits.argmax(-1, keepdim=True)
    flips = (arg != ref_tok)[..., 0]
    margin = (ref_logits.gather(-1, ref_tok) - ref_logits.gather(-1, arg))[..., 0] / scale
    top2 = ref_logits.topk(2, -1).values
    top_margin = (top2[..., 0] - top2[..., 1]) / scale
    out = {"first_divergence_step": first, "token_agreement": _sig(same.float().mean()),
           "tf_step0_max_abs_logit_diff": _sig((tf_logits[0] - ref_logits[0]).abs().max()),
           "tf_max_abs_logit_diff": d["max_abs"], "tf_max_rel_logit_diff": d["max_rel"],
           "tf_median_rel_logit_diff": d["median_rel"],
           "tf_argmax_agreement": _sig((~flips).float().mean()), "tf_argmax_flips": int(flips.sum()),
           "tf_flip_max_ref_margin_rel": _sig(margin[flips].max()) if bool(flips.any()) else None,
           "ref_margin_rel_median": _sig(top_margin.median())}
    if first is not None and first < ref_logits.shape[0]:
        r = int((~same[:, first]).int().argmax())
        out |= {"ref_margin_rel_at_divergence": _sig(top_margin[first, r]),
                "tf_rel_logit_diff_at_divergence": _sig(rel[first, r])}
    return out


def fp32_check(args: argparse.Namespace, model, inputs: dict[int, tuple], references: dict[int, torch.Tensor],
               kept: dict[int, dict[str, torch.Tensor]]) -> None:
    """One ``decode_fp32`` row per batch, the model cast to float32 (last: it stays float32): each mode of
    ``--fp32-modes`` decodes ``--fp32-check-new`` greedy tokens, against the float32 dynamic path's (``modes``:
    :func:`agreement` fields, teacher-forced on its tokens) — float32 must agree; and every low-precision mode's
    logits of the timed rows (teacher-forced on the reference tokens) against float32's on the same tokens
    (``low_precision_vs_fp32``: :func:`logit_diff`) — the rounding error of each mode."""
    low = str(next(model.parameters()).dtype).removeprefix("torch.")
    model.float()
    modes = [m for m in args.fp32_modes.split(",") if args.device == "cuda" or "graph" not in m]
    for bsz, (ids, images) in inputs.items():
        n = min(args.fp32_check_new, references[bsz].shape[1])
        images = [im.float() for im in images]
        row = {"bench": "decode_fp32", "model": args.model, "batch": bsz, "prompt_tokens": ids.shape[1],
               "new_tokens": n, "low_precision": low, "reference_mode": modes[0]}
        slots = cache_slots(ids.shape[1], args.new, ids.shape[1] + args.new)
        try:
            with _alarm(args.row_timeout), torch.no_grad():
                ref_kw = DECODE_MODES[modes[0]]
                ref = model.generate(ids, images, max_new_tokens=n, **_gen(ref_kw, ids.shape[1], args.new))
                ref_logits = teacher_forced(model, modes[0], ids, images, ref, slots)
                row["modes"] = {}
                for mode in modes[1:]:
                    toks = model.generate(ids, images, max_new_tokens=n,
                                          **_gen(DECODE_MODES[mode], ids.shape[1], args.new))
                    tf = teacher_forced(model, mode, ids, images, ref, slots)
                    row["modes"][mode] = {"same_tokens": bool(torch.equal(toks, ref)),
                                          **agreement(ref, ref_logits, toks, tf)}
                fp32 = dynamic_teacher_forced(model, ids, images, references[bsz][:, :n])
                row["low_precision_vs_fp32"] = {mode: logit_diff(fp32, tf[:n]) for mode, tf in kept[bsz].items()}
        except Exception as err:  # noqa: BLE001 (a failing check is a row; the next batch runs)
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        _write(args, row)


def _gen(kw: dict[str, Any], prompt_len: int, new: int) -> dict[str, Any]:
    """generate() options of a mode (static modes: slots for ``new`` tokens, so every call shares one decoder)."""
    return dict(kw, max_cache_len=prompt_len + new) if kw.get("static_cache", True) else dict(kw)


def decode(args: argparse.Namespace) -> None:
    """Greedy decoding rows per (mode, batch): a warm-up generate (compilation / capture, same cache slots), a timed
    prefill, then a timed generate of ``--new`` tokens (minus one prefill); each row under ``--row-timeout``."""
    import zoo

    torch.manual_seed(0)
    with torch.device(args.device):
        model = zoo.create_model(args.model).eval()
    dtype = args.dtype if args.dtype != "auto" else "bfloat16" if args.device == "cuda" else "float32"
    model.to(getattr(torch, dtype))
    s, c, e = model.ids.start, model.ids.context, model.ids.end
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    modes = args.decode_modes.split(",") if args.decode_modes else [
        m for m in DECODE_MODES if args.device == "cuda" or "graph" not in m]
    reference: dict[int, torch.Tensor] = {}  # per batch: the first mode's tokens ...
    ref_logits: dict[int, torch.Tensor] = {}  # ... and its logits on them
    inputs: dict[int, tuple] = {}
    kept: dict[int, dict[str, torch.Tensor]] = {}  # per batch and mode: teacher-forced logits for the fp32 check
    fp32 = args.agreement and args.fp32_check_new > 0 and dtype != "float32"
    for mode in modes:
        kw = DECODE_MODES[mode]
        for bsz in (int(b) for b in args.decode_batches.split(",")):
            prompt = [11] * 8 + [s] + [c] * args.grid * args.grid + [e] + [12] * 16
            ids = torch.tensor([prompt] * bsz, device=args.device)
            g = torch.Generator(args.device).manual_seed(bsz)
            images = [torch.randn(3, args.grid * model.token_px, args.grid * model.token_px, device=args.device,
                                  generator=g).to(next(model.parameters()).dtype) for _ in range(bsz)]
            inputs.setdefault(bsz, (ids, images))
            gen = _gen(kw, len(prompt), args.new)
            row = {"bench": "decode", "model": args.model, "mode": mode, "batch": bsz, "prompt_tokens": len(prompt),
                   "dtype": dtype}
            try:
                with _alarm(args.row_timeout):
                    t0 = time.time()
                    model.generate(ids, images, max_new_tokens=4, **gen)  # warm-up: compile / capture
                    sync()
                    t1 = time.time()
                    with torch.no_grad():  # as inside generate(), whose prefill this is subtracted as
                        out = model(ids, images, use_cache=True)
                    sync()
                    t2 = time.time()
                    new = model.generate(ids, images, max_new_tokens=args.new, **gen)
                    sync()
                    t3 = time.time()
                del out
            except Exception as err:  # noqa: BLE001 (a failing mode is a row; the next one runs)
                _write(args, {**row, "error": f"{type(err).__name__}: {str(err)[:300]}"})
                continue
            decode_s = (t3 - t2) - (t2 - t1)  # generate() includes one prefill
            ref = reference.setdefault(bsz, new)
            row |= {"new_tokens": new.shape[1], "warmup_s": round(t1 - t0, 2),
                    "prefill_s": round(t2 - t1, 4), "ms_per_step": round(1e3 * decode_s / new.shape[1], 2),
                    "decode_tokens_per_s": round(bsz * new.shape[1] / max(decode_s, 1e-9), 1),
                    # greedy tokens against the first mode's (bf16 on CUDA: near-ties may flip; the agreement
                    # fields below tell a rounding flip from a bug)
                    "same_tokens_as_" + modes[0]: bool(torch.equal(new, ref))}
            if args.agreement:  # untimed: this mode teacher-forced on the reference tokens
                try:
                    with _alarm(args.row_timeout):
                        t4 = time.time()
                        tf = teacher_forced(model, mode, ids, images, ref, cache_slots(len(prompt), args.new,
                                                                                       gen.get("max_cache_len")))
                        if new is ref:  # this row is the reference: its own logits are the reference's
                            ref_logits[bsz] = tf
                        if bsz not in ref_logits:
                            raise RuntimeError("the reference row has no teacher-forced logits")
                        row |= agreement(ref, ref_logits[bsz], new, tf)
                        row["agreement_s"] = round(time.time() - t4, 2)
                        if fp32:
                            kept.setdefault(bsz, {})[mode] = tf[: args.fp32_check_new].clone()
                except Exception as err:  # noqa: BLE001
                    row["agreement_error"] = f"{type(err).__name__}: {str(err)[:300]}"
            _write(args, row)
    if fp32 and reference:
        fp32_check(args, model, {b: inputs[b] for b in reference}, reference, kept)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("bench", choices=["ablation", "step", "decode"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny sizes, few steps, temporary output")
    p.add_argument("--out", default=None, help="JSON-lines file (default benchmarks/results/neo.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="scene-set seed (and the training seed unless --train-seed)")
    p.add_argument("--train-seed", type=int, default=None,
                   help="ablation: seed of the initialisation and the data order (default --seed); the scene set "
                        "stays the one of --seed")
    # ablation
    p.add_argument("--size", default="cpu", choices=sorted(SIZES))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=2, help="packed rows per step")
    p.add_argument("--max-len", type=int, default=512, help="packing length")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-train", type=int, default=2000, help="training scenes (4 questions each)")
    p.add_argument("--n-test", type=int, default=300, help="test scenes (a third at unseen aspect ratios)")
    p.add_argument("--limit-eval", type=int, default=None)
    p.add_argument("--workers", type=int, default=0, help="data-loader workers")
    p.add_argument("--prepare-only", action="store_true",
                   help="ablation: write the scene set under --root and stop (before runs that share it start at once)")
    p.add_argument("--root", default=None, help="folder for the scene set (default: the temp dir)")
    # step / decode
    p.add_argument("--model", default="neo_2b")
    p.add_argument("--backends", default="flex,sdpa")
    p.add_argument("--seq", type=int, default=8192, help="packed row length")
    p.add_argument("--grid", type=int, default=16, help="image side in tokens (16 = 512 px)")
    p.add_argument("--text", type=int, default=64, help="text tokens before and after each image")
    p.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H200 SXM: 989)")
    p.add_argument("--new", type=int, default=128, help="decoded tokens")
    p.add_argument("--decode-batches", default="1,8")
    p.add_argument("--decode-modes", default=None,
                   help=f"comma list of {','.join(DECODE_MODES)} (default: all; on the CPU those without graph)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="decode: model weights' dtype (auto: bfloat16 on CUDA, float32 elsewhere)")
    p.add_argument("--no-agreement", dest="agreement", action="store_false",
                   help="decode: skip the teacher-forced agreement fields and the fp32 check (timing only)")
    p.add_argument("--fp32-check-new", type=int, default=32,
                   help="decode: greedy tokens of the float32 check after the rows (0: none; skipped in float32)")
    p.add_argument("--fp32-modes", default="dynamic,static,static_graph",
                   help="decode: modes of the float32 check, the first is the reference (off CUDA: without graph)")
    p.add_argument("--row-timeout", type=int, default=0, help="seconds per decode row (0: none); a late row is an "
                   "error row and the next one runs")
    a = p.parse_args(argv)
    if a.tiny:
        a.size, a.steps, a.n_train, a.n_test, a.limit_eval = "tiny", 3, 12, 6, 8
        a.model, a.seq, a.grid, a.text, a.warmup, a.iters, a.new = "neo_tiny", 96, 4, 4, 1, 1, 4
        a.variants = "neo,rope_1d" if a.variants == ",".join(VARIANTS) else a.variants
        a.decode_batches = "1"
        a.row_timeout = a.row_timeout or 60
        a.out = a.out or str(Path(tempfile.mkdtemp()) / "neo.jsonl")
    a.out = a.out or str(ROOT / "benchmarks" / "results" / "neo.jsonl")
    return a


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    {"ablation": ablation, "step": step, "decode": decode}[args.bench](args)


if __name__ == "__main__":
    main()
