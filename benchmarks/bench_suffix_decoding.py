"""SuffixDecoding vs plain greedy decoding on a workload of repeated edits of CPython source files.

    python3 benchmarks/bench_suffix_decoding.py                          # GPU if present, the tiny reference LM
    python3 benchmarks/bench_suffix_decoding.py --model runs/issue22/reference_lm_base   # any HF causal-LM folder
    python3 benchmarks/bench_suffix_decoding.py --device cpu --tiny      # CPU smoke run (seconds)

Workload (``code_edit_requests``): held-out CPython stdlib files of the reference LM's manifest (this interpreter's
copies); for each file a window starting at its first ``def``/``class`` line, edited ``--edits`` times in a row by a
seeded random editor (rename an identifier, insert a comment line, change an integer literal, delete a line; edits
accumulate like an agent's successive revisions). Each revision's first ``--prompt-tokens`` tokens are a request whose
greedy continuation of ``--new`` tokens is generated. Requests run one at a time in file order (batch 1), so the global
suffix tree holds the outputs of the file's earlier revisions. A second stream (``open``) sends each file once
(no repetition) as the non-agentic contrast.

Methods: ``plain`` (KV-cached greedy, one forward per token), ``suffix`` (global + per-request trees, speculation
tree), ``suffix_chain`` (single chain, as the vLLM path), ``suffix_local`` (per-request tree only). Every speculative
output is checked token-identical to ``plain``. Reported per method and stream: tokens per forward (acceptance length,
bonus token included), drafted-token acceptance rate, wall time, drafter CPU time, speed-up over ``plain``.
Results go to ``benchmarks/results/suffix_decoding.jsonl`` (one JSON per line, with command, machine, versions).
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
from bench_prefix_grouper import environment  # noqa: E402

_IDENT = re.compile(r"\b[a-z_][a-z0-9_]{3,}\b")
_INT = re.compile(r"\b\d+\b")


def edit_once(text: str, rng: random.Random) -> str:
    """One random edit of source ``text``: rename an identifier, insert a comment, change an int, or delete a line."""
    lines = text.split("\n")
    kind = rng.choice(["rename", "comment", "number", "delete"])
    if kind == "rename":
        names = sorted({m for m in _IDENT.findall(text) if text.count(m) >= 2 and m not in {"self", "return", "None"}})
        if names:
            old = rng.choice(names)
            return re.sub(rf"\b{re.escape(old)}\b", old + "_new", text)
    if kind == "number" and _INT.search(text):
        hits = list(_INT.finditer(text))
        m = rng.choice(hits)
        return text[:m.start()] + str(int(m.group()) + rng.randint(1, 9)) + text[m.end():]
    i = rng.randrange(1, max(2, len(lines) - 1))
    if kind == "delete" and lines[i].strip():
        return "\n".join(lines[:i] + lines[i + 1:])
    indent = re.match(r"\s*", lines[i]).group()
    return "\n".join(lines[:i] + [f"{indent}# edit: keep this in sync"] + lines[i:])


def source_windows(folder: Path, n_files: int, min_chars: int = 3000) -> list[tuple[str, str]]:
    """``(name, text)`` of ``n_files`` held-out stdlib ``.py`` files of the model's manifest, each from its first
    ``def``/``class`` line (the corpus of the reference LM; other folders: this interpreter's stdlib)."""
    from datamodules.stdlib_text import stdlib_documents

    docs = stdlib_documents(include_topics=False)
    man = folder / "stdlib_manifest.json"
    names = [f["name"] for f in json.loads(man.read_text())["files"] if f["split"] == "val"] if man.is_file() else []
    names = [n for n in names if n in docs] or list(docs)
    out = []
    for name in names:
        text = docs[name]
        m = re.search(r"^(def|class) ", text, re.M)
        if m and len(text) - m.start() >= min_chars:
            out.append((name, text[m.start():]))
        if len(out) == n_files:
            break
    return out


def code_edit_requests(tokenizer, files: list[tuple[str, str]], edits: int, prompt_tokens: int,
                       seed: int = 0) -> list[tuple[str, list[int]]]:
    """``(file, prompt ids)`` per revision: ``edits + 1`` successive revisions of each file's window."""
    rng = random.Random(seed)
    reqs = []
    for name, text in files:
        window = text[:prompt_tokens * 8]
        for _ in range(edits + 1):
            reqs.append((name, tokenizer.encode(window)[:prompt_tokens]))
            window = edit_once(window, rng)
    return reqs


def _tokenizer(folder: Path | None):
    if folder is not None and (folder / "sharezoo_tokenizer.json").is_file():
        from datamodules.stdlib_text import ReferenceTokenizer

        return ReferenceTokenizer.from_folder(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def main(argv=None) -> int:
    from tasks.llm.engines.suffix_decoding import DecodeStats, SuffixDecodingEngine, greedy_decode
    from tasks.llm.methods.suffix_decoding import SuffixConfig
    from zoo.llm import build_causal_lm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: 2 files, 2 edits, 16 new tokens")
    ap.add_argument("--model", default=None, help="HF causal-LM folder (default: the trained tiny reference LM)")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    ap.add_argument("--files", type=int, default=None)
    ap.add_argument("--edits", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=None)
    ap.add_argument("--new", type=int, default=None, help="generated tokens per request")
    ap.add_argument("--alpha", type=float, default=1.0, help="max_spec_factor")
    ap.add_argument("--max-spec", type=int, default=32)
    ap.add_argument("--methods", default="plain,suffix,suffix_chain,suffix_local")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    n_files, n_edits = a.files or (2 if a.tiny else 8), a.edits if a.edits is not None else (2 if a.tiny else 6)
    p_len, n_new = a.prompt_tokens or (48 if a.tiny else 256), a.new or (16 if a.tiny else 128)
    out_path = Path(a.out or ROOT / "benchmarks/results/suffix_decoding.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if a.model is None:
        from tasks.llm.reference_lm_train import cached_reference_lm

        folder = cached_reference_lm("tiny")
    else:
        folder = Path(a.model)
    tok = _tokenizer(folder)
    model = build_causal_lm(str(folder)).to(device=device, dtype=dtype).eval()
    eos = getattr(tok, "eot_id", None) or getattr(tok, "eos_token_id", None)
    files = source_windows(folder, n_files)
    streams = {"edits": code_edit_requests(tok, files, n_edits, p_len),
               "open": code_edit_requests(tok, files, 0, p_len)}
    common = {"bench": "suffix_decoding", **environment(device), "dtype": str(dtype).replace("torch.", ""),
              "model": str(folder), "params": sum(p.numel() for p in model.parameters()),
              "files": [f for f, _ in files],
              "edits": n_edits, "prompt_tokens": p_len, "new_tokens": n_new, "alpha": a.alpha, "max_spec": a.max_spec}
    configs = {"suffix": SuffixConfig(max_spec_factor=a.alpha, max_spec_tokens=a.max_spec),
               "suffix_chain": SuffixConfig(max_spec_factor=a.alpha, max_spec_tokens=a.max_spec, use_tree=False),
               "suffix_local": SuffixConfig(max_spec_factor=a.alpha, max_spec_tokens=a.max_spec, max_cached_requests=0)}
    methods = a.methods.split(",")
    recs = []

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        greedy_decode(model, torch.tensor(streams["open"][0][1], device=device), 4)  # warm-up
        for sname, reqs in streams.items():
            ref, plain_s = [], None
            for method in ["plain"] + [m for m in methods if m != "plain"]:
                stats, outs = DecodeStats(), []
                eng = SuffixDecodingEngine(model, configs[method], eos_id=eos) if method != "plain" else None
                if eng is not None:  # warm-up of the masked tree forward (kernels, allocator) on a throwaway engine
                    SuffixDecodingEngine(model, configs[method], eos_id=eos).generate(
                        torch.tensor(reqs[0][1] * 2, device=device), 8)
                sync()
                t0 = time.perf_counter()
                for _, ids in reqs:
                    x = torch.tensor(ids, device=device)
                    if eng is None:
                        outs.append(greedy_decode(model, x, n_new, eos, stats))
                    else:
                        outs.append(eng.generate(x, n_new))
                sync()
                wall = time.perf_counter() - t0
                if eng is not None:
                    stats = eng.stats
                if method == "plain":
                    ref, plain_s = outs, wall
                same = all(torch.equal(o, r) for o, r in zip(outs, ref))
                rec = {**common, "kind": "point", "status": "ok", "stream": sname, "method": method,
                       "requests": len(reqs), **stats.as_dict(), "wall_s": round(wall, 4),
                       "tokens_per_s": round(stats.tokens / wall, 2), "speedup": round(plain_s / wall, 3),
                       "identical_to_plain": same}
                recs.append(rec)
                print(f"{sname:6s} {method:13s} tok/fwd {rec['tokens_per_forward']:.2f} "
                      f"acc {rec['acceptance_rate']:.2f} {rec['tokens_per_s']:8.1f} tok/s  "
                      f"speed-up {rec['speedup']:.2f}x  draft {stats.draft_seconds:.2f}s"
                      f"  identical {same}", flush=True)
    recs.append({**common, "kind": "done"})
    with out_path.open("a") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    return 0 if all(r.get("identical_to_plain", True) for r in recs) else 1


if __name__ == "__main__":
    sys.exit(main())
