"""CMRAG data and plumbing: the page readers (folder of PDFs/images, ViDoRe parquet, DocVQA, LongDocURL/MMLongBench-Doc)
on files the tests write in those layouts and on the bundled real PDF, bad inputs reported by file and page, the
committed OCR parses, real EasyOCR on a page crop, the index on disk, ``sharezoo rag index/query/eval``, ``sharezoo
fit``/``test`` on the demo config, and generation through a tiny Qwen2.5-VL built offline."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

import zoo
from datamodules.docpages import (
    DocTripletDataModule, parse_pages, read_corpus, read_questions, reading_order, split_questions,
)
from tasks.cmrag_index import PageIndex, VisionLanguageGenerator, answer, build_index, search

DATA = Path(__file__).resolve().parent / "data" / "cmrag"
PDF = DATA / "pydoc_topics.pdf"
ROOT = Path(__file__).resolve().parents[1]


def _png(color: str = "white", size=(60, 80)) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, color)
    ImageDraw.Draw(im).text((5, 5), "hi", fill="black")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def docs(tmp_path):
    """A folder with the bundled PDF (+ its committed parses), a page image, a corrupt PDF and a broken image."""
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    shutil.copy(PDF, root / PDF.name)
    shutil.copy(DATA / "pydoc_topics.pdf.parsed.jsonl", root / "pydoc_topics.pdf.parsed.jsonl")
    (root / "sub" / "scan.png").write_bytes(_png())
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (root / "sub" / "truncated.png").write_bytes(_png()[:40])
    return root


def test_folder_reader_renders_real_pdf_pages_and_reports_bad_inputs(docs):
    corpus = read_corpus(docs, layout="folder", dpi=50)
    keys = [p.key for p in corpus.pages]
    assert keys[:24] == [("pydoc_topics.pdf", i) for i in range(1, 25)] and ("sub/scan.png", 1) in keys
    assert corpus.skips.count == 2
    skipped = {(f, p) for f, p, _ in corpus.skips.skipped}
    assert skipped == {("broken.pdf", None), ("sub/truncated.png", 1)}
    assert "broken.pdf" in corpus.skips.summary() and "sub/truncated.png page 1" in corpus.skips.summary()
    im = corpus.pages[5].image()
    assert im.size == (292, 414)  # A5 (148 x 210 mm) at 50 dpi


def test_committed_parses_are_read_not_recomputed(docs, tmp_path):
    corpus = read_corpus(docs / PDF.name, dpi=150)

    def no_ocr(image):
        raise AssertionError("the committed parse should be used")

    stats = parse_pages(corpus, docs / PDF.name, no_ocr, cache=tmp_path / "cache", dpi=150)
    assert stats == {"parsed": 0, "cached": 24, "seconds": 0.0}
    assert "global" in corpus.pages[5].text.lower() and "lambda" in corpus.pages[8].text.lower()


def test_new_parses_go_to_the_cache_never_beside_the_documents(docs, tmp_path):
    corpus = read_corpus(docs / "sub", layout="folder")
    calls = []

    def parser(image):
        calls.append(image.size)
        return "parsed words"

    parser.name = "fake"
    cache = tmp_path / "cache"
    parse_pages(corpus, docs / "sub", parser, cache=cache)
    parse_pages(read_corpus(docs / "sub", layout="folder"), docs / "sub", parser, cache=cache)
    assert len(calls) == 1 and corpus.pages[0].text == "parsed words"
    assert len(list(cache.glob("*.parsed.jsonl"))) == 1 and not list((docs / "sub").glob("*.parsed.jsonl"))


def test_reading_order_groups_lines_and_sorts_words():
    box = lambda x, y, w=30, h=12: [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]  # noqa: E731
    items = [(box(80, 41), "world", 0.9), (box(10, 40), "hello", 0.9), (box(10, 70), "next", 0.8),
             (box(60, 71), "line", 0.2)]
    assert reading_order(items) == "hello world\nnext line"
    assert reading_order(items, min_conf=0.5) == "hello world\nnext"


def test_vidore_parquet_reader(tmp_path):
    import pandas as pd

    rows = [{"query": "what is on page a?", "image": {"bytes": _png("white")}, "image_filename": "a.png",
             "answer": "hi"},
            {"query": "and page b?", "image": {"bytes": _png("gray")}, "image_filename": "b.png", "answer": "x"},
            {"query": "page a again", "image": {"bytes": _png("white")}, "image_filename": "a.png", "answer": "hi"},
            {"query": "broken", "image": {"bytes": b"not an image"}, "image_filename": "c.png", "answer": ""}]
    pd.DataFrame(rows).to_parquet(tmp_path / "test-00000.parquet")
    corpus = read_corpus(tmp_path)
    assert [p.key for p in corpus.pages] == [("a.png", 1), ("b.png", 1)]
    assert [q.evidence for q in corpus.questions] == [[("a.png", 1)], [("b.png", 1)], [("a.png", 1)]]
    assert corpus.skips.count == 1 and corpus.skips.skipped[0][0] == "c.png"


def test_docvqa_reader(tmp_path):
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "ffbf0023_4.png").write_bytes(_png())
    data = {"dataset_name": "docvqa", "data": [
        {"questionId": 1, "question": "What is the title?", "image": "documents/ffbf0023_4.png", "answers": ["hi"]}]}
    (tmp_path / "val_v1.0.json").write_text(json.dumps(data))
    corpus = read_corpus(tmp_path)
    assert [p.key for p in corpus.pages] == [("documents/ffbf0023_4.png", 1)]
    assert corpus.questions[0].answer == "hi" and corpus.questions[0].evidence == [("documents/ffbf0023_4.png", 1)]


def test_longdoc_reader_mmlongbench_and_longdocurl_styles(tmp_path):
    shutil.copy(PDF, tmp_path / "topics.pdf")
    (tmp_path / "samples.json").write_text(json.dumps([
        {"doc_id": "topics.pdf", "question": "How do I create an anonymous function?", "answer": "lambda",
         "evidence_pages": "[9]"}]))
    (tmp_path / "qa.jsonl").write_text(json.dumps(
        {"doc_no": "topics", "question": "Which statement is a null operation?", "evidence_pages": [11]}) + "\n")
    corpus = read_corpus(tmp_path, dpi=40)
    assert len(corpus.pages) == 24
    assert sorted(q.evidence for q in corpus.questions) == [[("topics.pdf", 9)], [("topics.pdf", 11)]]


def test_missing_root_prints_the_expected_layout(tmp_path):
    from datamodules._layout import DatasetLayoutError

    with pytest.raises(DatasetLayoutError, match="layout='vidore'"):
        read_corpus(tmp_path / "nowhere")


def test_debian_documentation_pdf_when_installed():
    pdf = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")
    if not pdf.is_file():
        pytest.skip(f"{pdf} is not installed here (Debian package shared-mime-info ships it)")
    corpus = read_corpus(pdf, dpi=30)
    assert len(corpus.pages) > 1 and corpus.pages[0].image().size[0] > 100


def test_dev_questions_name_pages_of_the_bundled_pdf():
    qs = read_questions(DATA / "dev_questions.jsonl")
    assert len(qs) >= 30 and {e[1] for q in qs for e in q.evidence} == set(range(1, 25))
    train, held = split_questions(qs, 0.25, 0)
    assert len(held) == round(len(qs) * 0.25) and not {q.question for q in train} & {q.question for q in held}


def test_easyocr_reads_a_real_page_title():
    pytest.importorskip("easyocr")
    pytest.importorskip("easyocr_en_models")
    from datamodules.docpages import OcrParser

    page = read_corpus(PDF, dpi=150).pages[5].image()
    crop = page.crop((40, 40, 560, 100))  # the title line of page 6 ("Python help topic: global")
    text = OcrParser()(crop)
    assert "global" in text.lower() and "python" in text.lower()


# ------------------------------------------------------------------------------------------------ index + CLI
def test_index_round_trip_and_search_limits(tmp_path):
    torch.manual_seed(0)
    net = zoo.create_model("cmrag_tiny").eval()
    idx = build_index(PDF, tmp_path / "idx", "cmrag_tiny", encoder=net, dpi=40)
    loaded = PageIndex.load(tmp_path / "idx")
    assert torch.equal(loaded.text, idx.text) and torch.equal(loaded.image, idx.image) and len(loaded) == 24
    assert loaded.records[0]["file"] == "pydoc_topics.pdf" and loaded.meta["seconds"]["cached_pages"] == 24
    q = "How do I create an anonymous function?"
    qe = net.embed_queries([q])
    text_only = [h.row for h in search(loaded, net, q, k=24, beta=1.0)]
    image_only = [h.row for h in search(loaded, net, q, k=24, beta=0.0)]
    assert text_only == torch.sort((qe @ loaded.text.T)[0], descending=True, stable=True).indices.tolist()
    assert image_only == torch.sort((qe @ loaded.image.T)[0], descending=True, stable=True).indices.tolist()


def test_rag_cli_index_query_eval(tmp_path, capsys):
    from tasks.cli import main

    out = tmp_path / "idx"
    assert main(["rag", "index", str(PDF), "--out", str(out), "--model", "cmrag_tiny", "--dpi", "40", "--quiet"]) == 0
    assert "indexed 24 pages" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"embeddings.safetensors", "pages.jsonl", "index.json"}
    assert main(["rag", "query", str(out), "How do I create an anonymous function?", "--k", "5", "--beta", "1",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["hits"]) == 5 and {"file", "page", "score", "text_score", "image_score"} <= set(res["hits"][0])
    assert main(["rag", "query", str(out), "anonymous function", "--k", "3"]) == 0
    assert "pydoc_topics.pdf" in capsys.readouterr().out
    assert main(["rag", "eval", str(out), "--questions", str(DATA / "dev_questions.jsonl"), "--beta", "0", "1",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"text", "image", "fused(beta=0)", "fused(beta=1)", "bm25"}
    assert res["fused(beta=1)"] == res["text"] and res["fused(beta=0)"]["mrr"] == res["image"]["mrr"]
    assert res["bm25"]["recall@5"] > 0.8  # the classical baseline on the real OCR text


def test_rag_cli_reports_skipped_pages(docs, tmp_path, capsys):
    from tasks.cli import main

    (docs / "sub").rename(tmp_path / "gone")  # keep the PDFs only (a broken one among them)
    assert main(["rag", "index", str(docs), "--out", str(tmp_path / "i"), "--model", "cmrag_tiny", "--dpi", "30",
                 "--layout", "folder", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "skipped 1 unreadable item(s)" in out and "broken.pdf" in err


# ------------------------------------------------------------------------------------------------ training
def test_fit_and_test_demo_config_through_the_cli(tmp_path, monkeypatch):
    from tasks.cli import main

    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    callbacks = [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": 0}}]
    args = ["--config", "configs/cmrag/demo.yaml", "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch",
            "1", "--trainer.default_root_dir", str(run), "--data.init_args.parse_cache", str(tmp_path / "cache"),
            "--data.init_args.dpi", "30", f"--trainer.callbacks={json.dumps(callbacks)}"]
    main(["fit", *args])
    ckpt = run / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    main(["test", *args, "--ckpt_path", str(ckpt)])
    net = zoo.create_model("cmrag_tiny")
    zoo.load_checkpoint(net, ckpt)  # the index builder's way of loading a trained UEM


def test_training_lowers_the_loss_on_the_dev_set():
    from tasks.cmrag import CMRAGTask

    torch.manual_seed(0)
    dm = DocTripletDataModule(str(DATA), str(DATA / "dev_questions.jsonl"), layout="folder", dpi=40, batch_size=8)
    dm.setup("fit")
    task = CMRAGTask("cmrag_tiny", lr=3e-3)
    opt = task.configure_optimizers()
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        before = task._loss(batch)[0].loss.item()
    for _ in range(15):
        opt.zero_grad()
        task._loss(batch)[0].loss.backward()
        opt.step()
    with torch.no_grad():
        after = task._loss(batch)[0].loss.item()
    assert after < 0.5 * before, (before, after)


# ------------------------------------------------------------------------------------------------ generation
def _tiny_qwen25_vl(folder: Path) -> Path:
    """A random-init Qwen2.5-VL (1 layer, hidden 32) with a character-level tokenizer and the real Qwen2-VL image
    processor, saved as a local folder: the paper's generator family, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor, Qwen2VLVideoProcessor,
    )

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
    vocab = {t: i for i, t in enumerate(special + ["[UNK]"] + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="[UNK]")
    fast.add_special_tokens({"additional_special_tokens": special})
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.content %}{% if c.type == 'image' %}"
                "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c.text }}{% endif %}{% endfor %}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
                               tokenizer=fast, video_processor=Qwen2VLVideoProcessor(), chat_template=template)
    ids = fast.convert_tokens_to_ids
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]},
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>")),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0], window_size=56),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def test_generation_from_the_top3_pages_through_a_local_vlm(tmp_path):
    net = zoo.create_model("cmrag_tiny").eval()
    idx = build_index(PDF, None, "cmrag_tiny", encoder=net, dpi=30)
    gen = VisionLanguageGenerator(str(_tiny_qwen25_vl(tmp_path / "vlm")), max_new_tokens=4, image_max_side=112)
    seen = {}

    def spy(question, images, texts):
        seen.update(n_images=len(images), texts=texts)
        return gen(question, images, texts)

    text, hits = answer(idx, net, spy, "How do I create an anonymous function?")
    assert isinstance(text, str) and len(hits) == 3 and seen["n_images"] == 3
    assert seen["texts"] == [idx.records[h.row]["text"] for h in hits]
    msg = gen.messages("q?", [None] * 3, ["a", "b", "c"])[0]["content"]
    assert [c["type"] for c in msg] == ["image", "image", "image", "text"] and "[page 3 text]" in msg[-1]["text"]
