"""The ``sharezoo`` command as a newcomer meets it: help, user errors, no abbreviations, run folder, run summary,
progress-bar header, demos; and end to end (fit, test, export) in a subprocess."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tasks.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "fusionreid" / "demo.yaml"
EVERY_COMMAND = ("fit", "validate", "test", "predict", "list-models", "info", "download", "export", "bench", "demo")


def sharezoo(*args: str, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``sharezoo ARGS`` in a subprocess; the repository root is prepended to an inherited PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tasks.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def exit_code(args: list[str]) -> int:
    """``main(args)`` in process: its exit status (a usage or user error exits with SystemExit)."""
    try:
        return main(args)
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def reid_root(tmp_path_factory) -> str:
    """A folder for the demo config's synthetic ReID data (written once, on first use)."""
    return str(tmp_path_factory.mktemp("reid") / "data")


# ------------------------------------------------------------------------------------------------------ help
def test_help_lists_every_subcommand(capsys):
    assert set(EVERY_COMMAND) <= set(COMMANDS)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    for name in EVERY_COMMAND:
        assert name in lines and len(lines[name].split()) > 2, f"{name} has no line in sharezoo --help"
    assert exit_code([]) == 2 and "commands:" in capsys.readouterr().out


@pytest.mark.parametrize("command", EVERY_COMMAND)
def test_every_subcommand_has_help(command, capsys):
    assert exit_code([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage:" in out.lower() and "--help" in out


def test_unknown_command_suggests_the_nearest(capsys):
    assert exit_code(["fitt"]) == 2
    assert "Did you mean: fit?" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ user errors
def test_missing_dataset_is_a_message_not_a_traceback(tmp_path, capsys):
    args = ["fit", "--config", str(DEMO), "--data.init_args.root", str(tmp_path / "nope"),
            "--data.init_args.synthetic_if_missing", "false", "--trainer.fast_dev_run", "true"]
    assert exit_code(args) == 2
    err = capsys.readouterr().err
    assert "Expected layout" in err and "--debug" in err and "Traceback" not in err
    from datamodules._layout import DatasetLayoutError

    with pytest.raises(DatasetLayoutError):  # --debug: the exception itself, so Python prints the traceback
        main(["--debug", *args])


def test_sharezoo_debug_env_shows_the_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("SHAREZOO_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")])


def test_missing_checkpoint_file(tmp_path, capsys):
    assert exit_code(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "missing.ckpt" in err


def test_unknown_model_in_a_config(reid_root, capsys):
    args = ["fit", "--config", str(DEMO), "--model.init_args.model", "fusionreid_nope",
            "--data.init_args.root", reid_root, "--trainer.fast_dev_run", "true"]
    assert exit_code(args) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'fusionreid_nope'" in err and "Did you mean" in err and "Traceback" not in err


@pytest.mark.parametrize("bad,expected", [
    (["--model.init_args.lrr", "0.1"], "Did you mean: lr?"),  # a config key of the task
    (["--trainer.max_epoch", "2"], "--trainer.max_epochs"),  # no silent abbreviation: an error naming the option
    (["--trainer.max_epochs", "two"], "trainer.max_epochs"),
])
def test_bad_config_key_or_value(bad, expected, capsys):
    assert exit_code(["fit", "--config", str(DEMO), *bad]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.splitlines()) < 10, err


def test_bad_key_in_a_config_file(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("trainer:\n  max_epoch: 2\n")
    assert exit_code(["fit", "--config", str(DEMO), "--config", str(tmp_path / "mine.yaml")]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_epoch" in err and "--trainer.max_epochs" in err and "Traceback" not in err


def test_gpu_config_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert exit_code(["fit", "--config", str(DEMO), "--trainer.accelerator", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "--trainer.accelerator cpu" in err and "Traceback" not in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user errors are shortened: any other exception reaches the caller (and Python prints it)."""
    import tasks.cli

    def boom(argv):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(tasks.cli.EXTRA, "info", boom)
    with pytest.raises(ZeroDivisionError):
        main(["info", "x"])


def test_user_error_subprocess_exit_status(tmp_path):
    r = sharezoo("fit", "--config", str(DEMO), "--model.init_args.model=fusionreid_nope",
                 "--data.init_args.root", str(tmp_path / "data"), "--trainer.fast_dev_run", "true", cwd=tmp_path)
    assert r.returncode == 2 and "Unknown model 'fusionreid_nope'" in r.stderr
    assert "Traceback" not in r.stderr and "intended to run from within Python" not in r.stderr
    r = sharezoo("--debug", "info", "fusionreid_nope", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" in r.stderr


# ------------------------------------------------------------------------------------------- runs and summary
def test_no_args_warning_on_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sharezoo", "fit", "--config", str(DEMO), "--print_config"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            main()
    assert not [w for w in caught if "intended to run from within Python" in str(w.message)]
    assert "class_path" in capsys.readouterr().out


def test_fit_writes_under_runs_and_ends_with_a_summary(reid_root, tmp_path, monkeypatch, capsys):
    from tasks._cli_callbacks import ZooProgressBar
    from tasks._lightning_cli import lightning_cli

    monkeypatch.chdir(tmp_path)
    cli = lightning_cli(["fit", "--config", str(DEMO), "--trainer.default_root_dir", "null",  # as if unset
                         "--data.init_args.root", reid_root, "--trainer.max_epochs", "-1", "--trainer.max_steps", "2",
                         "--trainer.logger", "false"])
    run = Path("runs") / "fusionreid" / "demo"
    assert Path(cli.trainer.default_root_dir) == run
    assert (tmp_path / run / "config.yaml").is_file() and (tmp_path / run / "checkpoints" / "last.ckpt").is_file()
    assert isinstance(cli.trainer.progress_bar_callback, ZooProgressBar)
    out = capsys.readouterr().out
    assert "sharezoo fit: done" in out and "final metrics: " in out and "train/loss=" in out
    assert f"last checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in out and f"config: {run / 'config.yaml'}" in out


def test_default_root_dir_rule():
    from tasks._lightning_cli import default_root_dir

    assert default_root_dir(["configs/fusionreid/recipe.yaml", "configs/fusionreid/market1501.yaml"], "m") == \
        os.path.join("runs", "fusionreid", "market1501")
    assert default_root_dir([], "fusionreid_tiny") == os.path.join("runs", "fusionreid_tiny")
    from jsonargparse import Namespace

    from tasks._lightning_cli import _model_name

    assert _model_name(Namespace(class_path="tasks.reid.ReIDTask", init_args=Namespace(model="fusionreid_tiny"))) \
        == "fusionreid_tiny"
    assert _model_name(Namespace(class_path="tasks.llm.grpo.GRPOTask", init_args=Namespace(lr=1.0))) == "grpotask"


def test_progress_bar_header_shows_a_real_total():
    from tasks._cli_callbacks import train_description

    by_steps = SimpleNamespace(current_epoch=37, max_epochs=-1, max_steps=600, global_step=120)
    assert train_description(by_steps) == "Epoch 37 · step 120/600"
    by_epochs = SimpleNamespace(current_epoch=3, max_epochs=30, max_steps=-1, global_step=120)
    assert train_description(by_epochs) == "Epoch 3/29"


# ------------------------------------------------------------------------------------------------------ demos
def test_demo_lists_the_family_and_config_demos(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    names = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert {"fusionreid", "ppgflowecg"} <= names
    for cfg in ROOT.glob("configs/*/demo.yaml"):
        assert cfg.parent.name in names
    assert "ppgflowecg/demo_stage2" not in names  # run by the ppgflowecg demo, not listed alone
    assert main(["demo", "--list"]) == 0 and "fusionreid" in capsys.readouterr().out
    assert exit_code(["demo", "fusionreidd"]) == 2 and "Did you mean: fusionreid?" in capsys.readouterr().err


def test_a_new_config_is_a_new_demo(tmp_path):
    from tasks.demos import list_demos

    (tmp_path / "newfam").mkdir()
    (tmp_path / "newfam" / "demo.yaml").write_text("# A new family on bundled data. Second sentence.\nmodel: {}\n")
    (tmp_path / "newfam" / "demo_big.yaml").write_text("model: {}\n")
    demos = list_demos(tmp_path)
    assert demos["newfam"].summary.startswith("A new family on bundled data [")
    assert "newfam/demo_big" in demos and "fusionreid" in demos


def test_demos_and_tasks_do_not_import_the_cli():
    """Layering: tasks.cli is the top; nothing else in tasks/ imports it."""
    for path in (ROOT / "tasks").rglob("*.py"):
        if path.name == "cli.py" and path.parent.name == "tasks":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert "tasks.cli" not in names, f"{path} imports tasks.cli"


def test_export_strips_the_task_prefix(tmp_path, capsys):
    """``sharezoo export`` of a task checkpoint (``net.*`` keys beside other task state) equals the network."""
    import zoo

    net = zoo.create_model("fusionreid_tiny").eval()
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state["criterion.center"] = torch.zeros(3)  # task state that is not the network's
    torch.save({"hyper_parameters": {"model": "fusionreid_tiny", "model_kwargs": {}}, "state_dict": state},
               tmp_path / "task.ckpt")
    assert main(["export", str(tmp_path / "task.ckpt"), str(tmp_path / "out")]) == 0
    assert "local-dir:" in capsys.readouterr().out
    back = zoo.create_model(f"local-dir:{tmp_path / 'out'}")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in net.state_dict().items())


# ------------------------------------------------------------------------------------------------ end to end
def test_list_models_info_and_errors(tmp_path, capsys, monkeypatch):
    """In process (each subprocess costs the ~8-s import of the zoo; the exit status of a real process is checked by
    test_user_error_subprocess_exit_status)."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert exit_code(["list-models", "fusionreid*"]) == 0
    assert "fusionreid_vitb16_r50" in capsys.readouterr().out.split()
    assert exit_code(["info", "fusionreid_tiny"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "deviations from the paper" in out
    assert exit_code(["info", "fusionreid_vitb16_r5"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean: fusionreid_vitb16_r50" in err and "Traceback" not in err
    assert exit_code(["download", "fusionreid_tiny"]) == 2
    assert "no pretrained weights" in capsys.readouterr().err


def test_fit_test_export_fusionreid_tiny(tmp_path):
    common = ["--config", str(DEMO), "--data.init_args.root", str(tmp_path / "data"),
              "--trainer.default_root_dir", str(tmp_path / "run")]
    r = sharezoo("fit", *common, "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
                 "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "intended to run from within Python" not in r.stderr
    ckpts = sorted((tmp_path / "run").rglob("*.ckpt"))
    assert ckpts, "fit leaves a checkpoint"
    assert sorted((tmp_path / "run").rglob("config.yaml")), "fit saves the run's config"
    ckpt = str(next(c for c in ckpts if c.name == "last.ckpt"))
    assert f"last checkpoint: {ckpt}" in r.stdout
    r = sharezoo("test", *common, "--ckpt_path", ckpt, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test/mAP" in r.stdout and "test/rank1" in r.stdout
    r = sharezoo("export", ckpt, str(tmp_path / "exported"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    import zoo
    from tasks.reid import ReIDTask

    task = ReIDTask.load_from_checkpoint(ckpt, map_location="cpu")  # no config needed: data links are saved
    net = zoo.create_model(f"local-dir:{tmp_path / 'exported'}").eval()
    x, cams = torch.randn(2, 3, 64, 32), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(net(x, cams), task.net.eval()(x, cams))


def test_datamodule_preprocessing_follows_the_task_model():
    """A datamodule taking ``preprocessing_model`` gets the task's zoo model when the config leaves it out (its
    transforms then follow ``zoo.resolve_data_config``); an explicit value or a non-zoo model is left alone."""
    from jsonargparse import Namespace

    from tasks._lightning_cli import _link_preprocessing

    def cfg(model, pre=None):
        return Namespace(model=Namespace(class_path="tasks.reid.ReIDTask", init_args=Namespace(model=model)),
                         data=Namespace(class_path="datamodules.reid.ReIDDataModule",
                                        init_args=Namespace(root="x", preprocessing_model=pre)))

    c = cfg("fusionreid_tiny")
    _link_preprocessing(c)
    assert c.data.init_args.preprocessing_model == "fusionreid_tiny"
    c = cfg("fusionreid_tiny", pre="fusionreid_vitb16_r50")
    _link_preprocessing(c)
    assert c.data.init_args.preprocessing_model == "fusionreid_vitb16_r50"
    c = cfg("local-dir:exported/")
    _link_preprocessing(c)
    assert c.data.init_args.preprocessing_model is None
