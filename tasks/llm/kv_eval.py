"""The KV-cache evaluation harness shared by the LLM-side papers: one command runs a grid of cache methods on a trained
causal LM (the reference LM by default) and writes a table and a quality-vs-compression plot.

    python -m tasks.llm.kv_eval --config configs/kv_cache/grid_tiny.yaml --out runs/kv_eval/tiny
    python -m tasks.llm.kv_eval --config configs/kv_cache/grid_base.yaml --model runs/reference_lm/base --out ...

Per method, beside the uncompressed cache (``full``):

* ``ppl`` — perplexity of held-out real text (the reference LM's val files, never trained on): each window's first
  ``context`` tokens are prefilled into the cache, the next ``continuation`` tokens are scored while fed ``step`` at a
  time through the cache (the compressed past is what they attend to);
* ``passkey@L`` — retrieval of a 5-digit number planted at a random depth of ``L`` tokens of held-out code
  (``PASSKEY = 48213`` ... ``assert PASSKEY ==``), greedy through the cache; share of trials whose digits match;
* ``greedy_match`` — share of prompts whose greedy continuation equals the full cache's token for token
  (``greedy_prefix``: mean share of the continuation before the first difference);
* ``bytes`` / ``ratio`` — bytes the cache really holds after prefill + decoding (``memory_bytes()``), and the full
  cache's bytes over it (the full cache counted the same way, in the model's dtype);
* ``wire_bytes`` / ``wire_ratio`` — for a codec with ``encoded_bytes()`` (CacheGen): the bitstream alone, the bytes
  that are stored or sent (CacheGen's own measure), and the full cache's bytes over it;
* ``tok_s`` — decode tokens/s of a manual greedy loop (batch ``batch``) after the prefill.

A method is a ``{name, class_path, init_args}`` entry; ``class_path`` is any ``Cache`` with ``memory_bytes()``.
The model gets :func:`zoo.llm.cache.scores.enable_query_observation`'s hooks, so methods that rank tokens by attention
(KVMerger, EMS) see the real queries.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from datamodules.stdlib_text import ReferenceTokenizer, stdlib_documents
from tasks.llm.engines.generation import cache_kwarg, output_cache
from zoo.llm import build_causal_lm
from zoo.llm.cache.scores import enable_query_observation

__all__ = ["EvalSettings", "evaluate_method", "greedy_decode", "held_out_ids", "run_grid", "method_factory"]

CacheFactory = Callable[[], Any]


def method_factory(spec: dict[str, Any], model_config: Any = None) -> CacheFactory:
    """A zero-argument cache constructor from ``{class_path, init_args}`` (``full``: the uncompressed cache); a class
    whose ``__init__`` takes ``config`` gets ``model_config``."""
    import inspect

    path = spec.get("class_path", "zoo.llm.cache.base.FullCache")
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = dict(spec.get("init_args") or {})
    if "config" in inspect.signature(cls.__init__).parameters and "config" not in args:
        args["config"] = model_config
    return lambda: cls(**args)


def held_out_ids(folder: str | Path, tokenizer: ReferenceTokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """The model ids of the held-out documents named in ``<folder>/stdlib_manifest.json`` (this interpreter's copies;
    documents whose hash differs from the manifest are skipped and counted in the message when none remain)."""
    manifest = json.loads((Path(folder) / "stdlib_manifest.json").read_text())
    docs = stdlib_documents()
    import hashlib

    ids: list[int] = []
    val = [f for f in manifest["files"] if f["split"] == "val"]
    for f in val:
        text = docs.get(f["name"])
        if text is None or hashlib.sha256(text.encode()).hexdigest() != f["sha256"]:
            continue
        ids.extend(tokenizer.encode(text) + [tokenizer.eot_id])
        if max_tokens and len(ids) >= max_tokens:
            break
    if not ids:
        raise RuntimeError(f"none of the {len(val)} held-out documents of {folder} match this Python's stdlib "
                           f"(trained on {manifest['python']!r}); evaluate with that Python")
    return torch.tensor(ids[:max_tokens] if max_tokens else ids)


class EvalSettings:
    """The harness's sizes (the CLI's flags).

    Args:
        context: prefill tokens per perplexity window.
        continuation: scored tokens after the prefill.
        step: continuation tokens fed per forward (1: pure decoding).
        windows: perplexity windows.
        passkey_lengths: prompt lengths of the passkey test.
        passkey_trials: trials per length.
        greedy_prompts: prompts of the greedy-match test.
        greedy_tokens: tokens generated per prompt.
        batch: decode batch of the speed test.
        speed_tokens: decoded tokens timed.
        seed: seed of window / depth / passkey choices.
    """

    def __init__(self, context: int = 192, continuation: int = 64, step: int = 1, windows: int = 4,
                 passkey_lengths: tuple[int, ...] = (256,), passkey_trials: int = 4, greedy_prompts: int = 4,
                 greedy_tokens: int = 32, batch: int = 4, speed_tokens: int = 32, seed: int = 0) -> None:
        self.__dict__.update({k: v for k, v in locals().items() if k != "self"})


def _forward(model, ids: torch.Tensor, cache) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=True, **{cache_kwarg(model): cache})
    assert output_cache(out) is cache
    return out.logits


@torch.no_grad()
def cached_nll(model, ids: torch.Tensor, cache, context: int, step: int) -> tuple[float, int]:
    """Summed NLL of ``ids[:, context:]`` after prefilling ``ids[:, :context]`` into ``cache``, fed ``step`` at a time."""
    logits = _forward(model, ids[:, :context], cache)[:, -1:]
    nll, n = 0.0, 0
    pos = context
    while pos < ids.shape[1]:
        target = ids[:, pos:pos + step]
        new_logits = _forward(model, target, cache)
        scored = torch.cat([logits, new_logits[:, :-1]], 1).float()
        nll += torch.nn.functional.cross_entropy(scored.flatten(0, 1), target.flatten(), reduction="sum").item()
        n += target.numel()
        logits = new_logits[:, -1:]
        pos += step
    return nll, n


@torch.no_grad()
def greedy_decode(model, prompt: torch.Tensor, cache, new_tokens: int) -> torch.Tensor:
    """Greedy continuation (``[b, new_tokens]``) of ``prompt`` through ``cache``: a manual prefill/decode loop."""
    logits = _forward(model, prompt, cache)[:, -1]
    out = []
    for _ in range(new_tokens):
        nxt = logits.argmax(-1, keepdim=True)
        out.append(nxt)
        logits = _forward(model, nxt, cache)[:, -1]
    return torch.cat(out, 1)


def _passkey_prompt(tokenizer: ReferenceTokenizer, filler: torch.Tensor, length: int, rng: random.Random):
    key = f"{rng.randrange(10_000, 100_000)}"
    needle = torch.tensor(tokenizer.encode(f"\nPASSKEY = {key}\n"))
    ask = torch.tensor(tokenizer.encode("\nassert PASSKEY == "))
    n_fill = length - len(needle) - len(ask)
    start = rng.randrange(0, len(filler) - n_fill)
    fill = filler[start:start + n_fill]
    depth = rng.randrange(0, n_fill + 1)
    return torch.cat([fill[:depth], needle, fill[depth:], ask]), key


@torch.no_grad()
def evaluate_method(model, tokenizer: ReferenceTokenizer, ids: torch.Tensor, factory: CacheFactory,
                    s: EvalSettings, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every metric of the module docstring for one cache method; ``reference`` (the full cache's result) supplies the
    greedy continuations to match and the byte baseline."""
    dev = next(model.parameters()).device
    rng = random.Random(s.seed)
    win = s.context + s.continuation
    starts = [rng.randrange(0, len(ids) - win) for _ in range(s.windows)]
    nll, n = 0.0, 0
    for st in starts:
        a, b = cached_nll(model, ids[st:st + win][None].to(dev), factory(), s.context, s.step)
        nll, n = nll + a, n + b
    row: dict[str, Any] = {"ppl": math.exp(nll / n)}
    for length in s.passkey_lengths:
        hits = 0
        for _ in range(s.passkey_trials):
            prompt, key = _passkey_prompt(tokenizer, ids, length, rng)
            got = tokenizer.decode(greedy_decode(model, prompt[None].to(dev), factory(), 4)[0])
            hits += got.replace(" ", "").startswith(key)
        row[f"passkey@{length}"] = hits / s.passkey_trials
    prompts = torch.stack([ids[st:st + s.context] for st in starts[: s.greedy_prompts]]).to(dev)
    cache = factory()
    conts = greedy_decode(model, prompts, cache, s.greedy_tokens)
    row["bytes"] = int(cache.memory_bytes()) if hasattr(cache, "memory_bytes") else None
    if hasattr(cache, "encoded_bytes"):  # a codec (CacheGen): the bitstream alone, what goes over the wire
        row["wire_bytes"] = int(cache.encoded_bytes())
    row["continuations"] = conts.cpu()
    if reference is not None:
        ref = reference["continuations"]
        same = (conts.cpu() == ref)
        row["greedy_match"] = same.all(1).float().mean().item()
        first_diff = torch.where(same.all(1), same.shape[1], (~same).int().argmax(1))
        row["greedy_prefix"] = (first_diff.float() / same.shape[1]).mean().item()
        row["ratio"] = reference["bytes"] / row["bytes"] if row["bytes"] else None
        if row.get("wire_bytes"):
            row["wire_ratio"] = reference["bytes"] / row["wire_bytes"]
    batch = ids[: s.batch * s.context].reshape(s.batch, s.context).to(dev)
    cache = factory()
    logits = _forward(model, batch, cache)[:, -1]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(s.speed_tokens):
        logits = _forward(model, logits.argmax(-1, keepdim=True), cache)[:, -1]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    row["tok_s"] = s.batch * s.speed_tokens / (time.perf_counter() - t0)
    return row


def run_grid(model_folder: str | Path, methods: list[dict[str, Any]], settings: EvalSettings,
             out: str | Path | None = None, device: str | None = None, dtype: str = "float32") -> list[dict[str, Any]]:
    """Evaluate ``methods`` (``full`` first, added when absent) on the model in ``model_folder``; writes
    ``results.csv``, ``results.md``, ``results.json`` and ``quality_vs_compression.png`` under ``out``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_causal_lm(str(model_folder)).to(dev, getattr(torch, dtype)).eval()
    enable_query_observation(model)
    tokenizer = ReferenceTokenizer.from_folder(model_folder)
    ids = held_out_ids(model_folder, tokenizer)
    if not any(m["name"] == "full" for m in methods):
        methods = [{"name": "full"}, *methods]
    methods = sorted(methods, key=lambda m: m["name"] != "full")
    rows, reference = [], None
    for m in methods:
        t0 = time.perf_counter()
        r = evaluate_method(model, tokenizer, ids, method_factory(m, model.config), settings, reference)
        reference = reference or r
        r.update(method=m["name"], eval_s=time.perf_counter() - t0)
        rows.append(r)
        print(_fmt_row(r), flush=True)
    if out is not None:
        write_results(rows, out, {"model": str(model_folder), "device": str(dev), "dtype": dtype,
                                  "settings": settings.__dict__, "methods": methods})
    return rows


_COLUMNS = ("method", "ppl", "greedy_match", "greedy_prefix", "bytes", "ratio", "tok_s")


def _fmt_row(r: dict[str, Any]) -> str:
    keys = [*_COLUMNS, *[k for k in r if k.startswith("wire_") or k.startswith("passkey@")]]
    return " ".join(f"{k}={r.get(k):.4g}" if isinstance(r.get(k), float) else f"{k}={r.get(k)}" for k in keys)


def write_results(rows: list[dict[str, Any]], out: str | Path, meta: dict[str, Any]) -> None:
    """``results.csv`` / ``.md`` / ``.json`` and the quality-vs-compression plot."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = [*_COLUMNS, *[k for k in ("wire_bytes", "wire_ratio") if any(k in r for r in rows)],
            *sorted({k for r in rows for k in r if k.startswith("passkey@")}), "eval_s"]
    table = [{k: r.get(k) for k in keys} for r in rows]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(table)

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in table]
    (out / "results.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps({**meta, "rows": table}, indent=1, default=str))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in table:
        ax.scatter(r["ratio"] or 1.0, r["ppl"])
        ax.annotate(r["method"], (r["ratio"] or 1.0, r["ppl"]), fontsize=7)
    ax.set_xlabel("compression ratio (full-cache bytes / bytes held)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(Path(meta["model"]).name)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_compression.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    import yaml

    p = argparse.ArgumentParser(description="KV-cache method grid: quality vs memory vs speed")
    p.add_argument("--config", required=True,
                   help="YAML with `methods:` (and optional `lm:`, `settings:`, `dtype:`)")
    p.add_argument("--model", default=None, help="model folder (default: the config's lm, else the cached tiny LM)")
    p.add_argument("--out", default=None, help="output folder (results.csv/.md/.json + plot)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: the config's or float32)")
    p.add_argument("--only", default=None,
                   help="comma-separated method names to run (the full cache always runs): split a grid over commands")
    a = p.parse_args(argv)
    cfg = yaml.safe_load(Path(a.config).read_text())
    methods = cfg["methods"]
    if a.only:
        names = set(a.only.split(","))
        unknown = names - {m["name"] for m in methods}
        if unknown:
            p.error(f"--only names no method of {a.config}: {sorted(unknown)}")
        methods = [m for m in methods if m["name"] in names or m["name"] == "full"]
    folder = a.model or cfg.get("lm")  # not `model:` — that key marks LightningCLI configs
    if folder is None:
        from tasks.llm.reference_lm_train import cached_reference_lm

        folder = cached_reference_lm("tiny")
    run_grid(folder, methods, EvalSettings(**{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in (cfg.get("settings") or {}).items()}),
             a.out or cfg.get("out"), a.device, a.dtype or cfg.get("dtype", "float32"))


if __name__ == "__main__":
    main()
