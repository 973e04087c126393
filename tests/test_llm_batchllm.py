"""BatchLLM: prefix tree + one-level plan, scheduling, and greedy outputs equal to generating each prompt alone."""
import random

import pytest
import torch

from tasks.llm.engines.batchllm import BatchLLMEngine
from tasks.llm.methods.batchllm import build_prefix_tree, plan_prefix_groups, plan_saving, schedule
from tasks.llm.engines.generation import sample_completions
from zoo.llm import tiny_causal_lm


def _partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first]] + part
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1 :]


def _lcp_len(ps):
    keys = [p[:-1].tolist() for p in ps]
    n = 0
    while all(len(k) > n for k in keys) and len({k[n] for k in keys}) == 1:
        n += 1
    return n


def _brute_force(prompts):
    return max(sum((len(b) - 1) * _lcp_len([prompts[i] for i in b]) for b in part)
               for part in _partitions(list(range(len(prompts)))))


def _check_plan(prompts, groups):
    assert sorted(i for g in groups for i in g.members) == list(range(len(prompts)))
    for g in groups:
        head = prompts[g.members[0]][: g.prefix_len]
        for i in g.members:
            assert prompts[i].numel() > g.prefix_len and torch.equal(prompts[i][: g.prefix_len], head)
    # computed tokens = unique prefix tokens + suffix tokens
    computed = sum(g.prefix_len for g in groups) + sum(prompts[i].numel() - g.prefix_len for g in groups
                                                       for i in g.members)
    assert computed == sum(p.numel() for p in prompts) - plan_saving(groups)


def test_prefix_tree_and_plan_against_brute_force():
    rng = random.Random(0)
    for trial in range(60):
        n = rng.randint(2, 6)
        prompts = [torch.tensor([rng.randint(0, 2) for _ in range(rng.randint(1, 7))]) for _ in range(n)]
        tree = build_prefix_tree(prompts)
        assert sorted(tree.leaves()) == list(range(n))
        groups = plan_prefix_groups(prompts)
        _check_plan(prompts, groups)
        assert plan_saving(groups) == _brute_force(prompts)  # the one-level DP is exact


def test_plan_decides_per_child():
    """Audit counter-example: common depth 10; child A = 2 prompts sharing 101 tokens, children B and C = 2 prompts
    sharing 11 tokens each. Best: A keeps its deep group (101), B and C merge into the depth-10 group (3 * 10):
    131; an all-or-nothing choice per node gives 101 + 11 + 11 = 123."""
    common = torch.arange(10)
    deep = torch.arange(100, 191)  # 91 more tokens: A shares 101

    def prompt(*parts):
        return torch.cat([common, *[torch.as_tensor(x).reshape(-1) for x in parts], torch.tensor([999])])

    prompts = [prompt(deep, 500), prompt(deep, 501), prompt(20, 600), prompt(20, 601), prompt(30, 700),
               prompt(30, 701)]
    groups = plan_prefix_groups(prompts)
    _check_plan(prompts, groups)
    assert plan_saving(groups) == _brute_force(prompts) == 131


def test_plan_on_documents_with_questions_is_optimal():
    docs = [torch.randint(10, 50, (n,)) for n in (12, 9)]
    prompts = [torch.cat([docs[d], torch.randint(50, 60, (q,))]) for d in (0, 1, 0, 1, 0) for q in (3,)]
    prompts.append(torch.randint(60, 70, (5,)))
    groups = plan_prefix_groups(prompts)
    _check_plan(prompts, groups)
    assert plan_saving(groups) >= 2 * 12 + 1 * 9
    assert plan_saving(groups) == _brute_force(prompts)


def test_schedule_decode_heavy_first_and_budget():
    prompts = [torch.zeros(n, dtype=torch.long) for n in (10, 10, 4, 4, 30)]
    groups = plan_prefix_groups([torch.arange(n) for n in (10, 10, 4, 4, 30)])
    mnt = [2, 2, 40, 40, 5]
    batches = schedule(prompts, groups, mnt, kv_budget_tokens=60)
    first = batches[0].groups[0].members
    assert set(first) <= {2, 3}  # highest decode/prompt ratio first
    assert all(b.kv_tokens <= 60 or len(b.groups) == 1 for b in batches)
    assert sorted(i for b in batches for g in b.groups for i in g.members) == list(range(5))


@pytest.mark.parametrize("lse_merge", [True, False])
def test_engine_greedy_equals_each_prompt_alone(lse_merge):
    model = tiny_causal_lm("llama", vocab_size=60)
    doc_a, doc_b = torch.randint(3, 60, (9,)), torch.randint(3, 60, (6,))
    prompts = [torch.cat([doc_a, torch.randint(3, 60, (n,))]) for n in (2, 4, 1)]
    prompts += [torch.cat([doc_b, torch.randint(3, 60, (n,))]) for n in (3, 2)]
    prompts += [torch.randint(3, 60, (5,))]
    mnt = [4, 6, 3, 5, 2, 4]
    engine = BatchLLMEngine(model, kv_budget_tokens=40, eos_id=None, lse_merge=lse_merge)
    out = engine.generate(prompts, mnt)
    assert engine.stats["prefill_tokens"] < engine.stats["prompt_tokens"] and engine.stats["batches"] > 1
    for p, o, m in zip(prompts, out, mnt):
        alone = sample_completions(model, [p], 1, m, greedy=True)[0][0]
        assert o.tolist() == alone.tolist()


def test_engine_with_eos_stops():
    model = tiny_causal_lm("qwen2", vocab_size=30)
    prompts = [torch.randint(3, 30, (6,)) for _ in range(3)]
    ref = [sample_completions(model, [p], 1, 8, greedy=True)[0][0] for p in prompts]
    eos = int(ref[0][2])
    out = BatchLLMEngine(model, eos_id=eos).generate(prompts, 8)
    for o, r in zip(out, ref):
        cut = (r == eos).nonzero()
        expect = r[: int(cut[0]) + 1] if cut.numel() else r
        assert o.tolist() == expect.tolist()


def _instrument(monkeypatch):
    """Record, at every attention call, the K/V the attention really holds: segment K/V as stored + own K/V cache +
    per-row prefix copies (the joint path's concat); also the segment entries stored (freed groups disappear)."""
    from zoo.llm.prefix import segments

    held, entries = [], []
    orig_call, orig_joint = segments.SegmentAttention.__call__, segments.SegmentAttention._joint

    def call(self, module, q, k, v, scaling, softcap=None):
        self._copies = 0
        out = orig_call(self, module, q, k, v, scaling, **({} if softcap is None else {"softcap": softcap}))
        own = self.own_keys[module.layer_idx] if self.record else k
        stored = sum(s.keys[module.layer_idx].shape[0] * s.keys[module.layer_idx].shape[2] for s in self.segments)
        held.append(stored + own.shape[0] * own.shape[2] + self._copies)
        entries.append(sum(s.keys[module.layer_idx].shape[0] for s in self.segments))
        return out

    def joint(self, q, k, v, own_mask, li, scaling):
        self._copies = sum(q.shape[0] * s.length for s in self.segments)
        return orig_joint(self, q, k, v, own_mask, li, scaling)

    monkeypatch.setattr(segments.SegmentAttention, "__call__", call)
    monkeypatch.setattr(segments.SegmentAttention, "_joint", joint)
    return held, entries


def _old_formula(prompts, groups, mnt, lse_merge):
    """The planner before finished rows left the batch: every row decodes until the batch's longest request."""
    members = [i for g in groups for i in g.members]
    p_max = max(g.prefix_len for g in groups)
    s_max = max(prompts[i].numel() - g.prefix_len for g in groups for i in g.members)
    n = len(members)
    return len(groups) * p_max + n * (s_max + max(mnt[i] for i in members) - 1) + (0 if lse_merge else n * p_max)


@pytest.mark.parametrize("lse_merge", [True, False])
def test_kv_actually_stored_stays_under_budget(lse_merge, monkeypatch):
    """Audit case: prefix 20, suffixes 1/1/1/12, max_new_tokens 1/1/1/30, budget 100 (an early plan said 68 and the
    engine stored 184). Finished rows now leave the batch, so the three 1-token requests no longer pin K/V for 29
    decode steps: measured peak <= planned <= budget, and the plan is below the old formula."""
    from tasks.llm.methods.batchllm import batch_kv_tokens

    held, _ = _instrument(monkeypatch)
    model = tiny_causal_lm("llama", vocab_size=60)
    prefix = torch.randint(3, 60, (20,))
    prompts = [torch.cat([prefix, torch.randint(3, 60, (n,))]) for n in (1, 1, 1, 12)]
    mnt = [1, 1, 1, 30]
    engine = BatchLLMEngine(model, kv_budget_tokens=100, lse_merge=lse_merge)
    out = engine.generate(prompts, mnt)
    assert engine.stats["measured_peak_kv_tokens"] == max(held)  # the engine's own accounting agrees
    assert max(held) <= engine.stats["max_batch_kv_tokens"] <= 100
    batches = schedule(prompts, plan_prefix_groups(prompts), mnt, 100, lse_merge)
    assert max(engine.batch_peak_kv_tokens) == max(b.kv_tokens for b in batches)  # the planner is exact
    assert all(b.kv_tokens == batch_kv_tokens(prompts, b.groups, mnt, lse_merge) for b in batches)
    for p, o, m in zip(prompts, out, mnt):
        assert o.tolist() == sample_completions(model, [p], 1, m, greedy=True)[0][0].tolist()
    # all four requests as one batch: 20 + 4 * 12 = 68 (LSE), vs 20 + 4 * (12 + 29) = 184 before
    whole = plan_prefix_groups(prompts)
    assert batch_kv_tokens(prompts, whole, mnt, lse_merge) == (68 if lse_merge else 148)
    assert _old_formula(prompts, whole, mnt, lse_merge) == (184 if lse_merge else 264)
    if lse_merge:
        assert len(batches) == 1  # fits the budget of 100 as one batch now (the old formula forced a split)
    with pytest.raises(ValueError, match="needs"):  # the 30-token request alone: 20 + 12 + 29 = 61 > 40
        BatchLLMEngine(model, kv_budget_tokens=40, lse_merge=lse_merge).generate(prompts, mnt)


@pytest.mark.parametrize("lse_merge", [True, False])
def test_finished_rows_and_groups_leave_the_batch(lse_merge, monkeypatch):
    """Two prefix groups + a lone request in one batch with very unequal max_new_tokens: rows leave as they finish,
    a group's prefix entry is freed after its last member, the measured peak equals the plan (below the old
    formula), and greedy outputs still equal generating each prompt alone."""
    from tasks.llm.methods.batchllm import batch_kv_tokens

    held, entries = _instrument(monkeypatch)
    model = tiny_causal_lm("llama", vocab_size=60)
    doc_a, doc_b = torch.randint(3, 60, (14,)), torch.randint(3, 60, (6,))
    prompts = [torch.cat([doc_a, torch.randint(3, 60, (n,))]) for n in (2, 9)]
    prompts += [torch.cat([doc_b, torch.randint(3, 60, (n,))]) for n in (3, 1)]
    prompts += [torch.randint(3, 60, (4,))]
    mnt = [1, 2, 3, 25, 7]  # group A finishes after 2 tokens (its 14-token prefix is then freed), B runs to 25
    engine = BatchLLMEngine(model, kv_budget_tokens=10_000, lse_merge=lse_merge)
    out = engine.generate(prompts, mnt)
    assert engine.stats["batches"] == 1 and engine.stats["groups"] == 3
    groups = plan_prefix_groups(prompts)
    planned = batch_kv_tokens(prompts, groups, mnt, lse_merge)
    assert engine.stats["measured_peak_kv_tokens"] == max(held) == planned == engine.stats["max_batch_kv_tokens"]
    assert planned < _old_formula(prompts, groups, mnt, lse_merge)
    assert max(entries) == 3 and entries[-1] == 1  # prefix entries: 3 groups at first, only B's at the end
    assert held[-1] < max(held)
    for p, o, m in zip(prompts, out, mnt):
        assert o.tolist() == sample_completions(model, [p], 1, m, greedy=True)[0][0].tolist()
