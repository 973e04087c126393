"""SuffixDecoding: the suffix tree's counts / matches / drafts, and speculative output == plain greedy decoding."""
import pytest
import torch

from tasks.llm.engines.suffix_decoding import SuffixDecodingEngine, greedy_decode, tree_attention_mask
from tasks.llm.methods.suffix_decoding import SuffixConfig, SuffixDecodingCache
from zoo.llm import build_causal_lm
from zoo.llm.suffix_tree import SuffixTree


def test_counts_match_and_depth_bound():
    t = SuffixTree(max_depth=3)
    t.extend("a", [1, 2, 3, 1, 2, 4])
    assert t.root.children[1].count == 2 and t.root.children[1].children[2].count == 2
    assert t.root.children[1].children[2].children[3].count == 1
    assert max(_depths(t.root)) == 3  # nothing deeper than D
    p, node = t.match([9, 1, 2])  # "1 2" occurs with a continuation; "9 1 2" does not occur
    assert p == 2 and set(node.children) == {3, 4}
    t.remove("a")
    assert t.root.children == {} and t.num_nodes == 1


def _depths(node, d=0):
    yield d
    for c in node.children.values():
        yield from _depths(c, d + 1)


def test_exact_repeat_drafts_the_continuation_with_prob_one():
    t = SuffixTree(64)
    seq = list(range(10, 30))
    t.extend("g", seq)
    d = t.speculate(seq[:8], max_spec_tokens=5, max_spec_factor=1.0, use_tree=False)
    assert d.token_ids == seq[8:13] and d.probs == [1.0] * 5 and d.match_len == 8 and d.parents == [-1, 0, 1, 2, 3]
    # adaptive budget: alpha * match_len
    assert len(t.speculate(seq[:2], max_spec_tokens=16, max_spec_factor=1.0)) == 2
    assert len(t.speculate(seq[:2], max_spec_tokens=16, max_spec_factor=0.0)) == 0


def test_min_token_prob_and_tree_branching():
    t = SuffixTree(8)
    for i, nxt in enumerate([5, 5, 5, 6, 7, 8, 9, 10, 11, 12]):  # after [1, 2]: 5 three times, seven others once
        t.extend(i, [1, 2, nxt])
    d = t.speculate([1, 2], max_spec_tokens=8, max_spec_factor=4.0, min_token_prob=0.2)
    assert d.token_ids == [5] and d.probs == [0.3]
    d = t.speculate([1, 2], max_spec_tokens=8, max_spec_factor=4.0, min_token_prob=0.1)
    assert d.token_ids[0] == 5 and len(d) == 8 and all(p == -1 for p in d.parents)  # a tree of siblings
    assert d.score == pytest.approx(0.3 + 7 * 0.1)


def test_global_tree_fifo_eviction():
    c = SuffixDecodingCache(SuffixConfig(max_cached_requests=2))
    for r in range(3):
        c.start_request(r, [])
        c.add_tokens(r, [100 + r, 1, 2, 3])
        c.stop_request(r)
    assert len(c.global_tree.sequence_ids()) == 2 and 100 not in c.global_tree.root.children


def test_tree_mask_sees_ancestors_only():
    mask, depth = tree_attention_mask([-1, 0, -1], past=2, dtype=torch.float32, device=torch.device("cpu"))
    seen = mask[0, 0] == 0
    assert depth.tolist() == [0, 1, 2, 1]
    assert seen[:, :2].all()  # the cached tokens
    assert seen[2, 2:].tolist() == [True, True, True, False] and seen[3, 2:].tolist() == [True, False, False, True]


def _prompts(vocab, n=6):
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        base = torch.randint(0, vocab, (10,), generator=g)
        out.append(torch.cat([base, base, base[:4]]) if i % 2 == 0 else base)  # repeats force long drafts
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("use_tree", [True, False])
def test_identical_to_greedy(family, use_tree):
    torch.manual_seed(0)
    model = build_causal_lm(family, vocab_size=48).eval()
    eng = SuffixDecodingEngine(model, SuffixConfig(max_spec_factor=2.0, use_tree=use_tree))
    prompts = _prompts(48)
    eng.drafter.warm([greedy_decode(model, prompts[0], 30).tolist()])  # a warmed global tree
    for p in prompts * 2:  # the second round repeats requests: long global-tree drafts
        assert torch.equal(eng.generate(p, 30), greedy_decode(model, p, 30))
    assert eng.stats.accepted > 0 and eng.stats.forwards < eng.stats.tokens


def test_no_speculation_one_forward_per_token_and_eos():
    torch.manual_seed(0)
    model = build_causal_lm("llama", vocab_size=48).eval()
    eng = SuffixDecodingEngine(model, SuffixConfig(max_spec_factor=0.0))
    out = eng.generate(_prompts(48)[0], 20)
    assert eng.stats.accepted == 0 and eng.stats.forwards == len(out) - 1  # the first token comes from the prefill
    ref = greedy_decode(model, _prompts(48)[0], 20)
    eos = int(ref[5])
    eng = SuffixDecodingEngine(model, SuffixConfig(max_spec_factor=2.0), eos_id=eos)
    assert torch.equal(eng.generate(_prompts(48)[0], 20), greedy_decode(model, _prompts(48)[0], 20, eos_id=eos))


@pytest.fixture(scope="module")
def reference_lm():
    """The tiny reference LM, trained once and cached (module scope: before the per-test cache isolation)."""
    from tasks.llm.reference_lm_train import cached_reference_lm

    return cached_reference_lm("tiny")


def test_trained_reference_lm_identical(reference_lm):
    from datamodules.stdlib_text import ReferenceTokenizer

    folder = reference_lm
    model = build_causal_lm(folder).eval()
    tok = ReferenceTokenizer.from_folder(folder)
    code = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef mul(a, b):\n"
    eng = SuffixDecodingEngine(model, SuffixConfig(max_spec_factor=2.0), eos_id=tok.eot_id)
    for _ in range(2):
        p = torch.tensor(tok.encode(code))
        assert torch.equal(eng.generate(p, 48), greedy_decode(model, p, 48, eos_id=tok.eot_id))
    assert eng.stats.accepted > 0


def test_benchmark_smoke(tmp_path, reference_lm):
    import json

    from bench_loader import load_benchmark

    mod = load_benchmark("bench_suffix_decoding")
    out = tmp_path / "r.jsonl"
    assert mod.main(["--device", "cpu", "--tiny", "--model", str(reference_lm), "--out", str(out),
                     "--methods", "plain,suffix"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    points = [r for r in recs if r["kind"] == "point"]
    assert recs[-1]["kind"] == "done" and len(points) == 4 and all(r["identical_to_plain"] for r in points)
