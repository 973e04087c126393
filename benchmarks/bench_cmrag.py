"""CMRAG on a CPU: pages indexed per second (OCR parsing and embedding measured separately) and query latency at 1k
and 10k indexed pages.

    OMP_NUM_THREADS=2 python3 benchmarks/bench_cmrag.py             # the committed run (~3 min on 2 CPU cores)
    python3 benchmarks/bench_cmrag.py --tiny                          # smoke test (cmrag_tiny, no OCR, temp output)

- parsing: EasyOCR (CRAFT detection + english_g2 recognition, offline weights) on ``--parse-pages`` pages of the bundled
  development PDF rendered at 150 dpi (what ``sharezoo rag index`` does for a page without a cached parse);
- embedding: the UEM's document-text tower on the committed parses of all 24 pages, and its image tower on the same
  pages rendered at 150 dpi (rendering included, as in indexing);
- query latency: encoding one query plus scoring, per-query z-scoring and UCMR fusion over N pages and the top-5, with
  N = 1,000 and 10,000 stored page embeddings (random unit vectors of the model's size: the cost does not depend on
  their values), median of ``--iters`` queries.

Each measurement is appended as a JSON line with the command, machine and versions to
``benchmarks/results/cmrag.jsonl`` (``--out``), and a table is printed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

PDF = ROOT / "tests" / "data" / "cmrag" / "pydoc_topics.pdf"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="default cmrag_minilm_easyocr (tiny: cmrag_tiny)")
    p.add_argument("--tiny", action="store_true", help="cmrag_tiny, no OCR, few iterations (smoke test)")
    p.add_argument("--parse-pages", type=int, default=2, help="pages OCR-parsed for the parsing rate (0: skip)")
    p.add_argument("--sizes", default="1000,10000", help="index sizes for the query latency")
    p.add_argument("--iters", type=int, default=None, help="timed queries per size (default 50; tiny 3)")
    p.add_argument("--out", default=None, help="JSON-lines file (default benchmarks/results/cmrag.jsonl; tiny: temp)")
    a = p.parse_args(argv)
    model_name = a.model or ("cmrag_tiny" if a.tiny else "cmrag_minilm_easyocr")
    iters = a.iters or (3 if a.tiny else 50)
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp()) / "cmrag.jsonl" if a.tiny
                                     else ROOT / "benchmarks" / "results" / "cmrag.jsonl")

    import zoo
    from datamodules.docpages import OcrParser, parse_pages, read_corpus
    from tasks.cmrag_index import ucmr_fuse

    base = {"command": "python3 benchmarks/bench_cmrag.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": _dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "model": model_name}
    rows = []

    def record(**kw) -> None:
        rows.append({**base, **kw})
        print(json.dumps(kw))

    corpus = read_corpus(PDF, dpi=150)
    pages = corpus.pages
    if a.parse_pages and not a.tiny:
        parser = OcrParser()
        _ = parser.reader  # model loading is not counted per page
        t = time.perf_counter()
        for pg in pages[: a.parse_pages]:
            parser(pg.image(150))
        dt = time.perf_counter() - t
        record(stage="parse_easyocr", pages=a.parse_pages, seconds=round(dt, 3),
               pages_per_s=round(a.parse_pages / dt, 4))
    parse_pages(corpus, PDF)  # committed parses for the embedding stage
    net = zoo.create_model(model_name).eval()
    texts = [pg.text or "" for pg in pages]
    net.embed_texts(texts[:2])  # warm-up
    t = time.perf_counter()
    net.embed_texts(texts)
    dt = time.perf_counter() - t
    record(stage="embed_text", pages=len(pages), seconds=round(dt, 3), pages_per_s=round(len(pages) / dt, 3))
    t = time.perf_counter()
    net.embed_images([pg.image() for pg in pages])
    dt = time.perf_counter() - t
    record(stage="embed_image_with_render", pages=len(pages), seconds=round(dt, 3),
           pages_per_s=round(len(pages) / dt, 3))

    g = torch.Generator().manual_seed(0)
    for n in (int(s) for s in a.sizes.split(",")):
        text = torch.nn.functional.normalize(torch.randn(n, net.embed_dim, generator=g), dim=-1)
        image = torch.nn.functional.normalize(torch.randn(n, net.embed_dim, generator=g), dim=-1)
        enc, search = [], []
        for i in range(iters + 2):
            t0 = time.perf_counter()
            q = net.embed_queries([f"How does statement number {i} work in a loop?"])
            t1 = time.perf_counter()
            fused = ucmr_fuse(q @ text.T, q @ image.T, 0.5)
            fused.topk(5, dim=-1)
            t2 = time.perf_counter()
            if i >= 2:
                enc.append(t1 - t0)
                search.append(t2 - t1)
        record(stage="query", pages=n, encode_ms=round(statistics.median(enc) * 1e3, 3),
               search_ms=round(statistics.median(search) * 1e3, 3),
               total_ms=round((statistics.median(enc) + statistics.median(search)) * 1e3, 3), iters=iters)

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"appended {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
