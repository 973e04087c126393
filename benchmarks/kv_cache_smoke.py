"""GPU smoke of the issue-22 caches (run: benchmarks/kv_cache_smoke.py on the device, constriction carried as a wheel): bf16 on CUDA, tiny families (lossless == DynamicCache, defaults run) and a
base-shaped random Llama (12 layers, 768, 12/4 heads): prefill 8 x 1536, decode 64 — bytes and decode tok/s."""
import json, os, sys, time, warnings
import torch
from transformers import DynamicCache
sys.path.insert(0, os.getcwd())
from tasks.llm.engines.generation import cache_kwarg
from zoo.llm import tiny_causal_lm, build_causal_lm
from zoo.llm.cache.base import FullCache
from zoo.llm.cache.minicache import MiniCache
from zoo.llm.cache.kvmerger import KVMergerCache
from zoo.llm.cache.ems import EMSCache
from zoo.llm.cache.chelsea import ChelseaCache
from zoo.llm.cache.cachegen import CacheGenCache
from zoo.llm.cache.gear import GEARCache
from zoo.llm.cache.xkv import XKVCache
from zoo.llm.cache.eviction import StreamingLLMCache
from zoo.llm.cache.scores import enable_query_observation
dev = "cuda"; dt = torch.bfloat16
print(torch.__version__, torch.cuda.get_device_name(), flush=True)
import transformers; print(transformers.__version__)
out = {}
for fam in ("llama", "qwen2", "mistral", "gemma2"):
    m = tiny_causal_lm(fam, vocab_size=128, num_hidden_layers=4, **({} if fam == "gemma2" else {"head_dim": 16})).to(dev, dt)
    enable_query_observation(m)
    x = torch.randint(1, 128, (2, 100), device=dev)
    def gen(c):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False, pad_token_id=0, **{cache_kwarg(m): c})
    ref = gen(DynamicCache())
    cfg = m.config
    lossless = {"minicache": MiniCache(cfg, gamma=1.0), "kvmerger": KVMergerCache(ratio=1.0), "ems": EMSCache(budget=256),
                "chelsea": ChelseaCache(merge_ratio=0.0), "cachegen": CacheGenCache(cfg, chunk_size=512, encode_prefill=False)}
    res = {k: bool(torch.equal(gen(c), ref)) for k, c in lossless.items()}
    defaults = {"minicache": MiniCache(cfg), "minicache4": MiniCache(cfg, bits=4), "kvmerger": KVMergerCache(), "ems": EMSCache(budget=48, window=16),
                "chelsea": ChelseaCache(), "cachegen": CacheGenCache(cfg, chunk_size=64)}
    for k, c in defaults.items():
        res[k + "_default_match"] = (gen(c) == ref).float().mean().item()
    out[fam] = res
    print(fam, res, flush=True)
m = build_causal_lm("llama", vocab_size=50304, num_hidden_layers=12, hidden_size=768, intermediate_size=2048,
                    num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=4096).to(dev, dt).eval()
enable_query_observation(m)
cfg = m.config
kw = cache_kwarg(m)
methods = {"full": lambda: FullCache(), "gear_2bit": lambda: GEARCache(bits=2), "xkv_g4": lambda: XKVCache(cfg, group_size=4),
           "streamingllm": lambda: StreamingLLMCache(4, 508), "minicache": lambda: MiniCache(cfg), "minicache_4bit": lambda: MiniCache(cfg, bits=4),
           "kvmerger_50": lambda: KVMergerCache(ratio=0.5), "ems_256": lambda: EMSCache(budget=256), "chelsea_50": lambda: ChelseaCache(),
           "cachegen_l1": lambda: CacheGenCache(cfg, level=1)}
x = torch.randint(0, 50257, (8, 1536), device=dev)
speed = {}
with torch.no_grad():  # warm-up: CUDA context, kernels, allocator
    for _ in range(2):
        c = FullCache(); lg = m(input_ids=x, use_cache=True, **{kw: c}).logits[:, -1]
        for _ in range(8):
            lg = m(input_ids=lg.argmax(-1, keepdim=True), use_cache=True, **{kw: c}).logits[:, -1]
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
with torch.no_grad():
    for name, f in methods.items():
        c = f(); torch.cuda.synchronize(); t0 = time.perf_counter()
        logits = m(input_ids=x, use_cache=True, **{kw: c}).logits[:, -1]
        torch.cuda.synchronize(); t1 = time.perf_counter()
        n = 64 if name != "cachegen_l1" else 4
        for _ in range(n):
            logits = m(input_ids=logits.argmax(-1, keepdim=True), use_cache=True, **{kw: c}).logits[:, -1]
        torch.cuda.synchronize(); t2 = time.perf_counter()
        speed[name] = {"prefill_s": round(t1 - t0, 3), "decode_tok_s": round(8 * n / (t2 - t1), 1), "bytes": c.memory_bytes(),
                       "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}
        torch.cuda.reset_peak_memory_stats()
        print(name, speed[name], flush=True)
full = speed["full"]["bytes"]
for k in speed: speed[k]["ratio"] = round(full / speed[k]["bytes"], 3)
json.dump({"command": "python3 benchmarks/kv_cache_smoke.py", "git_commit": os.environ.get("SHAREZOO_GIT_COMMIT"),
           "torch": torch.__version__, "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(),
           "note": "random weights: match shares and speeds only, no quality", "tiny": out, "base_shaped_random": speed}, open(os.environ["OUT"] + "/kv_smoke.json", "w"), indent=1)
