"""Codable-watermark evaluation on a trained LM: message recovery vs text length, perplexity cost, robustness.

    python -m tasks.llm.watermark_eval --out runs/watermark/tiny            # the trained tiny reference LM, CPU
    python -m tasks.llm.watermark_eval --model FOLDER --oracle FOLDER2 --device cuda --prompts 200

Prompts: ``--prompt-len``-token windows of the held-out stdlib documents of the model's manifest
(``tasks.llm.kv_eval.held_out_ids``). Each prompt gets its own random message (seeded; constant MajorMark blocks
redrawn) and ``--tokens`` sampled tokens (multinomial, temperature 1, full vocabulary) per scheme; ``none`` is the
unwatermarked sample. Metrics on the first T tokens for T in ``--lengths``: bit accuracy and message success (all bits
right); perplexity of the continuation under the oracle LM (``--oracle``; default: the generating model itself,
stated in the output); robustness at the full length: each token replaced by a uniformly random id with probability
``sub`` / deleted with probability ``del`` (the extractor sees the attacked ids). Writes ``results.md`` and
``results.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from pathlib import Path

import torch

from tasks.llm.methods.watermark import BalanceMarking, MajorMark, MajorMarkPlus, VanillaMarking

SCHEMES = ("none", "vanilla", "balance", "majormark", "majormark_plus")


def build_scheme(name: str, delta: float, proxy=None):
    """A scheme and its message length in bits (Vanilla/Balance: 20 bits as five 4-bit segments; MajorMark: 8 bits;
    MajorMark+: 16 bits in 8-bit blocks)."""
    if name == "vanilla":
        return VanillaMarking(delta=delta), 20
    if name == "balance":
        return BalanceMarking(proxy, delta=delta), 20
    if name == "majormark":
        return MajorMark(delta=delta), 8
    if name == "majormark_plus":
        return MajorMarkPlus(block_bits=8, delta=delta), 16
    raise ValueError(f"unknown scheme {name!r}: one of {', '.join(SCHEMES)}")


def random_message(scheme, n_bits: int, rng: random.Random) -> list[int]:
    """Uniform random bits, redrawn until the scheme accepts them."""
    while True:
        bits = [rng.randint(0, 1) for _ in range(n_bits)]
        try:
            scheme.check_message(bits)
            return bits
        except ValueError:
            continue


def attack(ids: torch.Tensor, sub: float, dele: float, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Random substitution (each token with probability ``sub``) then deletion (probability ``dele``)."""
    ids = ids.clone()
    s = torch.rand(ids.shape, generator=gen) < sub
    ids[s] = torch.randint(0, vocab, (int(s.sum()),), generator=gen)
    keep = torch.rand(ids.shape, generator=gen) >= dele
    return ids[keep]


@torch.no_grad()
def perplexity(oracle, prompts: torch.Tensor, conts: torch.Tensor) -> float:
    """Perplexity of ``conts`` given ``prompts`` under ``oracle`` (token-mean over the batch)."""
    x = torch.cat([prompts, conts], 1).to(next(oracle.parameters()).device)
    logits = oracle(input_ids=x).logits[:, prompts.shape[1] - 1:-1].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, prompts.shape[1]:].reshape(-1))
    return float(nll.exp())


def evaluate(model_folder: str, oracle_folder: str | None = None, prompts: int = 32, prompt_len: int = 64,
             tokens: int = 200, lengths=(50, 100, 200), delta: float = 2.0, schemes=SCHEMES,
             attacks=((0.1, 0.0), (0.2, 0.0), (0.3, 0.0), (0.0, 0.1), (0.0, 0.2)), device: str = "cpu",
             seed: int = 0) -> dict:
    """Run the grid; returns ``{"meta": ..., "rows": [...]}``."""
    from transformers import LogitsProcessorList

    from datamodules.stdlib_text import ReferenceTokenizer
    from tasks.llm.kv_eval import held_out_ids
    from zoo.llm import build_causal_lm

    dev = torch.device(device)
    model = build_causal_lm(model_folder).to(dev).eval()
    oracle = build_causal_lm(oracle_folder).to(dev).eval() if oracle_folder else model
    tok = ReferenceTokenizer.from_folder(model_folder)
    vocab = model.config.vocab_size
    ids = held_out_ids(model_folder, tok)
    stride = max(prompt_len, (len(ids) - prompt_len) // prompts)
    x = torch.stack([ids[i * stride:i * stride + prompt_len] for i in range(prompts)]).to(dev)
    rows = []
    for name in schemes:
        t0 = time.perf_counter()
        scheme, n_bits = (None, 0) if name == "none" else build_scheme(name, delta, proxy=model)
        rng = random.Random(seed)
        msgs = [random_message(scheme, n_bits, rng) for _ in range(prompts)] if scheme else None
        procs = LogitsProcessorList([scheme.processor(msgs, prompt_len)]) if scheme else LogitsProcessorList()
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(x, attention_mask=torch.ones_like(x), logits_processor=procs, do_sample=True,
                                 top_k=0, temperature=1.0, max_new_tokens=tokens, min_new_tokens=tokens,
                                 pad_token_id=tok.eot_id)[:, prompt_len:]
        gen_s = time.perf_counter() - t0
        row = dict(scheme=name, bits=n_bits, delta=delta if scheme else 0.0, ppl=round(perplexity(oracle, x, out), 3),
                   gen_seconds=round(gen_s, 2))
        if scheme:
            t1 = time.perf_counter()
            for T in lengths:
                got = [scheme.extract(out[i, :T].cpu(), n_bits, vocab) for i in range(prompts)]
                row[f"bit_acc@{T}"] = round(sum(sum(a == b for a, b in zip(g, m)) for g, m in zip(got, msgs))
                                            / (prompts * n_bits), 4)
                row[f"success@{T}"] = round(sum(g == m for g, m in zip(got, msgs)) / prompts, 4)
            g = torch.Generator().manual_seed(seed)
            for sub, dele in attacks:
                got = [scheme.extract(attack(out[i].cpu(), sub, dele, vocab, g), n_bits, vocab) for i in range(prompts)]
                key = f"sub{sub:g}" if sub else f"del{dele:g}"
                row[f"bit_acc_{key}"] = round(sum(sum(a == b for a, b in zip(gg, m)) for gg, m in zip(got, msgs))
                                              / (prompts * n_bits), 4)
                row[f"success_{key}"] = round(sum(gg == m for gg, m in zip(got, msgs)) / prompts, 4)
            row["extract_seconds"] = round(time.perf_counter() - t1, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = dict(model=str(model_folder), oracle=str(oracle_folder or model_folder) + ("" if oracle_folder else
                " (the generating model itself: no larger trained LM given)"), prompts=prompts,
                prompt_len=prompt_len, tokens=tokens, lengths=list(lengths), delta=delta, seed=seed,
                sampling="multinomial, temperature 1, full vocabulary", attacks=[list(a) for a in attacks],
                torch=torch.__version__)
    return {"meta": meta, "rows": rows}


def to_markdown(res: dict) -> str:
    """Two tables: recovery vs length (+ perplexity), and robustness at the full length."""
    rows, meta = res["rows"], res["meta"]
    L = meta["lengths"]
    head = "| scheme | bits | delta | PPL (oracle) | " + " | ".join(f"bit acc / success @{t}" for t in L) + " |"
    lines = [head, "|" + " --- |" * (4 + len(L))]
    for r in rows:
        cells = [f"{r[f'bit_acc@{t}']:.3f} / {r[f'success@{t}']:.2f}" if f"bit_acc@{t}" in r else "—" for t in L]
        lines.append(f"| {r['scheme']} | {r['bits']} | {r['delta']:g} | {r['ppl']:.2f} | " + " | ".join(cells) + " |")
    keys = [f"sub{s:g}" if s else f"del{d:g}" for s, d in meta["attacks"]]
    lines += ["", f"Robustness at {meta['tokens']} tokens (bit accuracy / message success):", "",
              "| scheme | " + " | ".join(keys) + " |", "|" + " --- |" * (1 + len(keys))]
    for r in rows:
        if r["bits"]:
            lines.append(f"| {r['scheme']} | " + " | ".join(f"{r[f'bit_acc_{k}']:.3f} / {r[f'success_{k}']:.2f}"
                                                              for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="HF causal-LM folder with sharezoo_tokenizer.json (default: the "
                    "trained tiny reference LM)")
    ap.add_argument("--oracle", default=None, help="perplexity oracle folder (same tokenizer; default: --model)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--lengths", default="50,100,200")
    ap.add_argument("--delta", type=float, default=2.0)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.model is None:
        from tasks.llm.reference_lm_train import cached_reference_lm

        a.model = str(cached_reference_lm("tiny"))
    res = evaluate(a.model, a.oracle, a.prompts, a.prompt_len, a.tokens, tuple(int(t) for t in a.lengths.split(",")),
                   a.delta, a.schemes.split(","), device=a.device, seed=a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(to_markdown(res))
    print(to_markdown(res))


if __name__ == "__main__":
    main()
