"""CMRAG's offline index, UCMR fusion and co-modality generation.

- **Index on disk** (a folder anyone can inspect and rebuild): ``embeddings.safetensors`` (``text`` and ``image``,
  float32 (N, D), L2-normalised), ``pages.jsonl`` (one line per row: file, page, parsed text, source path) and
  ``index.json`` (the encoder: model name, kwargs, checkpoint; the reader settings; build times and size).
- **UCMR** (spec: Unified Co-Modality-informed Retrieval): per query, the query→text and query→image similarity
  lists are z-scored over the candidate pages and fused, s = β·ẑ_T + (1−β)·ẑ_I with a fixed β (β = 1:
  text-only ranking, β = 0: image-only). ``adaptive_beta=True`` (off by default; the reviewers' suggestion, not
  the paper's) sets β per query from how peaked each list is: β = σ(logit β + (max ẑ_T − max ẑ_I)/T).
- **Generation**: the top-k pages (default 3) as images plus their parsed text, handed to a pluggable generator
  (:class:`VisionLanguageGenerator`: any transformers image-text-to-text model from a local folder; the paper's is
  Qwen2.5-VL-7B-Instruct).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

import zoo
from datamodules.docpages import Corpus, Page, parse_pages, read_corpus

__all__ = ["PageIndex", "Hit", "zscore", "ucmr_fuse", "build_index", "load_encoder", "search",
           "VisionLanguageGenerator", "answer", "DEFAULT_MODEL"]

DEFAULT_MODEL = "cmrag_minilm_easyocr"


# ------------------------------------------------------------------------------------------------ fusion
def zscore(s: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-row z-score over the candidates (population std; a constant row becomes zeros)."""
    mean = s.mean(dim=-1, keepdim=True)
    std = s.std(dim=-1, keepdim=True, unbiased=False)
    return (s - mean) / (std + eps)


def ucmr_fuse(s_text: torch.Tensor, s_image: torch.Tensor, beta: float = 0.5, adaptive_beta: bool = False,
              adaptive_temperature: float = 1.0) -> torch.Tensor:
    """UCMR: β·z(s_T) + (1−β)·z(s_I) per query row; ``adaptive_beta`` moves β per query towards the more peaked
    list (documented option, off by default).

    Args:
        s_text: (Q, N) query→parsed-text similarities.
        s_image: (Q, N) query→image similarities.
        beta: the fixed text weight β in [0, 1].
        adaptive_beta: per-query β = σ(logit(β) + (max ẑ_T − max ẑ_I) / adaptive_temperature).
        adaptive_temperature: the softness of the adaptive β.
    """
    zt, zi = zscore(s_text), zscore(s_image)
    if not adaptive_beta:
        return beta * zt + (1.0 - beta) * zi
    b = min(max(beta, 1e-4), 1 - 1e-4)
    peak = (zt.max(-1, keepdim=True).values - zi.max(-1, keepdim=True).values) / adaptive_temperature
    w = torch.sigmoid(math.log(b / (1 - b)) + peak)
    return w * zt + (1 - w) * zi


# ------------------------------------------------------------------------------------------------ the index
@dataclass
class PageIndex:
    """Pooled text and image embeddings of every page, its records and how it was built."""

    text: torch.Tensor
    image: torch.Tensor
    records: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def save(self, out: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"text": self.text.contiguous(), "image": self.image.contiguous()},
                  str(out / "embeddings.safetensors"))
        with open(out / "pages.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records)
        self.meta["size_bytes"] = sum(p.stat().st_size for p in (out / "embeddings.safetensors", out / "pages.jsonl"))
        (out / "index.json").write_text(json.dumps(self.meta, indent=1) + "\n")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> PageIndex:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "embeddings.safetensors").is_file():
            raise FileNotFoundError(f"{path} is not a CMRAG index (no embeddings.safetensors); build one with "
                                    f"`sharezoo rag index DOCS --out {path}`")
        t = load_file(str(path / "embeddings.safetensors"))
        records = [json.loads(ln) for ln in (path / "pages.jsonl").read_text().splitlines() if ln.strip()]
        return cls(t["text"], t["image"], records, json.loads((path / "index.json").read_text()))

    def page(self, row: int) -> Page:
        """The page of row ``row`` (its image re-rendered from the recorded source)."""
        from datamodules.docpages import read_corpus as _read

        r = self.records[row]
        corpus = _read(r["source"], "folder", self.meta.get("dpi", 150))
        for p in corpus.pages:
            if p.page == r["page"]:
                p.text = r["text"]
                return p
        raise FileNotFoundError(f"{r['source']} page {r['page']} is no longer readable")


def load_encoder(model: str = DEFAULT_MODEL, checkpoint: str | None = None, model_kwargs: dict | None = None
                 ) -> torch.nn.Module:
    """A UEM from the zoo, with a trained checkpoint (Lightning ``.ckpt`` of ``CMRAGTask`` or safetensors) loaded."""
    net = zoo.create_model(model, **(model_kwargs or {}))
    if checkpoint:
        zoo.load_checkpoint(net, checkpoint)
    return net.eval()


def build_index(path: str | os.PathLike, out: str | os.PathLike | None = None, model: str = DEFAULT_MODEL,
                checkpoint: str | None = None, model_kwargs: dict | None = None, layout: str = "auto",
                dpi: int = 150, parse_dpi: int = 150, parser: Any = None, parse_cache: str | None = None,
                encoder: torch.nn.Module | None = None, corpus: Corpus | None = None,
                progress: bool = False) -> PageIndex:
    """Read, parse (cached) and embed every page under ``path``; save to ``out`` when given.

    Args:
        path: documents (any layout of ``datamodules.docpages.read_corpus``).
        out: the index folder to write.
        model: the UEM (registered name or ``local-dir:``).
        checkpoint: trained UEM weights (``sharezoo fit`` checkpoint or safetensors).
        model_kwargs: UEM constructor overrides.
        layout: the reader layout.
        dpi: PDF rasterisation resolution of the page images embedded by the image tower.
        parse_dpi: the resolution PDF pages are OCR-parsed at (cached parses are keyed by it).
        parser: image -> text (default EasyOCR).
        parse_cache: folder for new parses.
        encoder: an already-built UEM (then ``model``/``checkpoint`` are only recorded).
        corpus: already-read pages of ``path``.
        progress: print progress lines.
    """
    corpus = corpus or read_corpus(path, layout, dpi)
    stats = parse_pages(corpus, path, parser, parse_cache, parse_dpi, progress)
    net = encoder if encoder is not None else load_encoder(model, checkpoint, model_kwargs)
    t = time.perf_counter()
    text = net.embed_texts([p.text or "" for p in corpus.pages])
    t_text = time.perf_counter() - t
    t = time.perf_counter()
    image = net.embed_images([p.image() for p in corpus.pages])
    t_image = time.perf_counter() - t
    root = Path(path)
    base = root.parent if root.is_file() else root
    records = [{"file": p.file, "page": p.page, "text": p.text or "",
                "source": str((base / p.file).resolve()) if (base / p.file).is_file() else p.file}
               for p in corpus.pages]
    meta = {"model": model, "model_kwargs": model_kwargs or {}, "checkpoint": checkpoint, "layout": layout,
            "dpi": dpi, "parse_dpi": parse_dpi, "root": str(root.resolve()), "pages": len(records),
            "dim": int(text.shape[1]),
            "skipped": [list(s) for s in corpus.skips.skipped],
            "seconds": {"parse": round(stats["seconds"], 3), "parsed_pages": stats["parsed"],
                        "cached_pages": stats["cached"], "embed_text": round(t_text, 3),
                        "embed_image": round(t_image, 3)}}
    index = PageIndex(text, image, records, meta)
    if out is not None:
        index.save(out)
    return index


@dataclass
class Hit:
    """A ranked page: its row, file, page number and the fused, text and image scores."""

    row: int
    file: str
    page: int
    score: float
    text_score: float
    image_score: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def similarities(index: PageIndex, encoder: torch.nn.Module, queries: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, N) query→text and query→image cosine similarities."""
    q = encoder.embed_queries(queries)
    return q @ index.text.T, q @ index.image.T


def search(index: PageIndex, encoder: torch.nn.Module, query: str, k: int = 5, beta: float = 0.5,
           adaptive_beta: bool = False) -> list[Hit]:
    """The top ``k`` pages for ``query`` by UCMR fusion (β=1: text only; β=0: image only)."""
    st, si = similarities(index, encoder, [query])
    fused = ucmr_fuse(st, si, beta, adaptive_beta)[0]
    top = torch.sort(fused, descending=True, stable=True).indices[:k].tolist()
    return [Hit(r, index.records[r]["file"], index.records[r]["page"], float(fused[r]), float(st[0, r]),
                float(si[0, r])) for r in top]


# ------------------------------------------------------------------------------------------------ generation
class Generator(Protocol):
    def __call__(self, question: str, images: list[Any], texts: list[str]) -> str: ...


PROMPT = ("Answer the question using the document pages below (each given as its image and its parsed text).\n"
          "{pages}\nQuestion: {question}\nAnswer:")


class VisionLanguageGenerator:
    """Any transformers image-text-to-text model (Qwen2.5-VL-7B-Instruct in the paper) from a local folder: the
    top-k page images go in as images, their parsed text in the prompt.

    Args:
        model_dir: a local folder with the model and its processor (``save_pretrained`` layout).
        max_new_tokens: answer length.
        page_text_chars: parsed text kept per page in the prompt.
        image_max_side: page images are downscaled to this longest side before the processor.
    """

    def __init__(self, model_dir: str, max_new_tokens: int = 64, page_text_chars: int = 1500,
                 image_max_side: int = 896) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
        self.max_new_tokens, self.page_text_chars, self.image_max_side = max_new_tokens, page_text_chars, image_max_side

    def messages(self, question: str, images: list[Any], texts: list[str]) -> list[dict[str, Any]]:
        pages = "\n".join(f"[page {i + 1} text]\n{t[: self.page_text_chars]}" for i, t in enumerate(texts))
        content = [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": PROMPT.format(pages=pages, question=question)})
        return [{"role": "user", "content": content}]

    @torch.no_grad()
    def __call__(self, question: str, images: list[Any], texts: list[str]) -> str:
        ims = []
        for im in images:
            im = im.copy()
            im.thumbnail((self.image_max_side, self.image_max_side))
            ims.append(im)
        prompt = self.processor.apply_chat_template(self.messages(question, ims, texts), add_generation_prompt=True)
        inputs = self.processor(text=[prompt], images=ims or None, return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()


def answer(index: PageIndex, encoder: torch.nn.Module, generator: Generator, question: str, k: int = 3,
           beta: float = 0.5) -> tuple[str, list[Hit]]:
    """Co-modality generation: retrieve the top ``k`` pages (default 3, the paper's) and generate from their
    images and parsed texts."""
    hits = search(index, encoder, question, k, beta)
    pages = [index.page(h.row) for h in hits]
    return generator(question, [p.image() for p in pages], [p.text or "" for p in pages]), hits


# ------------------------------------------------------------------------------------------------ evaluation
def bm25_scores(index: PageIndex, queries: list[str]) -> torch.Tensor:
    """(Q, N) BM25 Okapi scores (``rank_bm25``, its defaults) of the queries against the pages' parsed text, with
    lower-cased alphanumeric word tokens: the classical baseline."""
    import re

    import numpy as np
    from rank_bm25 import BM25Okapi

    def words(s: str) -> list[str]:
        return re.findall(r"[a-z0-9_]+", s.lower())

    bm25 = BM25Okapi([words(r["text"]) or ["<empty>"] for r in index.records])
    return torch.from_numpy(np.stack([bm25.get_scores(words(q)) for q in queries]))


def evaluate(index: PageIndex, encoder: torch.nn.Module, questions: list[Any], betas: tuple[float, ...] = (0.5,),
             ) -> dict[str, dict[str, float]]:
    """Recall@1/5 and MRR of text-only, image-only, UCMR-fused (each β) and BM25 ranking over every indexed page.

    Args:
        index: the pages.
        encoder: the UEM that built ``index``.
        questions: ``datamodules.docpages.Question``s whose evidence pages are (file, page) keys of the index.
        betas: the fixed β values to report.
    """
    from tasks.metrics.cmrag import retrieval_metrics

    rows = {(r["file"], r["page"]): i for i, r in enumerate(index.records)}
    qs = [q for q in questions if any(tuple(e) in rows for e in q.evidence)]
    relevant = [{rows[tuple(e)] for e in q.evidence if tuple(e) in rows} for q in qs]
    st, si = similarities(index, encoder, [q.question for q in qs])
    out = {"text": retrieval_metrics(st, relevant), "image": retrieval_metrics(si, relevant)}
    for b in betas:
        out[f"fused(beta={b:g})"] = retrieval_metrics(ucmr_fuse(st, si, b), relevant)
    out["bm25"] = retrieval_metrics(bm25_scores(index, [q.question for q in qs]), relevant)
    for v in out.values():
        v["questions"] = len(qs)
    return out
