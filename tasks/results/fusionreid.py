"""FusionReID results recipe (issue 16): the fused model beside single-branch models and plain baselines, one split.

    python -m tasks.results.fusionreid --config configs/fusionreid/results_cpu.yaml     (CPU, minutes)
    python -m tasks.results.fusionreid --config configs/fusionreid/results.yaml         (one H200, < 8 min)

Data (what is real, what is synthetic): no person-ReID dataset can be downloaded here, so the identities are regions
of the REAL photographs scikit-image and scikit-learn ship, and every image of an identity is a SYNTHETIC view of it
(random shift / scale / rotation + a fixed per-camera brightness, tint, gamma, blur, noise and JPEG quality), written
in the Market-1501 layout by :func:`datamodules.synthetic.reid.write_photo_reid_dataset`. Split rule: training
identities come from the config's ``train_photos``, query / gallery identities and the gallery distractors from the
disjoint ``test_photos`` (checked here and pinned by tests/test_results_reid.py).

Models, all trained with the same recipe (``tasks.reid.ReIDTask``: CE-LS + soft triplet per head, SGD + warmup
cosine, P x K sampler, the spec's augmentations) and evaluated by the same Market-1501 protocol (``evaluate_rank``,
same-camera filter, cosine distance) on the same held-out query / gallery:

- ``fused``: FusionReID (CNN + ViT + LRUs + HTM, six heads, concatenated test embedding) — ours;
- ``cnn_branch`` / ``vit_branch``: FusionReID's own ResNet (GeM) or ViT (cls token, SIE) alone, one BNNeck head
  (the paper's ablation: fusing both should beat either alone);
- ``timm``: a plain ImageNet-style timm backbone (``timm.create_model(name, num_classes=0)``, random init: no weights
  can be downloaded here) with one BNNeck head — the baseline no one here wrote;
- ``raw_pixels``: no training, the cosine distance of the normalised pixels (floor of the task).

Outputs in ``--out``: ``results.json``, ``results.md`` (table + command, machine, commit), ``ranklist.png`` (the
fused model's top-8 for six queries), ``curves.png`` (held-out mAP while training: monitoring only, the last model is
reported; nothing is selected on the test split) and ``data.png`` (training views vs held-out views).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from datamodules.reid import ReIDDataModule
from datamodules.synthetic._owned import is_synthetic
from datamodules.synthetic.reid import write_photo_reid_dataset
from tasks.reid import ReIDTask, cosine_distance, evaluate_rank
from tasks.results._report import checkout_commit, load_config, markdown_table, stamp, write_json
from zoo.fusionreid import FusionReIDOutput, GeM

__all__ = ["SingleBranchReID", "BaselineReIDTask", "build_data", "check_split", "run", "main"]

_logger = logging.getLogger(__name__)

#: data keys passed to the writer
_WRITER_KEYS = ("train_photos", "test_photos", "train_ids_per_photo", "test_ids_per_photo", "train_images_per_id",
                "gallery_images_per_id", "num_distractors", "num_cameras", "seed")


# --------------------------------------------------------------------------------------------- baseline models
class SingleBranchReID(nn.Module):
    """One backbone + one BNNeck head, with the FusionReID output contract (lists of one feature / one logit).

    Args:
        backbone: the feature extractor.
        dim: its feature width.
        num_classes: training identities.
        kind: 'cnn' (``forward_features`` map -> GeM), 'vit' (FusionReID ViT tokens -> cls, camera ids used) or
            'pooled' (the backbone returns pooled features, e.g. timm with ``num_classes=0``).
    """

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int, kind: str) -> None:
        super().__init__()
        if kind not in ("cnn", "vit", "pooled"):
            raise ValueError(f"unknown kind {kind!r}")
        self.backbone, self.kind = backbone, kind
        self.pool = GeM() if kind == "cnn" else nn.Identity()
        self.neck = nn.BatchNorm1d(dim)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor, camids: torch.Tensor | None = None) -> FusionReIDOutput | torch.Tensor:
        if self.kind == "cnn":
            f = self.pool(self.backbone.forward_features(images))
        elif self.kind == "vit":
            f = self.backbone(images, camids)[:, 0]
        else:
            f = self.backbone(images)
        if not self.training:
            return F.normalize(f, dim=-1)
        return FusionReIDOutput(features=[f], logits=[self.classifier(self.neck(f))])


def build_baseline(spec: dict[str, Any], num_classes: int, num_cameras: int) -> nn.Module:
    """A baseline network from its config entry (``kind``: cnn_branch | vit_branch | timm)."""
    kind = spec["kind"]
    if kind in ("cnn_branch", "vit_branch"):
        full = zoo.create_model(spec["model"], num_classes=num_classes, num_cameras=num_cameras,
                                **spec.get("model_kwargs", {}))
        if kind == "cnn_branch":
            return SingleBranchReID(full.cnn, full.feature_dims[0], num_classes, "cnn")
        return SingleBranchReID(full.vit, full.feature_dims[1], num_classes, "vit")
    if kind == "timm":
        import timm

        net = timm.create_model(spec["timm_name"], pretrained=False, num_classes=0, **spec.get("timm_kwargs", {}))
        return SingleBranchReID(net, net.num_features, num_classes, "pooled")
    raise ValueError(f"unknown baseline kind {kind!r}")


class BaselineReIDTask(ReIDTask):
    """``ReIDTask`` (same losses, optimiser, schedule, evaluation) on a baseline network.

    Args:
        baseline: the baseline's config entry (``kind`` cnn_branch | vit_branch | timm, and its arguments).
        **kwargs: ``ReIDTask`` arguments.
    """

    def __init__(self, baseline: dict[str, Any], **kwargs: Any) -> None:
        self.baseline = dict(baseline)
        super().__init__(**kwargs)

    def create_network(self) -> nn.Module:
        return build_baseline(self.baseline, int(self.model_kwargs["num_classes"]),
                              int(self.model_kwargs["num_cameras"]))


# ------------------------------------------------------------------------------------------------------ data
def check_split(data_dir: Path) -> dict[str, int]:
    """Check the written split rule: no photograph and no identity in both training and query/gallery.

    Returns the counts (training / test identities, photos). Raises ``ValueError`` on an overlap.
    """
    rows = [line.split(",") for line in (data_dir / "photo_ids.csv").read_text().split("\n")[1:] if line]
    photo = {int(p): ph for p, ph, _ in rows}
    split = {int(p): s for p, _, s in rows}
    pids = {}
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        pids[sub] = {int(f.name.split("_")[0]) for f in (data_dir / sub).glob("*.jpg")} - {0, -1}
    train, test = pids["bounding_box_train"], pids["query"] | pids["bounding_box_test"]
    if train & test:
        raise ValueError(f"identities in both splits: {sorted(train & test)[:10]}")
    if any(split[p] != "train" for p in train) or any(split[p] != "test" for p in test):
        raise ValueError("an identity is written to the wrong split")
    tr_ph, te_ph = {photo[p] for p in train}, {photo[p] for p in test}
    if tr_ph & te_ph:
        raise ValueError(f"photographs in both splits: {sorted(tr_ph & te_ph)}")
    return {"train_ids": len(train), "test_ids": len(test), "train_photos": len(tr_ph), "test_photos": len(te_ph)}


def build_data(cfg: dict[str, Any]) -> Path:
    """Write the photo-patch dataset under ``cfg['root']`` on first use (a synthetic-labelled folder); its folder."""
    import hashlib
    import json

    params = {k: cfg[k] for k in _WRITER_KEYS if k in cfg}
    params["size"] = list(cfg.get("write_size", (128, 64)))
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    root = Path(cfg["root"]) / f"photo_reid_{key}"  # one folder per writer setting: a tiny run never feeds a full one
    d = root / "market1501"
    if not (is_synthetic(d) and (d / "photo_ids.csv").is_file()):
        write_photo_reid_dataset(root, **{**params, "size": tuple(params["size"])})
    return d


# ----------------------------------------------------------------------------------------------- evaluation
class _Curve(pl.Callback):
    """Held-out mAP / rank-1 after each validation (monitoring only)."""

    def __init__(self) -> None:
        self.points: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        if "val/mAP" in m:
            self.points.append({"epoch": trainer.current_epoch + 1, "mAP": float(m["val/mAP"]),
                                "rank1": float(m["val/rank1"])})


@torch.no_grad()
def embed_eval_set(dm: ReIDDataModule, net: nn.Module | None, device: torch.device, use_camids: bool
                   ) -> dict[str, torch.Tensor]:
    """Embeddings (or flattened pixels when ``net`` is None) of query + gallery, with pid / camid / is_query."""
    outs: dict[str, list[torch.Tensor]] = {"emb": [], "pid": [], "camid": [], "is_query": [], "index": []}
    for b in dm.test_dataloader():
        if net is None:
            emb = F.avg_pool2d(b["image"], 2).flatten(1)
        else:
            cam = b["camid"].to(device) if use_camids else None
            emb = net(b["image"].to(device), cam).float().cpu()
        outs["emb"].append(emb)
        for k in ("pid", "camid", "is_query", "index"):
            outs[k].append(b[k])
    return {k: torch.cat(v) for k, v in outs.items()}


def rank_metrics(d: dict[str, torch.Tensor], max_rank: int = 10) -> tuple[dict[str, float], np.ndarray]:
    """mAP / rank-k by the landed protocol (cosine distance, ``evaluate_rank`` with the same-camera filter)."""
    q = d["is_query"].bool()
    dist = cosine_distance(d["emb"][q], d["emb"][~q])
    cmc, m_ap, n = evaluate_rank(dist, d["pid"][q], d["pid"][~q], d["camid"][q], d["camid"][~q], max_rank=max_rank,
                                 return_num_valid=True)
    return ({"mAP": m_ap, "rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
             "valid_queries": n}, dist.numpy())


# ----------------------------------------------------------------------------------------------- training
def _datamodule(data_dir: Path, cfg: dict[str, Any]) -> ReIDDataModule:
    t = cfg["train"]
    return ReIDDataModule(str(data_dir), "market1501", image_size=tuple(cfg["dataset"]["image_size"]),
                          batch_size=t["batch_size"], num_instances=t["num_instances"],
                          test_batch_size=t.get("test_batch_size", 128), num_workers=t.get("num_workers", 0),
                          seed=cfg.get("seed", 0))


def train_one(name: str, spec: dict[str, Any], data_dir: Path, cfg: dict[str, Any]
              ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Train (unless raw pixels) and evaluate one entry; returns its row and its eval embeddings."""
    t = cfg["train"]
    pl.seed_everything(cfg.get("seed", 0), workers=True)
    dm = _datamodule(data_dir, cfg)
    dm.setup("fit")
    row: dict[str, Any] = {"name": name, "kind": spec["kind"], "label": spec.get("label", name)}
    if spec["kind"] == "raw_pixels":
        d = embed_eval_set(dm, None, torch.device("cpu"), False)
        row.update(rank_metrics(d)[0], params_m=0.0, train_s=0.0, curve=[])
        return row, d
    common = dict(lr=t["lr"], warmup_epochs=t["warmup_epochs"], label_smoothing=0.1, triplet_margin=None,
                  use_camids=True, weight_decay=t.get("weight_decay", 1e-4))
    mk = {"num_classes": dm.num_classes, "num_cameras": dm.num_cameras}
    if spec["kind"] == "fusionreid":
        task: ReIDTask = ReIDTask(model=spec["model"], model_kwargs={**spec.get("model_kwargs", {}), **mk},
                                  compile=t.get("compile", False), **common)
    else:
        task = BaselineReIDTask(spec, model=spec.get("model", "fusionreid_tiny"), model_kwargs=mk, **common)
    curve = _Curve()
    trainer = pl.Trainer(max_epochs=t["max_epochs"], accelerator=t.get("accelerator", "auto"), devices=1,
                         precision=t.get("precision", "32-true"), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         check_val_every_n_epoch=t.get("eval_every", 5), callbacks=[curve],
                         log_every_n_steps=10, deterministic=False)
    t0 = time.perf_counter()
    trainer.fit(task, dm)
    train_s = time.perf_counter() - t0
    net = task.network.eval()
    dev = next(task.net.parameters()).device
    d = embed_eval_set(dm, net, dev, use_camids=True)
    row.update(rank_metrics(d)[0], params_m=sum(p.numel() for p in task.net.parameters()) / 1e6, train_s=train_s,
               curve=curve.points)
    return row, d


# -------------------------------------------------------------------------------------------------- figures
def _denorm(x: torch.Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0).numpy() * 0.5 + 0.5).clip(0, 1)


def plot_ranklist(dm: ReIDDataModule, d: dict[str, torch.Tensor], path: Path, n_query: int = 5, top: int = 7,
                  title: str = "") -> None:
    """Query + top-``top`` gallery images (green = same identity, red = other; same-camera matches removed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = d["is_query"].bool()
    qi, gi = torch.nonzero(q)[:, 0], torch.nonzero(~q)[:, 0]
    dist = cosine_distance(d["emb"][qi], d["emb"][gi]).numpy()
    ds = dm.eval_set
    pick = np.linspace(0, len(qi) - 1, n_query).round().astype(int)
    fig, axes = plt.subplots(n_query, top + 1, figsize=(1.0 * (top + 1), 1.9 * n_query))
    for r, k in enumerate(pick):
        qidx = int(d["index"][qi[k]])
        qpid, qcam = int(d["pid"][qi[k]]), int(d["camid"][qi[k]])
        axes[r, 0].imshow(_denorm(ds[qidx]["image"]))
        axes[r, 0].set_title("query", fontsize=7)
        order = [j for j in np.argsort(dist[k], kind="stable")
                 if not (int(d["pid"][gi[j]]) == qpid and int(d["camid"][gi[j]]) == qcam)][:top]
        for c, j in enumerate(order, 1):
            gidx = int(d["index"][gi[j]])
            ok = int(d["pid"][gi[j]]) == qpid
            ax = axes[r, c]
            ax.imshow(_denorm(ds[gidx]["image"]))
            for s in ax.spines.values():
                s.set_edgecolor("green" if ok else "red")
                s.set_linewidth(3)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=55)
    plt.close(fig)


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for r in rows:
        if r["curve"]:
            ax.plot([p["epoch"] for p in r["curve"]], [100 * p["mAP"] for p in r["curve"]], marker="o",
                    label=r["label"])
        elif r["kind"] == "raw_pixels":
            ax.axhline(100 * r["mAP"], color="grey", ls="--", label=r["label"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out mAP (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_data(data_dir: Path, path: Path, n: int = 10) -> None:
    """Training views (top) and held-out query / gallery views (bottom) as written."""
    from PIL import Image

    tr = sorted((data_dir / "bounding_box_train").glob("*.jpg"))
    te = sorted((data_dir / "query").glob("*.jpg"))
    rows = []
    for files in (tr[:: max(1, len(tr) // n)][:n], te[:: max(1, len(te) // n)][:n]):
        ims = [np.asarray(Image.open(f).convert("RGB").resize((32, 64))) for f in files]
        ims += [np.zeros_like(ims[0])] * (n - len(ims))
        rows.append(np.concatenate(ims, 1))
    Image.fromarray(np.concatenate(rows, 0)).save(path)


# ------------------------------------------------------------------------------------------------------ main
_COLUMNS = [("label", "model", ""), ("params_m", "params (M)", ".2f"), ("rank1", "Rank-1", ".3f"),
            ("rank5", "Rank-5", ".3f"), ("mAP", "mAP", ".3f"), ("train_s", "train (s)", ".0f")]


def run(cfg: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write the data (first use), train and evaluate every configured model, write the table and figures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = build_data(cfg["dataset"])
    split = check_split(data_dir)
    t0 = time.perf_counter()
    rows, embs = [], {}
    for name, spec in cfg["models"].items():
        _logger.info("results/fusionreid: %s", name)
        row, d = train_one(name, spec, data_dir, cfg)
        rows.append(row)
        embs[name] = d
        print(f"[fusionreid results] {name}: rank1 {row['rank1']:.3f} mAP {row['mAP']:.3f} ({row['train_s']:.0f} s)",
              flush=True)
        write_json(out / "partial.json", rows)  # what is done so far, should a time limit stop the run
    dm = _datamodule(data_dir, cfg)
    dm.setup("test")
    main_name = cfg.get("figure_model")
    main_name = main_name if main_name in embs else next(iter(embs))
    plot_ranklist(dm, embs[main_name], out / "ranklist.png",
                  title=f"{cfg['models'][main_name].get('label', main_name)}: held-out photos (green = same id)")
    plot_curves(rows, out / "curves.png")
    plot_data(data_dir, out / "data.png")
    result = {"family": "fusionreid", **stamp("tasks.results.fusionreid"), "split": split,
              "split_rule": cfg["dataset"].get("split_rule", ""), "dataset": dict(cfg["dataset"]),
              "train": cfg["train"], "rows": rows, "total_s": time.perf_counter() - t0}
    write_json(out / "results.json", result)
    md = [f"# FusionReID results ({result['machine']})", "",
          f"Command: `{result['command']}` — commit {result['commit']}, torch {result['torch']}, "
          f"total {result['total_s']:.0f} s.", "",
          f"Data: identities = regions of REAL photographs (scikit-image / scikit-learn), views SYNTHETIC (shift, "
          f"scale, rotation, per-camera photometry). Split: {split['train_ids']} training identities from "
          f"{split['train_photos']} photos; {split['test_ids']} held-out query identities from {split['test_photos']} "
          f"other photos (+ distractors). Evaluation: Market-1501 protocol, cosine distance, same-camera filter.", "",
          markdown_table(rows, _COLUMNS), ""]
    (out / "results.md").write_text("\n".join(md))
    return result


def tiny_overrides() -> dict[str, Any]:
    """A seconds-long smoke run of a config (tests, ``--tiny``): 2 + 2 photos, few identities, one epoch."""
    return {"dataset": {"train_photos": ["astronaut", "coffee"], "test_photos": ["gravel", "coins"],
                     "train_ids_per_photo": 4, "test_ids_per_photo": 3, "train_images_per_id": 4,
                     "gallery_images_per_id": 3, "num_distractors": 2, "image_size": [64, 32]},
            "train": {"max_epochs": 1, "eval_every": 1, "batch_size": 16, "num_instances": 4, "warmup_epochs": 1,
                      "accelerator": "cpu", "precision": "32-true", "compile": False, "num_workers": 0}}


def tiny_models(models: dict[str, Any]) -> dict[str, Any]:
    """The same entries on tiny networks (``--tiny``): fusionreid_tiny and its branches, timm resnet10t / ViT-Ti."""
    out = {}
    for name, spec in models.items():
        spec = dict(spec)
        if spec["kind"] in ("fusionreid", "cnn_branch", "vit_branch"):
            spec.update(model="fusionreid_tiny", model_kwargs={})
        elif spec["kind"] == "timm":
            vit = "vit" in spec["timm_name"]
            spec.update(timm_name="vit_tiny_patch16_224" if vit else "resnet10t",
                        timm_kwargs={"img_size": [64, 32]} if vit else {})
        out[name] = spec
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="configs/fusionreid/results*.yaml")
    p.add_argument("--out", default=None, help="output folder (default: the config's out)")
    p.add_argument("--data_root", default=None, help="where the dataset is written / read (default: the config's)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run of the config (CPU)")
    p.add_argument("--models", default=None, help="comma-separated subset of the config's models")
    a = p.parse_args(argv)
    over: dict[str, Any] = tiny_overrides() if a.tiny else {}
    if a.data_root:
        over.setdefault("dataset", {})["root"] = a.data_root
    checkout_commit()  # the commit the run starts from (cached for stamp())
    cfg = load_config(a.config, over)
    if a.tiny:
        cfg["models"] = tiny_models(cfg["models"])
    if a.models:
        keep = a.models.split(",")
        cfg["models"] = {k: v for k, v in cfg["models"].items() if k in keep}
    return run(cfg, a.out or cfg["out"])


if __name__ == "__main__":
    main()
