"""Scale-out on CPU: two processes (gloo) train and evaluate through Lightning's DDP strategy.

Checks that DDP fit runs for FusionReID and PPGFlowECG, that a DDP checkpoint loads in one process, and that
ReID evaluation gathered across two ranks (with the distributed sampler's padding) equals one process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datamodules.synthetic import write_reid_dataset

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_reid_worker.py"


def _run(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    # the repository root goes first on an inherited PYTHONPATH (dependencies may live in a folder named there)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PL_DISABLE_FORK": "1", **(env or {})}
    env.pop("LOCAL_RANK", None)
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       check=False)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r


@pytest.fixture(scope="module")
def reid_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reid")
    write_reid_dataset(root, "market1501", num_train_ids=8, num_test_ids=6, train_images_per_id=8, seed=3)
    return root


def test_ddp_fit_then_eval_equals_single_process(reid_data, tmp_path):
    _run([str(WORKER), "fit", str(reid_data), str(tmp_path), "2"], tmp_path)
    fit = json.loads((tmp_path / "fit_2.json").read_text())
    assert fit["world_size"] == 2 and fit["global_step"] > 0
    ckpt = tmp_path / "ddp.ckpt"
    assert ckpt.is_file()
    _run([str(WORKER), "test", str(reid_data), str(tmp_path), "1", str(ckpt)], tmp_path)  # DDP ckpt, one process
    _run([str(WORKER), "test", str(reid_data), str(tmp_path), "2", str(ckpt)], tmp_path)
    one, two = (json.loads((tmp_path / f"test_{n}.json").read_text()) for n in (1, 2))
    assert one["test/valid_queries"] == two["test/valid_queries"] == 6
    for key in ("test/mAP", "test/rank1", "test/rank5", "test/rank10"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def test_ddp_fit_ppgflowecg_tiny_on_real_record(tmp_path):
    cfg = ROOT / "configs" / "ppgflowecg" / "demo.yaml"
    _run(["-m", "tasks.cli", "fit", "--config", str(cfg), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
          "--trainer.strategy", "ddp", "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run")], tmp_path)
    ckpts = sorted(tmp_path.rglob("last.ckpt"))  # the demo config names its checkpoint folder (cwd-relative)
    assert ckpts, "rank 0 wrote a checkpoint"
    import torch

    from tasks.signal import CardioAlignTask

    task = CardioAlignTask.load_from_checkpoint(ckpts[0], map_location="cpu")  # a DDP checkpoint, one process
    saved = torch.load(ckpts[0], map_location="cpu", weights_only=True)["state_dict"]
    for k, v in task.state_dict().items():
        assert torch.equal(v, saved[k]), k


# ------------------------------------------------------------------------------------------------ LLM tasks
MULTI_WORKER = ROOT / "tests" / "ddp_multi_worker.py"
GRPO_RUNS = ("grpo-ddp", "grpo-fsdp", "grpo-fsdp2", "grpo_pg-fsdp")
UNI_RUNS = ("uni-ddp", "uni-fsdp", "uni-fsdp2")
CLI_RUNS = ("dens3r-ddp", "pepsi-ddp")  # the shipped tiny/demo configs through the CLI, 4 steps


@pytest.fixture(scope="module")
def multi_runs(tmp_path_factory):
    """One 2-process launch runs every case in turn (about 60 s on 2 cores, most of it the start-up)."""
    from datamodules.llm_response_selection import write_synthetic_response_selection

    out = tmp_path_factory.mktemp("multi")
    data = write_synthetic_response_selection(out / "rs", num_train=48, num_val=8, num_test=8)
    _run([str(MULTI_WORKER), str(out), str(data), *GRPO_RUNS, *UNI_RUNS, *CLI_RUNS], out,
         env={"SHAREZOO_CACHE": str(out / "cache")})
    return out


def _result(out: Path, run: str) -> dict:
    return json.loads((out / f"{run}.json").read_text())


@pytest.mark.parametrize("run", GRPO_RUNS)
def test_grpo_fit_under_ddp_and_fsdp_with_uneven_generation(multi_runs, run):
    res = _result(multi_runs, run)
    assert res["world_size"] == 2 and res["global_step"] == 4 and res["finite"]
    rank0, rank1 = res["ranks"]
    assert len(rank0["losses"]) == len(rank1["losses"]) == 4  # 2 warm-start steps, then 2 GRPO steps
    assert rank0["draws"] != rank1["draws"], "rollouts sample from a per-rank RNG stream"
    assert rank0["checksum"] == pytest.approx(rank1["checksum"], rel=1e-12)  # the ranks hold the same model
    calls0, calls1 = rank0["nograd_head_calls"], rank1["nograd_head_calls"]
    if run.endswith("-ddp"):
        assert calls0 < calls1  # rank 0 stops decoding at <eos>, rank 1 decodes to the cap: no collective, no hang
    else:
        assert calls0 == calls1  # FSDP: every decode forward gathers shards, so every rank runs to the cap
    assert "val/reward" in res["metrics"]
    if not run.endswith("-ddp"):  # the task's own units: every decoder layer, then the decoder and the LM head
        assert res["units"] == ["Linear", "LlamaDecoderLayer", "LlamaDecoderLayer", "LlamaModel"]


@pytest.mark.parametrize("run", ["uni-fsdp", "uni-fsdp2"])
def test_uni_encoder_fsdp_units_and_synced_metrics(multi_runs, run):
    ddp, fsdp = _result(multi_runs, "uni-ddp"), _result(multi_runs, run)
    assert fsdp["units"] == ["BertEmbeddings", "BertLayer", "BertLayer", "UniEncoder"] and fsdp["finite"]
    for key in ("val/loss", "val/R10@1", "val/R10@5", "val/MRR"):  # sync_dist: the same on every strategy
        assert fsdp["metrics"][key] == pytest.approx(ddp["metrics"][key], abs=1e-5), key


@pytest.mark.parametrize("fragment", ["ddp", "fsdp", "fsdp2"])
@pytest.mark.parametrize("config", ["grpo/toy_arithmetic.yaml", "grpo/toy_arithmetic_prefix_grouper.yaml",
                                    "uni_encoder/synthetic_demo.yaml"])
def test_strategy_fragment_composes_with_llm_configs(config, fragment, capsys):
    """``sharezoo fit --config <llm config> --config configs/_base/<fragment>.yaml --print_config``."""
    import yaml

    from tasks._lightning_cli import lightning_cli

    with pytest.raises(SystemExit) as exit_:
        lightning_cli(["fit", "--config", str(ROOT / "configs" / config),
                       "--config", str(ROOT / "configs" / "_base" / f"{fragment}.yaml"), "--print_config"])
    assert exit_.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    strategy = cfg["trainer"]["strategy"]
    if fragment == "fsdp2":
        assert strategy["class_path"].endswith("ModelParallelStrategy")
        assert strategy["init_args"]["tensor_parallel_size"] == 1
    else:
        assert strategy == fragment
    assert cfg["model"]["init_args"]  # the task's own settings survive the merge


@pytest.mark.parametrize("run", CLI_RUNS)
def test_ddp_fit_dens3r_and_pepsi_configs(multi_runs, run):
    """Dens3R tiny (stage 1) and PEPSI tiny (manual optimisation, two optimisers; the task turns on DDP's
    ``find_unused_parameters`` under plain ``ddp``) train 4 steps under DDP from their shipped configs and validate."""
    res = _result(multi_runs, run)
    assert res["world_size"] == 2 and res["global_step"] == 4 and res["finite"]
    rank0, rank1 = res["ranks"]
    assert rank0["checksum"] == pytest.approx(rank1["checksum"], rel=1e-12)  # the ranks hold the same model
    expected = {"val/loss", "val/depth_abs_rel"} if run.startswith("dens3r") else {"val/psnr", "val/ssim"}
    assert expected <= set(res["metrics"])


@pytest.mark.parametrize("run", GRPO_RUNS + UNI_RUNS + CLI_RUNS)
def test_ddp_and_fsdp_checkpoints_load_in_one_process(multi_runs, run):
    """The full-state-dict checkpoint (rank 0) loads into a one-process task, whose parameters equal the trained
    parameters as the sharding library gathers them (summon_full_params / DTensor.full_tensor)."""
    import torch

    from tasks.geometry import GeometryTask
    from tasks.inpainting import InpaintingTask
    from tasks.llm.grpo import GRPOTask
    from tasks.llm.uni_encoder import UniEncoderTask

    cls = {"uni": UniEncoderTask, "dens3r": GeometryTask, "pepsi": InpaintingTask}.get(run.split("-")[0], GRPOTask)
    ckpt = multi_runs / f"{run}.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not any("_fsdp" in k or "_checkpoint_wrapped" in k for k in saved), "plain parameter names"
    task = cls.load_from_checkpoint(ckpt, map_location="cpu")
    trained = torch.load(multi_runs / f"{run}_params.pt", map_location="cpu")
    params = dict(task.named_parameters())
    assert set(params) == set(trained)
    for k, v in trained.items():
        assert torch.equal(params[k], v), k


@pytest.mark.parametrize("run", ["grpo-fsdp", "grpo-fsdp2", "grpo_pg-fsdp", "uni-fsdp", "uni-fsdp2"])
def test_fsdp_training_equals_ddp(multi_runs, run):
    """Same data, same seeds, gradient clipping active: sharded training gives the DDP parameters."""
    import torch

    ref = torch.load(multi_runs / f"{run.split('-')[0].replace('grpo_pg', 'grpo')}-ddp_params.pt", map_location="cpu")
    got = torch.load(multi_runs / f"{run}_params.pt", map_location="cpu")
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, msg=k)
