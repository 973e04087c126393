"""The ``sharezoo`` command: LightningCLI (fit | validate | test | predict) plus the zoo's own subcommands.

A user error (a missing dataset or file, an unknown model, a bad config value, a GPU config without a GPU) prints
its message and exits with status 2; ``sharezoo --debug ...`` or ``SHAREZOO_DEBUG=1`` shows the traceback.
"""
from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
from collections.abc import Callable, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

#: every subcommand and its one line in ``sharezoo --help``
COMMANDS = {
    "fit": "train a model from a config: sharezoo fit --config configs/<family>/<file>.yaml",
    "validate": "run the validation loop of a config (and --ckpt_path)",
    "test": "evaluate a checkpoint on the test split: sharezoo test --config ... --ckpt_path ...",
    "predict": "run the predict loop of a config (and --ckpt_path)",
    "list-models": "list registered models, or their weights with --pretrained",
    "info": "print a model's card (parameters, paper, weights, deviations)",
    "download": "fetch a weight into the cache and verify its sha256",
    "export": "write a checkpoint's network as model.safetensors + config.json",
    "bench": "measure a model's training / inference speed (append to benchmarks/results)",
    "demo": "list the demos, or run one: sharezoo demo fusionreid",
    "rag": "CMRAG page retrieval: sharezoo rag index PATH --out INDEX; sharezoo rag query INDEX 'question'",
    "generate": "UniPic: prompt -> PNG, or --image + instruction -> PNG (sharezoo generate --help)",
    "ask": "NEO image question answering: sharezoo ask --ckpt last.ckpt --image a.png --question '...'",
}
LIGHTNING = ("fit", "validate", "test", "predict")
USAGE = "usage: sharezoo [--debug] <command> [options]     sharezoo <command> --help"


def help_text() -> str:
    width = max(map(len, COMMANDS))
    lines = [USAGE, "", "commands:"]
    lines += [f"  {name:<{width}}  {line}" for name, line in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  this list",
              "  --debug     show the traceback of a user error (or set SHAREZOO_DEBUG=1)"]
    return "\n".join(lines)


def _parser(name: str, **kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"sharezoo {name}", description=COMMANDS[name], allow_abbrev=False, **kwargs)


def _list_models(argv: Sequence[str]) -> int:
    import zoo

    p = _parser("list-models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'fusionreid*'")
    p.add_argument("--pretrained", action="store_true", help="list weights (name.tag) instead of architectures")
    a = p.parse_args(argv)
    names = zoo.list_models(a.pattern, pretrained=a.pretrained)
    print("\n".join(names) if names else f"no {'weights' if a.pretrained else 'models'} match {a.pattern!r}")
    return 0


def _info(argv: Sequence[str]) -> int:
    import zoo

    p = _parser("info")
    p.add_argument("name", help="a registered model (arch or arch.tag)")
    a = p.parse_args(argv)
    print(zoo.model_card(a.name))
    return 0


def _download(argv: Sequence[str]) -> int:
    import zoo

    p = _parser("download")
    p.add_argument("name", help="arch.tag (or arch for its default weight)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $SHAREZOO_CACHE or ~/.cache/sharezoo)")
    a = p.parse_args(argv)
    cfg = zoo.get_pretrained_cfg(a.name)  # raises for an unknown model or one without weights
    arch = a.name.partition(".")[0]
    name = a.name if "." in a.name else next(n for n in zoo.list_pretrained(f"{arch}.*")
                                             if zoo.get_pretrained_cfg(n) is cfg)
    path = zoo.resolve_pretrained_file(name, cfg, a.cache_dir)
    print(f"{name}: {path} (sha256 verified)")
    return 0


def _export(argv: Sequence[str]) -> int:
    import zoo

    p = _parser("export")
    p.add_argument("checkpoint", help="a .ckpt written by `sharezoo fit`")
    p.add_argument("out_dir", help="folder for model.safetensors + config.json")
    a = p.parse_args(argv)
    import torch

    from tasks._errors import ConfigError

    if not os.path.isfile(a.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {a.checkpoint}")
    ckpt = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters", {})
    if "model" not in hp:
        raise ConfigError(f"{a.checkpoint}: no 'model' hyperparameter; not a sharezoo task checkpoint")
    del ckpt
    # the same rule as zoo.create_model(checkpoint_path=...): a family's reader picks what it loads (PPGFlowECG's
    # stage-2 checkpoint: the EMA flow)
    model = zoo.create_model(hp["model"], checkpoint_path=a.checkpoint, **(hp.get("model_kwargs") or {}))
    print(f"wrote {zoo.save_pretrained(model, a.out_dir)}; load with zoo.create_model('local-dir:{a.out_dir}')")
    return 0


def _bench(argv: Sequence[str]) -> int:
    from tasks.bench import main as bench_main

    return bench_main(list(argv))


def _rag(argv: Sequence[str]) -> int:
    from tasks.rag_cli import main as rag_main

    return rag_main(list(argv))


def _generate(argv: Sequence[str]) -> int:
    from tasks.unipic_generate import main as generate_main

    rc = generate_main(list(argv))
    return int(rc or 0)


def _ask(argv: Sequence[str]) -> int:
    from tasks.neo_chat import main as ask_main

    ask_main(list(argv))
    return 0


def _demo(argv: Sequence[str]) -> int:
    from tasks.demos import list_demos

    demos = list_demos()
    width = max(map(len, demos), default=0)
    listing = "\n".join(f"  {name:<{width}}  {d.summary}" for name, d in demos.items())
    p = _parser("demo", epilog=f"demos:\n{listing}", formatter_class=argparse.RawDescriptionHelpFormatter,
                usage="sharezoo demo [-h] [--list] [NAME [options of the demo]]")
    p.add_argument("name", nargs="?", help="the demo to run; its options follow it (sharezoo demo NAME --help)")
    p.add_argument("--list", action="store_true", help="list the demos (also: no NAME)")
    a = p.parse_args(list(argv[:1]))  # the options after NAME belong to the demo
    if a.list or not a.name:
        print(f"{p.format_usage()}\ndemos:\n{listing}")
        return 0
    if a.name not in demos:
        from tasks._errors import ConfigError

        close = difflib.get_close_matches(a.name, list(demos), n=3, cutoff=0.5)
        raise ConfigError(f"no demo {a.name!r}." + (f" Did you mean: {', '.join(close)}?" if close else "")
                          + f" `sharezoo demo` lists the {len(demos)} demos.")
    return demos[a.name].run(list(argv[1:]))


EXTRA: dict[str, Callable[[Sequence[str]], int]] = {
    "list-models": _list_models,
    "info": _info,
    "download": _download,
    "export": _export,
    "bench": _bench,
    "demo": _demo,
    "rag": _rag,
    "generate": _generate,
    "ask": _ask,
}


def _run(command: str, argv: list[str]) -> int:
    if command in EXTRA:
        return EXTRA[command](argv)
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from tasks._lightning_cli import lightning_cli

    try:
        lightning_cli([command, *argv])
    except SIGTERMException:  # Lightning's SystemExit with status 0; a pre-empted run is not a success
        print(f"sharezoo {command}: stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    return 0


def _hint(e: BaseException) -> str:
    """An extra line for errors whose fix is not in their message."""
    text = str(e)
    if "accelerator" in text.lower() or "gpu" in text.lower():
        import torch

        if not torch.cuda.is_available():
            return ("\nno CUDA GPU is visible here: run on the CPU with --trainer.accelerator cpu "
                    "--trainer.precision 32-true (or a CPU config, e.g. configs/<family>/demo.yaml)")
    return ""


def main(args: Sequence[str] | None = None) -> int:
    """Run ``sharezoo`` with ``args`` (default ``sys.argv[1:]``); returns the exit status of a run. An error exits
    (``SystemExit``; status 2 for a usage or user error) as argparse does, also when called in process."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = os.environ.get("SHAREZOO_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        if not argv:
            raise SystemExit(2)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        print(f"sharezoo: error: unknown command {command!r}." + (f" Did you mean: {close[0]}?" if close else "")
              + f"\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    from tasks._errors import is_user_error

    set_jsonargparse_debug = debug and "JSONARGPARSE_DEBUG" not in os.environ
    if set_jsonargparse_debug:  # jsonargparse then raises (with the traceback) instead of printing a parse error
        os.environ["JSONARGPARSE_DEBUG"] = "true"
    try:
        return _run(command, rest)
    except Exception as e:
        if debug or not is_user_error(e):
            raise
        cause = e.__cause__ if e.__cause__ is not None else e
        print(f"sharezoo {command}: error: {e}{_hint(e)}\n({type(cause).__name__}; add --debug or set "
              f"SHAREZOO_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if set_jsonargparse_debug:
            os.environ.pop("JSONARGPARSE_DEBUG", None)


if __name__ == "__main__":
    sys.exit(main())
