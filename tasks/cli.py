"""The ``sharezoo`` command: LightningCLI (fit | validate | test | predict) plus zoo subcommands.

    sharezoo fit --config configs/fusionreid_tiny/demo.yaml
    sharezoo list-models 'fusionreid*'      sharezoo info fusionreid_vitb16_r50
    sharezoo download NAME.TAG              sharezoo export CKPT OUT_DIR
    sharezoo bench --model fusionreid_tiny --task train --batch 8 --steps 5
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def lightning_cli(args: Sequence[str]):
    """Run ``sharezoo <fit|validate|test|predict> ...`` in process; returns the ``LightningCLI`` (trainer, model,
    datamodule) for callers such as the demo."""
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    return LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=list(args),
    )


def _list_models(argv: Sequence[str]) -> int:
    import zoo

    p = argparse.ArgumentParser(prog="sharezoo list-models", description="List registered models.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'fusionreid*'")
    p.add_argument("--pretrained", action="store_true", help="list weights (name.tag) instead of architectures")
    a = p.parse_args(argv)
    names = zoo.list_models(a.pattern, pretrained=a.pretrained)
    print("\n".join(names) if names else f"no {'weights' if a.pretrained else 'models'} match {a.pattern!r}")
    return 0


def _info(argv: Sequence[str]) -> int:
    import zoo

    p = argparse.ArgumentParser(prog="sharezoo info", description="Print a model card.")
    p.add_argument("name")
    a = p.parse_args(argv)
    print(zoo.model_card(a.name))
    return 0


def _download(argv: Sequence[str]) -> int:
    import zoo
    from zoo._pretrained import resolve_pretrained_file
    from zoo._registry import get_pretrained_tags, split_model_name_tag

    p = argparse.ArgumentParser(prog="sharezoo download", description="Fetch and verify a weight into the cache.")
    p.add_argument("name", help="arch.tag (or arch for its default weight)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $SHAREZOO_CACHE or ~/.cache/sharezoo)")
    a = p.parse_args(argv)
    arch, tag = split_model_name_tag(a.name)
    cfg = zoo.get_pretrained_cfg(a.name)
    tag = tag or get_pretrained_tags(arch)[0]
    path = resolve_pretrained_file(f"{arch}.{tag}", cfg, a.cache_dir)
    print(f"{arch}.{tag}: {path} (sha256 verified)")
    return 0


def _export(argv: Sequence[str]) -> int:
    import zoo

    p = argparse.ArgumentParser(prog="sharezoo export",
                                description="Export a Lightning checkpoint's network as model.safetensors + config.json.")
    p.add_argument("checkpoint", help="a .ckpt written by `sharezoo fit`")
    p.add_argument("out_dir")
    a = p.parse_args(argv)
    import torch

    ckpt = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters", {})
    if "model" not in hp:
        raise SystemExit(f"{a.checkpoint}: no 'model' hyperparameter; not a sharezoo task checkpoint")
    model = zoo.create_model(hp["model"], **(hp.get("model_kwargs") or {}))
    sd = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    model.load_state_dict(sd, strict=True)
    print(f"wrote {zoo.save_pretrained(model, a.out_dir)}; load with zoo.create_model('local-dir:{a.out_dir}')")
    return 0


def _bench(argv: Sequence[str]) -> int:
    from tasks.bench import main as bench_main

    return bench_main(argv)


EXTRA: dict[str, Callable[[Sequence[str]], int]] = {
    "list-models": _list_models,
    "info": _info,
    "download": _download,
    "export": _export,
    "bench": _bench,
}


def main(args: Sequence[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA:
        try:
            return EXTRA[argv[0]](argv[1:])
        except (ValueError, RuntimeError) as e:  # a clear one-line error, not a traceback
            print(f"sharezoo {argv[0]}: error: {e}", file=sys.stderr)
            return 2
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
    lightning_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
