"""NEO results recipe (issue 21): trained from scratch on REAL images — scikit-learn's handwritten digits as visual
question answering — and judged on held-out images beside classifiers no one here wrote.

    python -m tasks.results.neo --config configs/neo/results_digits.yaml [--out DIR]

The split (``split`` in the config, :func:`digits_split`): identical-pixel images dropped (the first of each group
kept), then stratified by label into train / val / test with a fixed seed. The split's images are written by
``datamodules.vlm_conversations.write_digits_vqa`` ("<image> what digit is this?" → "7", PNGs upscaled ×``scale``)
under the sharezoo cache, read by ``VLMConversationDataModule`` (ChatML, packed training rows) and trained with
``tasks.neo.NEOTask``; the checkpoint with the best VALIDATION exact match is kept (the step count is chosen on val),
then answers the TEST prompts greedily (KV cache) and is scored by exact match. Beside it, on the same split and the
very same PNG pixels (grey level / 255, flattened):

- scikit-learn ``LogisticRegression`` and ``SVC`` (RBF), ``C`` chosen on the validation images, fitted on train;
- scikit-learn ``DummyClassifier(strategy="most_frequent")``: the majority class of the training labels.

Writes ``results.md``, ``results.json`` and ``test_answers.png`` (held-out digits with NEO's answers) into the
output folder. ``--checkpoint`` skips training and evaluates a ``NEOTask`` checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.results._report import fit_best_on_val, markdown_table, prepare_run, runner_parser, stamp, write_json

__all__ = ["baselines", "digits_split", "evaluate_neo", "pixels", "run", "train_neo", "write_split"]


# ------------------------------------------------------------------------------------------------ data
def digits_split(seed: int = 0, fractions: Sequence[float] = (0.6, 0.2, 0.2),
                 duplicates: str = "drop") -> dict[str, np.ndarray]:
    """Indices into ``sklearn.datasets.load_digits()`` per split (sorted): identical 8×8 images dropped (the first of
    each group kept), then stratified by label into train / val / test (``train_test_split`` twice, ``random_state =
    seed``) in the proportions ``fractions``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if duplicates != "drop":
        raise ValueError(f"duplicates must be 'drop' (the only rule that keeps copies out of two splits), "
                         f"got {duplicates!r}")
    f_train, f_val, f_test = (float(x) for x in fractions)
    if abs(f_train + f_val + f_test - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    d = load_digits()
    flat = d.images.reshape(len(d.target), -1)
    _, first = np.unique(flat, axis=0, return_index=True)
    keep = np.sort(first)
    y = d.target
    train, rest = train_test_split(keep, train_size=f_train, stratify=y[keep], random_state=seed)
    val, test = train_test_split(rest, train_size=f_val / (f_val + f_test), stratify=y[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def write_split(split: dict[str, np.ndarray], scale: int, root: Path | None = None) -> Path:
    """The split's VQA folders (``write_digits_vqa``) under ``root`` (default: the sharezoo cache,
    ``derived/neo/digits_vqa/<hash of the split and scale>``); written once, reused while ``split.json`` is there."""
    import zoo
    from datamodules.vlm_conversations import write_digits_vqa

    spec = {k: [int(i) for i in v] for k, v in split.items()} | {"scale": int(scale)}
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(root or zoo.cache_dir("derived/neo/digits_vqa")) / key
    if not (folder / "split.json").is_file():
        write_digits_vqa(folder, scale=scale, splits={k: v for k, v in split.items()})
        (folder / "split.json").write_text(json.dumps(spec))
    return folder


def pixels(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of a written split: the PNGs NEO reads, grey level / 255 flattened (N, side²), and the digit labels."""
    from datamodules.vlm_conversations import read_annotations
    from PIL import Image

    recs = read_annotations(root / split / "vqa.jsonl")
    xs = [np.asarray(Image.open(r["image"][0]).convert("L"), np.float32).ravel() / 255.0 for r in recs]
    ys = [int(r["conversations"][-1]["value"]) for r in recs]
    return np.stack(xs), np.asarray(ys)


# ------------------------------------------------------------------------------------------------ baselines
def baselines(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray], logreg_c: Sequence[float],
              svc_c: Sequence[float]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """scikit-learn classifiers fitted on ``train``, ``C`` picked by validation accuracy; returns (rows, test
    predictions by method). Rows hold ``val`` / ``test`` accuracy, the chosen C and the whole C sweep."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    rows, preds = [], {}
    makers = {"LogisticRegression": (lambda c: LogisticRegression(C=c, max_iter=5000), logreg_c),
              "SVC (RBF)": (lambda c: SVC(C=c, kernel="rbf", gamma="scale"), svc_c)}
    for name, (make, grid) in makers.items():
        m, c, acc, sweep = fit_best_on_val(((float(c), make(float(c))) for c in grid), train, val)
        preds[name] = m.predict(test[0])
        rows.append({"method": f"baseline: scikit-learn {name} (C {c:g}, chosen on val)", "kind": "baseline",
                     "val": acc, "test": float((preds[name] == test[1]).mean()), "C": c,
                     "sweep": [{"C": k, "val": a} for k, a in sweep]})
    dummy = DummyClassifier(strategy="most_frequent").fit(*train)
    preds["majority"] = dummy.predict(test[0])
    top = preds["majority"][0]
    rows.append({"method": f"baseline: majority class of train (scikit-learn DummyClassifier: '{top}')",
                 "kind": "baseline", "val": float((dummy.predict(val[0]) == val[1]).mean()),
                 "test": float((preds["majority"] == test[1]).mean())})
    return rows, preds


# ------------------------------------------------------------------------------------------------ NEO
def build_datamodule(root: Path, data: dict[str, Any], seed: int) -> Any:
    from datamodules.vlm_conversations import VLMConversationDataModule

    side = 8 * int(data["scale"])
    dm = VLMConversationDataModule(str(root), token_px=int(data["token_px"]), min_pixels=side * side,
                                   max_pixels=side * side, max_len=int(data["max_len"]),
                                   batch_size=int(data["batch_size"]), eval_batch_size=int(data["eval_batch_size"]),
                                   seed=seed)
    dm.setup("fit")
    return dm


class _Curve:
    """Records ``val/exact_match`` at every validation (a Lightning callback, built lazily)."""

    def __new__(cls, store: list[tuple[int, float]]) -> Any:
        import pytorch_lightning as pl

        class Curve(pl.Callback):
            def on_validation_end(self, trainer: Any, module: Any) -> None:  # after the module logged it
                v = trainer.callback_metrics.get("val/exact_match")
                if v is not None and not trainer.sanity_checking:
                    store.append((int(trainer.global_step), float(v)))

        return Curve()


def train_neo(dm: Any, task_kwargs: dict[str, Any], trainer_kwargs: dict[str, Any],
              out: Path) -> tuple[Path, list[tuple[int, float]], float]:
    """Fit ``NEOTask`` keeping the checkpoint with the best validation exact match; returns (checkpoint, the
    validation curve [(step, exact match)], training seconds)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from tasks.neo import NEOTask

    curve: list[tuple[int, float]] = []
    ckpt = ModelCheckpoint(dirpath=str(out / "checkpoints"), monitor="val/exact_match", mode="max", save_top_k=1,
                           filename="best", save_last=False, enable_version_counter=False)
    kw = {"devices": 1, "logger": False, "enable_model_summary": False, "enable_progress_bar": False,
          "num_sanity_val_steps": 0, "check_val_every_n_epoch": None, **trainer_kwargs}
    t0 = time.time()
    pl.Trainer(default_root_dir=str(out), callbacks=[ckpt, _Curve(curve)], **kw).fit(NEOTask(**task_kwargs),
                                                                                    datamodule=dm)
    return Path(ckpt.best_model_path), curve, time.time() - t0


@torch.no_grad()
def evaluate_neo(ckpt: str | Path, dm: Any, split: str = "test") -> tuple[float, list[str], Any]:
    """(exact match, greedy answers, the task) of a ``NEOTask`` checkpoint on a split's prompts (the task's own
    ``answer`` and ``normalise_answer``)."""
    from tasks.neo import NEOTask, normalise_answer

    task = NEOTask.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True).eval()
    loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    answers, hits = [], []
    for batch in loader:
        preds = task.answer({**batch, "tokenizer": dm.tokenizer})
        answers += preds
        hits += [normalise_answer(p) == normalise_answer(a) for p, a in zip(preds, batch["answers"])]
    return float(np.mean(hits)), answers, task


def _plot(path: Path, root: Path, answers: list[str], labels: np.ndarray, num: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a test extra
        return
    from datamodules.vlm_conversations import read_annotations
    from PIL import Image

    recs = read_annotations(root / "test" / "vqa.jsonl")
    num = min(num, len(recs))
    wrong = [i for i, (a, y) in enumerate(zip(answers, labels)) if a.strip() != str(y)][: num // 3]
    right = [i for i in range(len(recs)) if i not in wrong]
    idx = sorted(wrong + [right[j] for j in np.linspace(0, len(right) - 1, num - len(wrong)).round().astype(int)])
    cols = min(10, num)
    rows = int(np.ceil(num / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx):
        ax.imshow(np.asarray(Image.open(recs[i]["image"][0])), interpolation="nearest")
        ok = answers[i].strip() == str(labels[i])
        ax.set_title(f"NEO: {answers[i].strip() or '∅'!s:.4}\n(true {labels[i]})", fontsize=7,
                     color="tab:green" if ok else "tab:red")
    fig.suptitle(f"held-out test digits (NEO's mistakes first: {len(wrong)} shown), NEO's greedy answer to 'what "
                 "digit is this?' (green right, red wrong)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ report
_COLS = [("method", "method", ""), ("test", "test exact match / accuracy", ".3f"), ("val", "val", ".3f")]


def write_report(res: dict[str, Any], out: Path) -> str:
    n = res["counts"]
    lines = [f"Digit VQA on held-out REAL images: {res['split_rule']} ({n['train']} train / {n['val']} val / "
             f"{n['test']} test images; {n['dropped_duplicates']} identical-pixel images dropped). "
             "NEO answers \"<image> what digit is this?\" greedily (exact match); the baselines classify the same "
             "PNG pixels.", "", markdown_table(res["rows"], _COLS), "",
             f"NEO: {res['neo']['params'] / 1e6:.1f} M parameters ({res['neo']['embedding_params'] / 1e6:.1f} M "
             "the tied GPT-2-sized embedding), from scratch; "
             + (f"best val exact match at step {res['neo']['best_step']} of {res['neo']['max_steps']} (val every "
                f"{res['neo']['val_every']}), training {res['neo']['train_s']:.0f} s" if res["neo"]["val_curve"] else
                f"evaluated checkpoint {res['neo']['checkpoint']}")
             + f"; answers that are a single digit: {res['neo']['valid_digit_answers']:.3f}.",
             "Validation curve (step: exact match): "
             + (", ".join(f"{s}: {v:.3f}" for s, v in res["neo"]["val_curve"]) or "n/a"), "",
             f"Command: `{res['command']}`; machine: {res['machine']}; commit {res['commit']}; "
             f"wall {res['wall_s']:.0f} s."]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    write_json(out / "results.json", res)
    return text


# ------------------------------------------------------------------------------------------------ entry point
def smoke(cfg: dict[str, Any]) -> None:
    """Shrink the recipe in place to a seconds-long CPU run: a few images per split, a minimal model, 2 steps."""
    cfg["limit"] = {"train": 40, "val": 20, "test": 20}
    cfg["task"]["model_kwargs"] = {**cfg["task"]["model_kwargs"], "hidden_size": 32, "intermediate_size": 64,
                                   "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                                   "vision_width": 16, "num_buffer_layers": 1, "num_hidden_layers": 1}
    cfg["training"] = {**cfg["training"], "max_steps": 2, "val_check_interval": 1}
    cfg["baselines"] = {"logreg_C": [1.0], "svc_C": [1.0]}
    cfg["figure"] = {"num": 4}


def run(argv: Sequence[str] = ()) -> dict[str, Any]:
    """Split, write the VQA folders, train NEO (unless ``--checkpoint``), score it and the baselines on test."""
    p = runner_parser("neo", __doc__)
    p.add_argument("--checkpoint", default=None, help="evaluate this NEOTask checkpoint instead of training")
    a = p.parse_args(list(argv))
    import pytorch_lightning as pl

    cfg, out = prepare_run(a, "neo", smoke)
    t0 = time.time()
    seed = int(cfg.get("seed", 0))
    sp = cfg.get("split", {})
    split = digits_split(int(sp.get("seed", 0)), sp.get("fractions", (0.6, 0.2, 0.2)), sp.get("duplicates", "drop"))
    dropped = 1797 - sum(len(v) for v in split.values())
    if cfg.get("limit"):
        split = {k: v[: int(cfg["limit"][k])] for k, v in split.items()}
    root = write_split(split, int(cfg["dataset"]["scale"]))
    train, val, test = (pixels(root, s) for s in ("train", "val", "test"))
    b = cfg.get("baselines", {})
    base_rows, _ = baselines(train, val, test, b.get("logreg_C", [1.0]), b.get("svc_C", [1.0]))

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = build_datamodule(root, cfg["dataset"], seed)
    ckpt, curve, train_s = (Path(a.checkpoint), [], 0.0) if a.checkpoint else train_neo(
        dm, cfg["task"], cfg["training"], out)
    em, answers, task = evaluate_neo(ckpt, dm, "test")
    val_em = max((v for _, v in curve), default=None)
    if val_em is None:  # --checkpoint: score the checkpoint on val too
        val_em = evaluate_neo(ckpt, dm, "val")[0]
    best_step = next((s for s, v in curve if v == val_em), None)
    emb = task.net.lm.get_input_embeddings().weight.numel()
    n_params = sum(p_.numel() for p_ in task.net.parameters())
    neo_row = {"method": f"**NEO** ({n_params / 1e6:.1f} M parameters, from scratch; checkpoint of the best val "
                         "exact match)",
               "kind": "ours", "val": val_em, "test": em}
    digits = [a_.strip() for a_ in answers]
    res = {"family": "neo", **stamp("tasks.results.neo"), "wall_s": time.time() - t0,
           "split_rule": cfg.get("split_rule", ""), "split_spec": sp,
           "counts": {k: int(len(v)) for k, v in split.items()} | {"dropped_duplicates": int(dropped)},
           "split_indices": {k: [int(i) for i in v] for k, v in split.items()},
           "rows": [neo_row, *base_rows],
           "neo": {"checkpoint": str(ckpt), "val_curve": curve, "best_step": best_step,
                   "max_steps": cfg["training"].get("max_steps"),
                   "val_every": cfg["training"].get("val_check_interval"),
                   "train_s": train_s, "params": n_params, "test_answers": answers,
                   "embedding_params": emb, "answers": Counter(digits).most_common(),
                   "valid_digit_answers": float(np.mean([d in "0123456789" and len(d) == 1 for d in digits])),
                   "per_class_test": {str(c): float(np.mean([d == str(c) for d, y in zip(digits, test[1]) if y == c]))
                                      for c in sorted(set(test[1].tolist()))}},
           "config": cfg, "data_root": str(root)}
    _plot(out / "test_answers.png", root, answers, test[1], int(cfg.get("figure", {}).get("num", 30)))
    print(write_report(res, out))
    return res


if __name__ == "__main__":
    run(__import__("sys").argv[1:])
