"""GRPO: Prefix Grouper on vs off gives the same log-probs, loss and every gradient; the task trains end to end."""
import copy

import pytest
import pytorch_lightning as pl
import torch

from datamodules.llm_prompts import PromptDataModule, arithmetic_examples, read_prompt_jsonl, write_prompt_jsonl
from tasks.llm.grpo import GRPOTask
from tasks.llm.methods.grpo import Rollout, completion_logps, group_advantages, grpo_loss
from tasks.llm.rewards import digit_match, exact_match
from zoo.llm import CharTokenizer

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def _rollout(task, g, seed=0, kl=True, off_policy=True):
    gen = torch.Generator().manual_seed(seed)
    v = task.policy.config.vocab_size
    prompts = [torch.randint(4, v, (n,), generator=gen) for n in (5, 2, 8)]
    comps = [[torch.randint(4, v, (int(torch.randint(1, 7, (1,), generator=gen)),), generator=gen)
              for _ in range(g)] for _ in prompts]
    rewards = torch.rand(len(prompts), g, generator=gen)
    ro = Rollout(prompts, comps, rewards, group_advantages(rewards))
    s_max = max(c.numel() for grp in comps for c in grp)
    if off_policy:  # old log-probs away from the current ones, so the clipping is active
        ro.old_logp = -torch.rand(len(prompts) * g, s_max, generator=gen) * 6
    if kl:
        ref = copy.deepcopy(task.policy)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        ro.ref_logp = completion_logps(ref, prompts, comps, prefix_grouper=False)[0]
    return ro


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("g", [1, 3, 4])
def test_prefix_grouper_equals_repeated_prefix(family, g):
    task = GRPOTask(model=family, model_kwargs=dict(TINY, vocab_size=40), kl_coef=0.1, clip_eps=0.2)
    ro = _rollout(task, g)
    results = {}
    for switch in (False, True):
        task.hparams.prefix_grouper = switch
        task.policy.zero_grad()
        logp, valid = task.logps(ro)
        loss, stats = task.policy_loss(ro)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in task.policy.named_parameters()}
        results[switch] = (logp.detach(), valid, loss.detach(), grads, stats)
    (lp0, v0, l0, g0, s0), (lp1, v1, l1, g1, s1) = results[False], results[True]
    assert torch.equal(v0, v1)
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l1, l0, atol=1e-6, rtol=1e-5)
    if g > 1:
        assert s0["clip_frac"] > 0  # the clipped branch is exercised
    assert set(g0) == set(g1) and len(g0) > 0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-6, rtol=1e-4, msg=name)
    if g > 1:
        assert sum(float(x.abs().sum()) for x in g0.values()) > 0


def test_merge_path_equals_split_path_in_grpo():
    """The LSE-merge and FlexAttention paths at model level: loss and every parameter gradient equal the split path
    and no grouping."""
    task = GRPOTask(model="llama", model_kwargs=dict(TINY, vocab_size=40), kl_coef=0.0, prefix_grouper=True)
    ro = _rollout(task, 4, kl=False)
    results = {}
    for grouper, mode in ((False, "split"), (True, "split"), (True, "merge"), (True, "flex")):
        task.hparams.prefix_grouper, task.hparams.prefix_mode = grouper, mode
        task.policy.zero_grad()
        loss = task.policy_loss(ro)[0]
        loss.backward()
        results[(grouper, mode)] = (loss.detach(), {n: p.grad.clone() for n, p in task.policy.named_parameters()})
    ref_loss, ref_grads = results[(False, "split")]
    assert sum(float(g.abs().sum()) for g in ref_grads.values()) > 0
    for key in ((True, "split"), (True, "merge"), (True, "flex")):
        loss, grads = results[key]
        torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
        assert set(grads) == set(ref_grads)
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-4, msg=f"{key} {name}")


def test_group_advantages_and_loss_reference():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    a = group_advantages(r)
    torch.testing.assert_close(a[:4], (r[0] - 0.5) / (r[0].std() + 1e-4))
    assert torch.all(a[4:] == 0)
    assert torch.all(group_advantages(r[:, :1]) == 0)
    # the clipped objective on hand-computed numbers: one token per sequence
    logp = torch.log(torch.tensor([[0.5], [0.5]]))
    old = torch.log(torch.tensor([[0.25], [0.25]]))  # ratio 2
    loss, _ = grpo_loss(logp, torch.ones(2, 1, dtype=torch.bool), torch.tensor([1.0, -1.0]), old, clip_eps=0.2)
    # A=+1: min(2, 1.2) = 1.2; A=-1: min(-2, -1.2) = -2  -> loss = -(1.2 - 2) / 2
    torch.testing.assert_close(loss, torch.tensor(0.4))


def test_rewards_and_tokenizer():
    assert exact_match(["12", " 7", "3"], ["12", "7", "4"]) == [1.0, 1.0, 0.0]
    assert digit_match(["13"], ["12"]) == [0.25]
    tok = CharTokenizer()
    ids = tok.encode("1+2=", bos=True)
    assert ids[0] == tok.bos_id and tok.decode(ids) == "1+2="
    assert tok.decode(torch.cat([tok.encode("34"), torch.tensor([tok.eos_id]), tok.encode("9")])) == "34"


def test_prompt_datamodule_reads_jsonl(tmp_path):
    write_prompt_jsonl(tmp_path / "train.jsonl", arithmetic_examples(3)[:10])
    assert len(read_prompt_jsonl(tmp_path / "train.jsonl")) == 10
    dm = PromptDataModule(data_dir=str(tmp_path), batch_size=4, num_val=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["prompt_ids"]) == 4 and batch["answer_ids"][0][-1] == dm.tokenizer.eos_id
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.jsonl").write_text('{"prompt": "1+1="}\n')
    with pytest.raises(ValueError, match="train.jsonl:1"):
        PromptDataModule(data_dir=str(tmp_path / "bad")).setup("fit")
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        PromptDataModule(data_dir=str(tmp_path / "missing")).prepare_data()


def test_grpo_fit_runs_a_few_steps(tmp_path):
    """KL reference, two passes per rollout (clipping active), validation; the switch-off path runs in the configs."""
    dm = PromptDataModule(batch_size=4, steps_per_epoch=3, max_operand=4, num_val=4, val_batch_size=4)
    task = GRPOTask(model="qwen2", model_kwargs=TINY, group_size=3, max_new_tokens=3, sft_warmup_steps=1,
                    kl_coef=0.05, num_iterations=2, prefix_grouper=True)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         limit_val_batches=1)
    trainer.fit(task, dm)
    assert "train/reward" in trainer.callback_metrics and "val/reward" in trainer.callback_metrics
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = GRPOTask.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    for (n, a), (_, b) in zip(task.policy.state_dict().items(), loaded.policy.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)


def test_chunked_logps_equal_unchunked_with_grads():
    task = GRPOTask(model="llama", model_kwargs=dict(TINY, vocab_size=40))
    ro = _rollout(task, 3, kl=False, off_policy=False)
    out = []
    for chunk in (1 << 28, 40 * 3):  # one chunk vs. one completion row per chunk (checkpointed)
        task.policy.zero_grad()
        logp, valid, _ = completion_logps(task.policy, ro.prompts, ro.completions, True, chunk_elements=chunk)
        (logp * torch.arange(logp.numel()).view_as(logp)).sum().backward()
        out.append((logp.detach(), [p.grad.clone() for p in task.policy.parameters()]))
    torch.testing.assert_close(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_prompt_sampler_draws_like_random_sampler_and_splits_under_ddp():
    """steps_per_epoch survives DDP: Lightning wraps (not replaces) the sampler, and the ranks split its draws."""
    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

    from datamodules.llm_prompts import DrawWithReplacement

    n, num = 10, 70
    ref = torch.utils.data.RandomSampler(range(n), replacement=True, num_samples=num,
                                         generator=torch.Generator().manual_seed(3))
    ours = DrawWithReplacement(n, num, seed=3)
    assert not isinstance(ours, torch.utils.data.RandomSampler)
    for _ in range(2):  # two epochs: new draws, the same as the reference's
        assert list(ours) == list(ref)
    draws = list(DrawWithReplacement(n, num, seed=3))
    ranks = [list(DistributedSamplerWrapper(DrawWithReplacement(n, num, seed=3), num_replicas=2, rank=r,
                                            shuffle=False)) for r in (0, 1)]
    assert [len(r) for r in ranks] == [35, 35]
    assert sorted(ranks[0] + ranks[1]) == sorted(draws)
    dm = PromptDataModule(batch_size=4, steps_per_epoch=3, max_operand=4, num_val=4, val_batch_size=4)
    assert len(dm.train_dataloader()) == 3


def _eager_backend_compile(monkeypatch):
    """``nn.Module.compile`` with dynamo's ``eager`` backend: the tracing (graph breaks, guards, recompiles) without
    inductor's code generation, fast enough for the CPU suite."""
    orig = torch.nn.Module.compile

    def compile_eager(self, *args, **kwargs):
        kwargs.setdefault("backend", "eager")
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eager)


@pytest.mark.parametrize("dynamic", [None, True])
def test_compile_regional_with_flex_traces_without_breaks_or_per_step_recompiles(monkeypatch, dynamic):
    """``compile: regional`` + the FlexAttention prefix path: no graph break, and ragged rollouts of new lengths stop
    recompiling after the first (dynamic) graph; the loss equals the uncompiled task's."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    _eager_backend_compile(monkeypatch)
    torch._dynamo.reset()
    counters.clear()
    kw = dict(model="llama", model_kwargs=dict(TINY, vocab_size=40), prefix_grouper=True, prefix_mode="flex")
    task = GRPOTask(compile="regional", compile_dynamic=dynamic, **kw)
    plain = GRPOTask(**kw)
    plain.policy.load_state_dict(task.policy.state_dict())
    for seed in range(4):
        ro = _rollout(task, 3, seed=seed, kl=False)
        if seed == 2:
            before = sum(counters["stats"].values()), counters["stats"]["unique_graphs"]
        loss = task.policy_loss(ro)[0]
        loss.backward()
        torch.testing.assert_close(loss, plain.policy_loss(ro)[0], atol=1e-6, rtol=1e-5)
    assert not counters["graph_break"]
    # steps 3 and 4 (new lengths) compiled nothing new
    assert before[1] > 0 and counters["stats"]["unique_graphs"] == before[1]
    torch._dynamo.reset()


@pytest.mark.slow
def test_compile_regional_with_flex_inductor_one_step():
    """The real compiler (inductor on CPU): the switch builds and a tiny GRPO step runs (~1 min per compile)."""
    task = GRPOTask(model="llama", model_kwargs=dict(TINY, vocab_size=40), compile="regional", prefix_grouper=True,
                    prefix_mode="flex", compile_dynamic=True)
    loss = task.policy_loss(_rollout(task, 2, kl=False))[0]
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in task.policy.parameters())
