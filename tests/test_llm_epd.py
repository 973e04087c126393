"""EPD disaggregation: encode / prefill / decode worker processes give the aggregated pipeline's outputs."""
import torch

from tasks.llm.engines.epd import EPDServer, MMBlockManager, Request, aggregated_generate, build_tiny_vlm, tile_image


def _requests(n=3):
    g = torch.Generator().manual_seed(0)
    return [Request(i, torch.randint(0, 128, (5 + i,), generator=g), torch.randn(3, 64, 64, generator=g), 6)
            for i in range(n)]


def test_tiles_and_per_tile_encoding():
    img = torch.arange(3 * 64 * 64, dtype=torch.float32).reshape(3, 64, 64)
    t = tile_image(img, 32)
    assert t.shape == (4, 3, 32, 32) and torch.equal(t[1], img[:, :32, 32:]) and torch.equal(t[2], img[:, 32:, :32])
    model = build_tiny_vlm()
    tiles = tile_image(torch.randn(3, 64, 64), 32)
    one_by_one = torch.cat([model.encode_tile(x) for x in tiles])
    batched = model.projector(model.encoder.forward_features(tiles)).reshape(-1, 64)
    torch.testing.assert_close(one_by_one, batched, atol=1e-5, rtol=1e-5)  # tiles have no cross-tile attention


def test_block_manager_no_leak():
    mgr = MMBlockManager(torch.zeros(4, 8, 3))
    x = torch.randn(17, 3)
    table = mgr.write(x)
    assert len(table) == 3 and len(mgr.free) == 1
    assert torch.equal(MMBlockManager.read(mgr.pool, table, 17), x)
    try:
        mgr.write(torch.randn(9, 3))
        raise AssertionError("a full pool must refuse")
    except MemoryError:
        pass
    mgr.release(table)
    assert sorted(mgr.free) == [0, 1, 2, 3]


def test_epd_equals_aggregated():
    model = build_tiny_vlm()
    reqs = _requests()
    ref = aggregated_generate(model, reqs, 32)
    # 3 blocks of 8 tokens per pool: fewer than one request's tiles, so blocks must be freed and reused
    with EPDServer(model, 32, num_encoders=2, block_size=8, num_blocks=6, max_decode_batch=2,
                   start_method="fork") as srv:
        got = srv.run(reqs)
    assert [r.tokens for r in got] == [r.tokens for r in ref]
    assert all(r.first_token <= r.done and r.ttft >= 0 for r in got)


def test_benchmark_smoke(tmp_path):
    import json

    from bench_loader import load_benchmark

    mod = load_benchmark("bench_epd")
    out = tmp_path / "r.jsonl"
    assert mod.main(["--device", "cpu", "--tiny", "--requests", "3", "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    (epd,) = [r for r in recs if r.get("method") == "epd"]
    assert epd["identical_to_aggregated"] and epd["ttft_mean_s"] > 0
