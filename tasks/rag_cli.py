"""``sharezoo rag``: build a CMRAG page index, query it, evaluate it.

    sharezoo rag index PATH --out INDEX [--model cmrag_minilm_easyocr] [--checkpoint CKPT] [--layout auto]
    sharezoo rag query INDEX "question" --k 5 [--beta B] [--json]
    sharezoo rag eval PATH_OR_INDEX [--questions QA.jsonl] [--checkpoint CKPT] [--beta 0 0.5 1] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

SUMMARY = "CMRAG page retrieval: sharezoo rag index PATH --out INDEX; sharezoo rag query INDEX 'question'"


def _index(a: argparse.Namespace) -> int:
    from tasks.cmrag_index import build_index

    idx = build_index(a.path, a.out, a.model, a.checkpoint, json.loads(a.model_kwargs) if a.model_kwargs else None,
                      a.layout, a.dpi, a.parse_dpi, parse_cache=a.parse_cache, progress=not a.quiet)
    m = idx.meta
    skipped = len(m["skipped"])
    print(f"indexed {m['pages']} pages of {a.path} into {a.out} ({m['size_bytes'] / 1024:.0f} KiB; parse "
          f"{m['seconds']['parse']:.1f}s for {m['seconds']['parsed_pages']} pages, {m['seconds']['cached_pages']} "
          f"cached; embed text {m['seconds']['embed_text']:.1f}s, image {m['seconds']['embed_image']:.1f}s); "
          f"skipped {skipped} unreadable item(s)")
    for f, p, reason in m["skipped"]:
        print(f"  skipped {f}" + (f" page {p}" if p is not None else "") + f": {reason}", file=sys.stderr)
    return 0


def _encoder(index_meta: dict, checkpoint: str | None):
    from tasks.cmrag_index import load_encoder

    return load_encoder(index_meta["model"], checkpoint or index_meta.get("checkpoint"), index_meta.get("model_kwargs"))


def _query(a: argparse.Namespace) -> int:
    from tasks.cmrag_index import PageIndex, search

    idx = PageIndex.load(a.index)
    hits = search(idx, _encoder(idx.meta, None), a.question, a.k, a.beta, a.adaptive_beta)
    if a.json:
        print(json.dumps({"question": a.question, "beta": a.beta, "hits": [h.to_dict() for h in hits]}, indent=1))
        return 0
    print(f"{'rank':>4}  {'fused':>7}  {'text':>6}  {'image':>6}  page  file")
    for r, h in enumerate(hits, start=1):
        print(f"{r:>4}  {h.score:>7.3f}  {h.text_score:>6.3f}  {h.image_score:>6.3f}  {h.page:>4}  {h.file}")
    return 0


def _eval(a: argparse.Namespace) -> int:
    from datamodules.docpages import read_questions
    from tasks.cmrag_index import PageIndex, build_index, evaluate, load_encoder

    path = Path(a.path)
    if (path / "embeddings.safetensors").is_file():
        idx = PageIndex.load(path)
        enc = _encoder(idx.meta, a.checkpoint)
        if a.checkpoint and a.checkpoint != idx.meta.get("checkpoint"):
            idx = build_index(idx.meta["root"], None, idx.meta["model"], encoder=enc, layout=idx.meta["layout"])
    else:
        enc = load_encoder(a.model, a.checkpoint)
        idx = build_index(path, None, a.model, a.checkpoint, layout=a.layout, encoder=enc)
    qpath = a.questions or (path / "dev_questions.jsonl")
    questions = read_questions(qpath)
    if a.held_out:  # the questions DocTripletDataModule(val_fraction=0.25, seed=0) holds out of training
        from datamodules.docpages import split_questions

        questions = split_questions(questions, 0.25, 0)[1]
    res = evaluate(idx, enc, questions, tuple(a.beta))
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{len(idx)} pages, {next(iter(res.values()))['questions']} questions ({qpath}); encoder {idx.meta['model']}"
          f" {a.checkpoint or idx.meta.get('checkpoint') or '(untrained UEM)'}")
    print(f"{'ranking':<18} {'R@1':>6} {'R@5':>6} {'MRR':>6}")
    for name, m in res.items():
        print(f"{name:<18} {m['recall@1']:>6.3f} {m['recall@5']:>6.3f} {m['mrr']:>6.3f}")
    return 0


def main(argv: Sequence[str]) -> int:
    """Run ``sharezoo rag ...`` with ``argv`` (the words after ``rag``)."""
    from tasks.cmrag_index import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="sharezoo rag", description=SUMMARY, allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("index", help="parse and embed every page under PATH", allow_abbrev=False)
    pi.add_argument("path", help="PDFs / page images folder, a PDF, a ViDoRe parquet, a DocVQA or LongDocURL folder")
    pi.add_argument("--out", required=True, help="index folder (embeddings.safetensors, pages.jsonl, index.json)")
    pi.add_argument("--model", default=DEFAULT_MODEL, help="the UEM (registered name or local-dir:)")
    pi.add_argument("--checkpoint", default=None, help="trained UEM weights (a `sharezoo fit` .ckpt or safetensors)")
    pi.add_argument("--model-kwargs", default=None, help="UEM overrides as JSON, e.g. '{\"long_text\": \"chunk\"}'")
    pi.add_argument("--layout", default="auto", choices=["auto", "folder", "vidore", "docvqa", "longdoc"])
    pi.add_argument("--dpi", type=int, default=150, help="PDF rasterisation resolution for the image tower")
    pi.add_argument("--parse-dpi", type=int, default=150, help="PDF resolution for OCR parsing")
    pi.add_argument("--parse-cache", default=None, help="folder for OCR parses (default under the sharezoo cache)")
    pi.add_argument("--quiet", action="store_true", help="no per-page progress lines")
    pq = sub.add_parser("query", help="rank the indexed pages for a question", allow_abbrev=False)
    pq.add_argument("index", help="an index folder written by `sharezoo rag index`")
    pq.add_argument("question")
    pq.add_argument("--k", type=int, default=5, help="pages to print")
    pq.add_argument("--beta", type=float, default=0.5, help="UCMR text weight: 1 = text only, 0 = image only")
    pq.add_argument("--adaptive-beta", action="store_true", help="per-query beta (off by default; not the paper's)")
    pq.add_argument("--json", action="store_true", help="print JSON")
    pe = sub.add_parser("eval", help="Recall@1/5, MRR of text/image/fused/BM25 ranking", allow_abbrev=False)
    pe.add_argument("path", help="an index folder, or documents to index in memory")
    pe.add_argument("--questions", default=None, help="questions JSONL (default PATH/dev_questions.jsonl)")
    pe.add_argument("--model", default=DEFAULT_MODEL)
    pe.add_argument("--checkpoint", default=None)
    pe.add_argument("--layout", default="folder")
    pe.add_argument("--beta", type=float, nargs="+", default=[0.5])
    pe.add_argument("--held-out", action="store_true",
                    help="only the questions the training configs hold out (val_fraction 0.25, seed 0)")
    pe.add_argument("--json", action="store_true")
    a = p.parse_args(list(argv))
    return {"index": _index, "query": _query, "eval": _eval}[a.cmd](a)
