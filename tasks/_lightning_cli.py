"""The LightningCLI behind ``sharezoo fit|validate|test|predict`` (below ``tasks.cli``, so demos can run it too).

On top of ``LightningCLI(subclass_mode_model=True, subclass_mode_data=True)``:

- options are never abbreviated (``--trainer.max_epoch`` is an error naming ``--trainer.max_epochs``);
- ``args=`` is the command line (no warning about ``sys.argv``);
- a run without ``trainer.default_root_dir`` writes under ``runs/<config folder>/<config stem>`` (or
  ``runs/<model>`` without a config), not the current folder;
- the rich progress bar shows the real total (epochs, or steps when ``max_steps`` bounds the run);
- a run ends with a short summary: final metrics, best/last checkpoint, the saved ``config.yaml``.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from jsonargparse import Namespace  # noqa: E402
from pytorch_lightning.callbacks import ProgressBar  # noqa: E402
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback  # noqa: E402

from tasks._errors import building  # noqa: E402

RUNS = "runs"


def default_root_dir(config_files: Sequence[Any], model: str | None) -> str:
    """``runs/<folder>/<stem>`` of the last ``--config`` file (the most specific one), else ``runs/<model>``."""
    if config_files:
        path = Path(str(config_files[-1]))
        return str(Path(RUNS, path.parent.name, path.stem)) if path.parent.name else str(Path(RUNS, path.stem))
    return str(Path(RUNS, model or "run"))


def did_you_mean(message: str, options: Sequence[str]) -> str:
    """`` Did you mean --x?`` for each ``--option`` named in a parse error that is close to a valid one."""
    hints = []
    named = re.findall(r"--[\w.\-]+", message) + [f"--{k}" for k in re.findall(r"option '([\w.\-]+)'", message)]
    for token in named:
        if token not in options:
            hints += [f"{token} -> {m}" for m in difflib.get_close_matches(token, options, n=1, cutoff=0.6)]
    return f" Did you mean: {', '.join(hints)}?" if hints else ""


def shorten_class_error(message: str) -> str:
    """jsonargparse's error for a bad init arg of a ``class_path`` (a Union of every subtype tried) cut to the one
    line that matters, with the nearest init arg: ``model (tasks.reid.ReIDTask): Option 'lrr' is not accepted. Did
    you mean: lr?``. Any other message is returned unchanged."""
    key = re.match(r'Parser key "([\w.]+)":', message)
    lines = message.splitlines()
    at = next((i for i, line in enumerate(lines) if "Problem with given class_path '" in line), None)
    if not key or at is None:
        return message
    class_path = lines[at].split("'")[1]
    indent = len(lines[at]) - len(lines[at].lstrip())
    body = []
    for line in lines[at + 1:]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line.strip())
    reason = " ".join(body)
    out = f"{key.group(1)} ({class_path}): {reason}"
    bad = re.search(r"Option '(\w+)' is not accepted", reason)
    if bad:
        import importlib
        import inspect

        try:
            mod, _, name = class_path.rpartition(".")
            params = list(inspect.signature(getattr(importlib.import_module(mod), name)).parameters)
        except (ImportError, AttributeError, ValueError, TypeError):
            params = []
        close = difflib.get_close_matches(bad.group(1), params, n=3, cutoff=0.6)
        out += f". Did you mean: {', '.join(close)}?" if close else f". Accepted: {', '.join(params)}"
    return out


#: ``--ckpt_path`` value: resume from the last checkpoint when there is one, else train from scratch
LAST_IF_ANY = "last-if-any"


class ZooArgumentParser(LightningArgumentParser):
    """A parse error prints one message (with the nearest valid option) instead of the whole usage; with
    ``JSONARGPARSE_DEBUG`` set (``sharezoo --debug``) it raises as jsonargparse does."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG", "").lower() == "true":
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        prog = parser.prog.replace(" [options]", "")
        message = shorten_class_error(message)
        hint = did_you_mean(message, options)
        if hint and not message.rstrip().endswith((".", "?", ":")):
            message = message.rstrip() + "."
        sys.stderr.write(f"{prog}: error: {message}{hint}\n"
                         f"(`{prog} --help` lists the options)\n")
        sys.exit(2)


class ZooCLI(LightningCLI):
    """``LightningCLI`` with the sharezoo defaults (see the module docstring)."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # LightningCLI warns when both args and sys.argv are given; for `sharezoo`, args *is* the command line
        self._t0 = time.perf_counter()
        self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.get("trainer") is not None and cfg.trainer.get("default_root_dir") is None:
            cfg.trainer.default_root_dir = default_root_dir(cfg.get("config") or [], _model_name(cfg.get("model")))
        _link_preprocessing(cfg)

    def instantiate_classes(self) -> None:
        with building(f"the {self.subcommand or 'run'} from the command line and config"):
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        callbacks = list(trainer_cfg.get("callbacks") or [])
        wants_bar = trainer_cfg.get("enable_progress_bar") is not False
        from pytorch_lightning.callbacks import ModelCheckpoint

        from tasks._cli_callbacks import EpochEndLastCheckpoint, ExactResume, SigtermCheckpoint, ZooProgressBar

        extra = [cb() for cb in (ExactResume, SigtermCheckpoint, EpochEndLastCheckpoint)
                 if not any(isinstance(c, cb) for c in callbacks)]
        if trainer_cfg.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint)
                                                                            for c in callbacks):
            extra.append(ModelCheckpoint(save_last=True))  # Lightning's default one + last.ckpt at every epoch end
        if wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks) and _rich_available():
            extra.append(ZooProgressBar())
        kwargs["callbacks"] = [*callbacks, *extra]
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """Lightning applies a checkpoint's hyperparameters to the config, task class included; a checkpoint of
        another task than the config's is an error naming both (instead of running the wrong task on this data)."""
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and Path(ckpt_path).is_file():
            check_checkpoint_task(ckpt_path, self.config[sub].get("model"), sub)
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        """``--ckpt_path last`` with no last checkpoint is an error (exit 2); ``last-if-any`` resumes or starts fresh."""
        cfg = self.config_init[self.subcommand]
        wanted = cfg.get("ckpt_path")
        if wanted not in ("last", LAST_IF_ANY):
            return
        from pytorch_lightning.callbacks import ModelCheckpoint

        found = set()
        for cb in self.trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                found |= cb._find_last_checkpoints(self.trainer)  # the folders Lightning itself searches
        if found:
            cfg["ckpt_path"] = "last"
        elif wanted == LAST_IF_ANY:
            cfg["ckpt_path"] = None
        else:
            where = ", ".join(str(cb.dirpath or Path(self.trainer.default_root_dir) / "checkpoints")
                              for cb in self.trainer.checkpoint_callbacks) or "(no ModelCheckpoint callback)"
            sys.stderr.write(f"sharezoo fit: error: --ckpt_path last, but there is no last checkpoint under {where}. "
                             f"Nothing was trained. To resume when there is one and start fresh otherwise, pass "
                             f"--ckpt_path {LAST_IF_ANY}.\n")
            sys.exit(2)

    def after_fit(self) -> None:
        print_summary(self.trainer, "fit", time.perf_counter() - self._t0)

    def after_validate(self) -> None:
        print_summary(self.trainer, "validate", time.perf_counter() - self._t0)

    def after_test(self) -> None:
        print_summary(self.trainer, "test", time.perf_counter() - self._t0)


def check_checkpoint_task(ckpt_path: str | os.PathLike, model_cfg: Any, subcommand: str = "test") -> None:
    """Exit 2 when ``ckpt_path`` was written by another task class (or another zoo model family) than the config's
    ``model``: ``sharezoo test --config configs/pepsi/demo.yaml --ckpt_path <a PPGFlowECG run>.ckpt``."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable files are reported by Lightning's own loading
        return
    hp = ckpt.get("hyper_parameters") or {}
    theirs_cls, ours_cls = hp.get("_class_path"), model_cfg.get("class_path") if hasattr(model_cfg, "get") else None
    theirs_model = hp.get("model") if isinstance(hp.get("model"), str) else None
    ours_model = (model_cfg.get("init_args") or {}).get("model") if hasattr(model_cfg, "get") else None
    problem = None
    if theirs_cls and ours_cls and theirs_cls != ours_cls:
        problem = f"it was written by {theirs_cls}, the config's model is {ours_cls}"
    elif isinstance(theirs_model, str) and isinstance(ours_model, str) and _family(theirs_model) != _family(ours_model):
        problem = f"it holds a {theirs_model!r} network, the config's model is {ours_model!r}"
    if problem:
        sys.stderr.write(f"sharezoo {subcommand}: error: --ckpt_path {ckpt_path} does not fit this config: {problem}. "
                         f"Pass the config the checkpoint was trained with (its run folder has config.yaml).\n")
        sys.exit(2)


def _family(model: str) -> str:
    """The zoo module (family) a model name belongs to, or the name itself for ``local-dir:``/unknown names."""
    import zoo

    try:
        return zoo.model_module(model.split(".")[0])
    except (ValueError, AttributeError):
        return model


def _link_preprocessing(cfg: Any) -> None:
    """Preprocessing bound to the weights: a datamodule that takes ``preprocessing_model`` and leaves it out gets the
    task's zoo model, so its default transforms follow ``zoo.resolve_data_config`` of that model."""
    import zoo

    data, model = cfg.get("data"), cfg.get("model")
    init = data.get("init_args") if hasattr(data, "get") else None
    if init is None or "preprocessing_model" not in init or init.get("preprocessing_model") is not None:
        return
    name = (model.get("init_args") or {}).get("model") if hasattr(model, "get") else None
    if isinstance(name, str) and zoo.is_model(name.split(".")[0]):
        init["preprocessing_model"] = name


def _model_name(model: Any) -> str | None:
    """The zoo model a task config names (``init_args.model``), else the task class in lower case."""
    if not hasattr(model, "get"):
        return None
    name = (model.get("init_args") or {}).get("model")
    return name if isinstance(name, str) else str(model.get("class_path", "")).rsplit(".", 1)[-1].lower() or None


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v)
    return float(v) if isinstance(v, (int, float)) else None


def run_summary(trainer: pl.Trainer, log_dir: str | None = None) -> dict[str, Any]:
    """The final scalar metrics, the best/last checkpoint and the saved config of a finished run.

    ``trainer.log_dir`` is a collective under DDP (rank 0 broadcasts it): call it on every rank and pass it in when
    only rank 0 summarises."""
    metrics = {k: s for k, v in sorted(trainer.callback_metrics.items()) if (s := _scalar(v)) is not None}
    log_dir = trainer.log_dir if log_dir is None else log_dir
    out: dict[str, Any] = {"metrics": metrics, "best_checkpoint": None, "last_checkpoint": None, "config": None,
                           "log_dir": log_dir}
    ckpt = trainer.checkpoint_callback
    if ckpt is not None:
        out["best_checkpoint"] = getattr(ckpt, "best_model_path", "") or None
        out["best_score"] = _scalar(getattr(ckpt, "best_model_score", None))
        out["monitor"] = getattr(ckpt, "monitor", None)
        out["last_checkpoint"] = getattr(ckpt, "last_model_path", "") or None
    for cb in trainer.callbacks:
        if isinstance(cb, SaveConfigCallback) and log_dir:
            path = Path(log_dir, cb.config_filename)
            out["config"] = str(path) if path.is_file() else None
    return out


def print_summary(trainer: pl.Trainer, stage: str, seconds: float) -> None:
    """Print :func:`run_summary` (global rank 0 only; every rank calls this, for the collective behind log_dir)."""
    log_dir = trainer.log_dir  # a broadcast under DDP: every rank must take part, or rank 0 waits for ever
    if not trainer.is_global_zero:
        return
    s = run_summary(trainer, log_dir)
    state = "interrupted" if trainer.interrupted else "done"
    lines = [f"sharezoo {stage}: {state} in {seconds:.0f} s "
             f"(epoch {trainer.current_epoch}, step {trainer.global_step})"]
    if s["metrics"]:
        text = "  ".join(f"{k}={v:.4g}" for k, v in s["metrics"].items())
        lines += textwrap.wrap(text, 110, initial_indent="final metrics: ", subsequent_indent="  ",
                               break_on_hyphens=False, break_long_words=False)
    if stage == "fit":
        if s["best_checkpoint"] and s["best_checkpoint"] != s["last_checkpoint"]:
            score = f" ({s['monitor']}={s['best_score']:.4g})" if s.get("monitor") and s.get("best_score") is not None \
                else ""
            lines.append(f"best checkpoint: {s['best_checkpoint']}{score}")
        if s["last_checkpoint"]:
            lines.append(f"last checkpoint: {s['last_checkpoint']}")
        if not (s["best_checkpoint"] or s["last_checkpoint"]):
            lines.append("checkpoint: none written (checkpointing is off or the run was a fast_dev_run)")
    if s["config"]:
        lines.append(f"config: {s['config']}")
    if s["log_dir"]:
        lines.append(f"logs: {s['log_dir']}")
    print("\n".join(lines), file=sys.stdout, flush=True)


def lightning_cli(args: Sequence[str]) -> ZooCLI:
    """Run ``sharezoo <fit|validate|test|predict> ...`` in process; returns the CLI (its ``trainer``, ``model``,
    ``datamodule``) for callers such as the demos."""
    return ZooCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_class=ZooArgumentParser,
        parser_kwargs={"prog": "sharezoo"},
        args=list(args),
    )
