"""EPD disaggregation vs the aggregated pipeline under a Poisson request stream: TTFT and throughput.

    python3 benchmarks/bench_epd.py                          # GPU(s) if present: stages on cuda:0..n-1 round-robin
    python3 benchmarks/bench_epd.py --device cpu --tiny      # CPU smoke run

Model: :class:`tasks.llm.engines.epd.TinyVLM` (timm ViT encoder + projector + Llama decoder, random weights; the
default shape is small-GPU-sized: ViT width 64 x 2 blocks is replaced by ``--vit-width/--vit-depth``, decoder hidden
``--hidden`` x ``--layers``). Requests: ``--requests`` arriving at ``--rate`` per second (Poisson, seeded), each with
one image of ``--grid`` x ``--grid`` tiles and a short prompt, greedy ``--new`` tokens. Both ways serve the same stream
in real time; reported: mean / p90 TTFT, mean end-to-end latency, requests/s and output tokens/s, and whether the
outputs agree. Results append to ``benchmarks/results/epd.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
from bench_prefix_grouper import environment  # noqa: E402


def _summary(results) -> dict:
    ttft = sorted(r.ttft for r in results)
    span = max(r.done for r in results) - min(r.arrival for r in results)
    toks = sum(len(r.tokens) for r in results)
    return dict(ttft_mean_s=round(sum(ttft) / len(ttft), 4), ttft_p90_s=round(ttft[int(0.9 * (len(ttft) - 1))], 4),
                latency_mean_s=round(sum(r.done - r.arrival for r in results) / len(results), 4),
                requests_per_s=round(len(results) / span, 3), tokens_per_s=round(toks / span, 2))


def main(argv=None) -> int:
    import timm

    from tasks.llm.engines.epd import EPDServer, Request, TinyVLM, aggregated_generate
    from zoo.llm import build_causal_lm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--rate", type=float, default=None, help="arrivals per second")
    ap.add_argument("--grid", type=int, default=None, help="tiles per image side")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--new", type=int, default=None)
    ap.add_argument("--encoders", type=int, default=2)
    ap.add_argument("--vit-width", type=int, default=None)
    ap.add_argument("--vit-depth", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    tiny, cuda = a.tiny, a.device.startswith("cuda")
    n_req, rate = a.requests or (4 if tiny else 48), a.rate or (4.0 if tiny else 8.0)
    grid, tile, n_new = a.grid or 2, a.tile or (32 if tiny else 224), a.new or (4 if tiny else 64)
    width, depth = a.vit_width or (64 if tiny else 768), a.vit_depth or (2 if tiny else 12)
    hidden, layers = a.hidden or (64 if tiny else 1024), a.layers or (2 if tiny else 16)
    out = Path(a.out or ROOT / "benchmarks/results/epd.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    enc = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=tile, patch_size=16 if not tiny else 8,
                            embed_dim=width, depth=depth, num_heads=max(1, width // 64), num_classes=0)
    dec = build_causal_lm("llama", vocab_size=32000 if not tiny else 128, hidden_size=hidden,
                          intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=max(1, hidden // 64),
                          num_key_value_heads=max(1, hidden // 128), max_position_embeddings=4096)
    model = TinyVLM(enc, dec).eval()
    if cuda:
        model = model.to(torch.bfloat16)
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    t, reqs = 0.0, []
    for i in range(n_req):
        t += rng.expovariate(rate)
        reqs.append(Request(i, torch.randint(0, dec.config.vocab_size, (32,), generator=g),
                            torch.randn(3, grid * tile, grid * tile, generator=g).to(model.projector.weight.dtype),
                            n_new, arrival=t))
    n_gpu = torch.cuda.device_count() if cuda else 0
    devs = [f"cuda:{i % n_gpu}" for i in range(a.encoders + 2)] if cuda else ["cpu"] * (a.encoders + 2)
    common = {"bench": "epd", **environment(torch.device(a.device)), "gpus": n_gpu, "devices": devs,
              "requests": n_req, "rate": rate, "tiles": grid * grid, "tile": tile, "new_tokens": n_new,
              "vit": [width, depth], "decoder": [hidden, layers], "encoders": a.encoders}
    recs = []
    agg_model = model.to(devs[-1])
    aggregated_generate(agg_model, reqs[:1], tile)  # warm-up
    agg = aggregated_generate(agg_model, reqs, tile, realtime=True)
    recs.append({**common, "kind": "point", "status": "ok", "method": "aggregated", **_summary(agg)})
    print(recs[-1], flush=True)
    model = model.cpu()
    with EPDServer(model, tile, num_encoders=a.encoders, block_size=64, num_blocks=4096 if not tiny else 64,
                   devices={"encode": devs[:a.encoders], "prefill": devs[a.encoders], "decode": devs[a.encoders + 1]},
                   start_method="spawn" if cuda else "fork") as srv:
        srv.run([Request(-1 - i, r.prompt, r.image, 2) for i, r in enumerate(reqs[:2])])  # warm-up
        t0 = time.monotonic()
        epd = srv.run(reqs, realtime=True)
        wall = time.monotonic() - t0
    same = [r.tokens for r in epd] == [r.tokens for r in agg]
    recs.append({**common, "kind": "point", "status": "ok", "method": "epd", **_summary(epd), "wall_s": round(wall, 3),
                 "identical_to_aggregated": same})
    print(recs[-1], flush=True)
    recs.append({**common, "kind": "done"})
    with out.open("a") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
