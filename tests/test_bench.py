"""The benchmark harness on a tiny model: FLOP counting vs hand-computed, timing, JSON record schema."""
from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn

import zoo
from tasks import bench
from tasks._base import ZooTask
from zoo._registry import _model_entrypoints


class BenchToy(nn.Module):
    def __init__(self, d_in: int = 8, d_out: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x):
        return self.fc(x)


class ToyTask(ZooTask):
    def __init__(self, model: str = "ztest_benchtoy", pretrained: bool = False, model_kwargs: dict | None = None,
                 compile: bool | str = False, lr: float = 0.1) -> None:
        super().__init__(model, pretrained, model_kwargs, compile)
        self.save_hyperparameters()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def example_batch(self, batch_size):
        return torch.randn(batch_size, 8), torch.randn(batch_size, 16)

    def example_inputs(self, batch_size):
        return (torch.randn(batch_size, 8),)


class ToyData(pl.LightningDataModule):
    def __init__(self, n: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self):
        ds = torch.utils.data.TensorDataset(torch.randn(self.n, 8), torch.randn(self.n, 16))
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=True)


@pytest.fixture()
def toy_config(tmp_path, monkeypatch):
    @zoo.register_model
    def ztest_benchtoy(pretrained=False, **kwargs):
        return zoo.build_model(BenchToy, "ztest_benchtoy", pretrained, {}, **kwargs)

    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"class_path": "test_bench.ToyTask", "init_args": {"lr": 0.1}},
                                   "data": {"class_path": "test_bench.ToyData", "init_args": {"batch_size": 8}}}))
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    yield cfg
    _model_entrypoints.pop("ztest_benchtoy", None)


def test_flop_counter_matches_hand_computed_linear():
    fc = nn.Linear(8, 16, bias=False)
    x = torch.randn(4, 8, requires_grad=True)
    assert bench.count_flops(lambda: fc(x)) == 2 * 4 * 8 * 16
    # backward of a matmul = two matmuls of the same size (grad wrt input and wrt weight)
    assert bench.count_flops(lambda: fc(x).sum().backward()) == 3 * 2 * 4 * 8 * 16


def test_time_steps_orders_percentiles():
    r = bench.time_steps(lambda: torch.randn(64, 64) @ torch.randn(64, 64), steps=9, warmup=1,
                         device=torch.device("cpu"))
    assert 0 < r["step_ms_median"] <= r["step_ms_p90"] and r["wall_s"] > 0 and r["peak_mem_gib"] is None


def test_time_steps_reports_the_first_call_apart():
    """The first warm-up call (where compilation happens) is timed on its own, outside the step statistics."""
    import time

    calls = []

    def step():
        calls.append(1)
        time.sleep(0.2 if len(calls) == 1 else 0.001)

    r = bench.time_steps(step, steps=3, warmup=2, device=torch.device("cpu"))
    assert r["first_call_s"] >= 0.2 and r["warmup_s"] >= r["first_call_s"] and r["step_ms_p90"] < 100
    assert bench.time_steps(step, steps=1, warmup=0, device=torch.device("cpu"))["first_call_s"] is None


@pytest.mark.parametrize("task", ["train", "infer"])
def test_bench_record_schema(toy_config, task, capsys):
    assert bench.main(["--config", str(toy_config), "--task", task, "--batch", "4", "--steps", "3", "--warmup", "1",
                       "--device", "cpu", "--precision", "32-true", "--name", "toy"]) == 0
    lines = (bench.RESULTS / "toy.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    for key in ("time", "command", "git_commit", "cpu", "torch", "python", "model", "task", "batch", "precision",
                "compile", "params", "flops_fwd_per_sample", "step_ms_median", "step_ms_p90", "samples_per_s",
                "peak_mem_gib", "mfu", "first_call_s", "warmup_s"):
        assert key in rec, key
    assert rec["model"] == "ztest_benchtoy" and rec["params"] == 8 * 16
    assert rec["flops_fwd_per_sample"] == 2 * 8 * 16  # linear forward per sample (the loss adds no matmul FLOPs)
    if task == "train":
        # weight grad only (the input needs no grad): forward + one backward matmul
        assert rec["flops_fwd_bwd_per_sample"] == 2 * 2 * 8 * 16
    assert rec["command"].startswith("sharezoo bench --config")
    assert rec["mfu"] is None  # no GPU peak on a CPU


def test_cpu_default_precision_is_fp32(toy_config):
    """No --precision: bf16-mixed on a GPU, 32-true on a CPU (bf16 autocast measured slower there)."""
    assert bench.default_precision(torch.device("cuda")) == "bf16-mixed"
    assert bench.default_precision(torch.device("cpu")) == "32-true"
    assert bench.main(["--config", str(toy_config), "--batch", "2", "--steps", "1", "--warmup", "0",
                       "--device", "cpu", "--name", "toy"]) == 0
    assert json.loads((bench.RESULTS / "toy.jsonl").read_text().splitlines()[-1])["precision"] == "32-true"


def test_report_regenerates_table(toy_config, tmp_path, monkeypatch):
    bench.main(["--config", str(toy_config), "--batch", "2", "--steps", "2", "--warmup", "0", "--device", "cpu",
                "--precision", "32-true", "--name", "toy"])
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    table = bench.report()
    assert "| ztest_benchtoy | train | 2 | 32-true |" in table
    assert "<!-- results:start -->" in (tmp_path / "benchmarks" / "README.md").read_text()


def test_fit_loop_mode_times_the_real_trainer(toy_config):
    bench.main(["--config", str(toy_config), "--task", "fit", "--steps", "5", "--warmup", "2", "--device", "cpu",
                "--precision", "32-true", "--name", "toy"])
    rec = json.loads((bench.RESULTS / "toy.jsonl").read_text().splitlines()[-1])
    assert rec["task"] == "fit" and rec["loop_steps"] == 5
    assert rec["loop_samples_per_s"] > 0 and rec["samples_per_s"] == rec["loop_samples_per_s"]


def test_manual_optimisation_task_is_pointed_to_fit_mode(toy_config, tmp_path):
    cfg = tmp_path / "manual.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"class_path": "test_bench.ManualToyTask", "init_args": {}},
                                   "data": {"class_path": "test_bench.ToyData", "init_args": {}}}))
    with pytest.raises(ValueError, match="--task fit"):
        bench.main(["--config", str(cfg), "--batch", "2", "--steps", "1", "--device", "cpu", "--no-save"])


@pytest.mark.parametrize("task", ["train", "infer"])
def test_flop_probes_never_call_the_compiled_network(toy_config, monkeypatch, task):
    """FLOPs are counted on the plain module: the compiled wrapper's first call (its compilation) must not happen
    under FlopCounterMode's dispatch mode."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    modes = []

    class Spy(nn.Module):  # stands in for the torch.compile wrapper
        def __init__(self, net):
            super().__init__()
            self.inner = net

        def forward(self, *args):
            modes.append(_get_current_dispatch_mode())
            return self.inner(*args)

    build = bench.build_task

    def build_spied(*args, **kwargs):
        t = build(*args, **kwargs)
        object.__setattr__(t, "_compiled", Spy(t.net))
        return t

    monkeypatch.setattr(bench, "build_task", build_spied)
    assert bench.main(["--config", str(toy_config), "--task", task, "--batch", "4", "--steps", "2", "--warmup", "1",
                       "--device", "cpu", "--precision", "32-true", "--no-save"]) == 0
    assert modes and all(m is None for m in modes)


def test_manual_task_with_its_own_bench_step(tmp_path, monkeypatch, capsys):
    """A manually optimised task that defines bench_train_step (ReIDTask with cuda_graphs) is timed by it."""
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[1]
    assert bench.main(["--model", "fusionreid_tiny", "--config", str(root / "configs/fusionreid/demo.yaml"),
                       "--task", "train", "--batch", "4", "--steps", "1", "--warmup", "1", "--device", "cpu",
                       "--precision", "32-true", "--task-arg", "cuda_graphs=true", "--no-save"]) == 0
    out = capsys.readouterr().out
    rec = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert rec["flops_fwd_bwd_per_sample"] > rec["flops_fwd_per_sample"] > 0 and rec["samples_per_s"] > 0
    assert rec["cuda_graph_counts"] == {"captures": 0, "train_replays": 0, "infer_replays": 0}  # CPU: eager steps


class ManualToyTask(ToyTask):
    def __init__(self, model: str = "ztest_benchtoy", compile: bool | str = False) -> None:
        super().__init__(model, compile=compile)
        self.automatic_optimization = False


@pytest.mark.parametrize("model,config,task,extra", [
    ("fusionreid_tiny", "configs/fusionreid/demo.yaml", "train", ()),
    ("ppgflowecg_tiny", "configs/ppgflowecg/demo.yaml", "train", ()),
    # stage 2 starts from the stage-1 demo checkpoint, which this empty folder lacks: random stage-1 weights
    ("ppgflowecg_tiny", "configs/ppgflowecg/demo_stage2.yaml", "train", ("--task-arg", "stage1_checkpoint=null")),
    ("dens3r_tiny", "configs/dens3r/demo.yaml", "train", ()),
    ("pepsi_tiny", "configs/pepsi/demo.yaml", "infer", ()),
])
def test_every_family_runs_through_the_harness(model, config, task, extra, tmp_path, monkeypatch):
    """The shipped tiny configs drive `sharezoo bench` on synthetic batches of the real shapes."""
    from pathlib import Path

    monkeypatch.chdir(tmp_path)  # data-linked sizes may write the demo data under ./runs
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    assert bench.main(["--model", model, "--config", str(root / config), "--task", task, "--batch", "2",
                       "--steps", "1", "--warmup", "0", "--device", "cpu", "--precision", "32-true",
                       "--name", "fam", *extra]) == 0
    rec = json.loads((tmp_path / "results" / "fam.jsonl").read_text().splitlines()[-1])
    assert rec["model"] == model and rec["samples_per_s"] > 0 and rec["flops_fwd_per_sample"] > 0
