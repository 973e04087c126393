"""The official CronusVLA control step (github InternRobotics/CronusVLA, ``CronusVLA.predict_action``), random init,
to be timed beside ours (issue 18). First cut: builds their model, runs and times their step, prints one JSON line
(no --out / jsonl fields of bench_cronusvla.py yet); run on a CPU at tiny sizes only so far, not yet on a GPU.

    benchmarks/fetch_upstream.sh CronusVLA                                    # the code, into the ignored .upstream/
    pip install --no-index --no-deps --target DIR .whl/official_cronusvla/*.whl   # their pins (only the cpXY tokenizers
                                                                                   # wheel of this Python)
    python3 benchmarks/cronusvla_official.py --site DIR --device cpu --tiny    # CPU smoke test (reduced sizes)
    python3 benchmarks/cronusvla_official.py --site DIR --model 7b             # GPU, paper size (not yet run)

What runs is theirs: ``vla.cronusvla.CronusVLA`` around their ``PrismaticVLM`` built the way their ``vla.load.load_vla``
does (``prismatic.models.materialize.get_vision_backbone_and_transform`` / ``get_llm_backbone_and_tokenizer`` with
``inference_mode=True``, the ``ModelConfig`` of ``prism-dinosiglip-224px+7b`` or ``prism-qwen25-extra-dinosiglip-
224px+0_5b``), minus the checkpoint load of ``CronusVLA.from_pretrained`` (random init); one step is their
``predict_action`` (their SimplerEnv policy's call: DDIM, CFG scale 1.5, a full history of M - 1 cognition features).

Shims (nothing changes the maths of their step):

- ``prismatic.vla.datasets`` (imported through ``prismatic/__init__`` -> ``models/load.py`` -> ``prismatic.vla``; pulls
  tensorflow / dlimp, data only): a stub module with the four names imported from it.
- ``timm.create_model``: ``pretrained=False`` (their backbones ask ``pretrained=True``, a download); ``--tiny`` also
  shrinks both ViTs (depth 3, width 64).
- ``transformers.AutoConfig.from_pretrained``: with ``inference_mode=True`` their LLM is built from the hub config of
  ``meta-llama/Llama-2-7b-hf`` / ``Qwen/Qwen2.5-0.5B`` (a download); the public values are written here instead.
- ``transformers.AutoTokenizer.from_pretrained`` (a download): a ``LlamaTokenizerFast`` / ``Qwen2TokenizerFast`` over
  a word-level vocabulary of the real size (32000 / 151665 entries, so their pad-token add and
  ``resize_token_embeddings(pad_to_multiple_of=64)`` give the real embedding rows), one token per word: the prompt
  length differs from the real tokenizers' by a few tokens (recorded as ``prompt_tokens``).
- flash-attn: not needed; ``inference_mode=True`` builds the LLM with ``from_config`` and no ``use_flash_attention_2``.

Their pins (requirements.txt): transformers 4.40.1 (tokenizers 0.19.1, huggingface-hub 0.26.5), timm 0.9.10,
draccus 0.8.0 (prismatic.conf), carried as wheels in ``.whl/official_cronusvla/`` and installed into ``--site``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ROOT / ".upstream" / "CronusVLA"

#: public hub configs of the two LLMs (Llama-2-7b-hf, Qwen2.5-0.5B)
LLM_CONFIGS = {
    "meta-llama/Llama-2-7b-hf": dict(kind="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                     max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2),
    "Qwen/Qwen2.5-0.5B": dict(kind="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                              max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6,
                              tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643),
}
TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
MODEL_CFGS = {"7b": "prism-dinosiglip-224px+7b", "0_5b": "prism-qwen25-extra-dinosiglip-224px+0_5b"}
NUM_FRAMES = {"7b": 7, "0_5b": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--site", required=True, help="folder holding their pinned packages (put first on sys.path)")
    p.add_argument("--device", default=None)
    p.add_argument("--model", choices=sorted(MODEL_CFGS), default="7b")
    p.add_argument("--tiny", action="store_true", help="small ViTs / LLM, fp32, CPU smoke test")
    p.add_argument("--bf16-vlm", action="store_true",
                   help="their policy's use_bf16: VLM weights bf16 (default fp32 under their CUDA bf16 autocast)")
    p.add_argument("--ddim-steps", type=int, default=10)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--out", default=None, help="also append the row to this JSON-lines file (e.g. "
                   "benchmarks/results/cronusvla.jsonl, beside bench_cronusvla.py's rows)")
    return p.parse_args(argv)


def _install_shims(tiny: bool) -> None:
    """Stub data-only modules and redirect hub downloads (see the module docstring)."""
    stub = types.ModuleType("prismatic.vla.datasets")
    for name in ("DummyDataset", "EpisodicRLDSDataset", "RLDSBatchTransform", "RLDSDataset"):
        setattr(stub, name, None)
    sys.modules["prismatic.vla.datasets"] = stub

    import timm
    import transformers

    create = timm.create_model

    def create_model(name, pretrained=False, **kw):
        if tiny:
            kw.update(depth=3, embed_dim=64, num_heads=2)
        return create(name, pretrained=False, **kw)

    timm.create_model = create_model

    def auto_config(path, **_):
        cfg = dict(LLM_CONFIGS[path])
        kind = cfg.pop("kind")
        if tiny:
            cfg.update(TINY_LLM)
        cls = transformers.LlamaConfig if kind == "llama" else transformers.Qwen2Config
        return cls(**cfg)

    transformers.AutoConfig.from_pretrained = auto_config
    transformers.AutoTokenizer.from_pretrained = lambda path, **kw: _tokenizer(path, **kw)


def _tokenizer(path: str, model_max_length: int = 2048, padding_side: str = "right", **_):
    """A word-level tokenizer of the real vocabulary size and class (see the module docstring)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    if path.startswith("meta-llama"):
        specials, size = ["<unk>", "<s>", "</s>"], 32000
    else:
        specials, size = [], 151643
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), size)})
    if not specials:
        vocab["w0"] = 0
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[0] if specials else "w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if path.startswith("meta-llama"):
        return transformers.LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                               unk_token="<unk>", model_max_length=model_max_length,
                                               padding_side=padding_side, legacy=True)
    extra = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|qwen_special_{i}|>" for i in range(19)]
    out = transformers.Qwen2TokenizerFast(tokenizer_object=tok, unk_token=None, bos_token=None,
                                          eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                          model_max_length=model_max_length, padding_side=padding_side)
    out.add_special_tokens({"additional_special_tokens": extra[1:]})
    return out


def build(model: str, device: str, bf16_vlm: bool = False):
    """Their CronusVLA, built as ``load_vla`` does (on ``device``), random init, moved and cast as their SimplerEnv
    policy does (``use_bf16``: the VLM only; the decoder stays fp32), eval mode."""
    import torch

    with torch.device(device):
        net = _build(model)
    if bf16_vlm:
        net.vlm = net.vlm.to(torch.bfloat16)
    return net.to(device).eval()


def _build(model: str):
    """``load_vla``'s construction minus ``CronusVLA.from_pretrained``'s checkpoint load (DiT-B, 16-step chunks, M - 1
    past features, as their SimplerEnv policy is called)."""
    from prismatic.conf import ModelConfig
    from prismatic.models.materialize import get_llm_backbone_and_tokenizer, get_vision_backbone_and_transform
    from prismatic.models.vlms import PrismaticVLM
    from vla import CronusVLA

    cfg = ModelConfig.get_choice_class(MODEL_CFGS[model])()
    vision, _ = get_vision_backbone_and_transform(cfg.vision_backbone_id, cfg.image_resize_strategy, 1)
    llm, _ = get_llm_backbone_and_tokenizer(cfg.llm_backbone_id, llm_max_length=cfg.llm_max_length,
                                            inference_mode=True)
    vlm = PrismaticVLM(cfg.model_id, vision, llm, enable_mixed_precision_training=True,
                       arch_specifier=cfg.arch_specifier)
    vlm.requires_grad_(False)
    stats = {"synthetic": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}}}
    return CronusVLA(vlm, token_size=vlm.llm_backbone.llm.lm_head.in_features, action_dim=7,
                     future_action_window_size=15, past_action_window_size=NUM_FRAMES[model] - 1,
                     action_model_type="DiT-B", norm_stats=stats)


def _prompt_tokens(net, instruction: str) -> int:
    """Tokens of their prompt incl. the 2 appended cognition ids (as in ``predict_action``); patches not counted."""
    builder = net.vlm.get_prompt_builder()
    builder.add_turn(role="human", message=f"What action should the robot take to {instruction.lower()}?")
    return len(net.vlm.llm_backbone.tokenizer(builder.get_prompt()).input_ids) + 2


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sys.path[:0] = [str(Path(args.site).resolve()), str(UPSTREAM)]
    import numpy as np
    import torch
    from PIL import Image

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    _install_shims(args.tiny)
    torch.manual_seed(0)
    net = build(args.model, device, args.bf16_vlm)
    m = NUM_FRAMES[args.model]
    dtype = next(net.action_model.parameters()).dtype
    history = [torch.randn(1, 1, net.token_size, device=device, dtype=dtype) for _ in range(m - 1)]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    kw = dict(image=image, instruction="pick coke can", unnorm_key="synthetic", do_sample=False,
              cfg_scale=args.cfg_scale, use_ddim=True, num_ddim_steps=args.ddim_steps,
              cognition_features_history=history, num_cognition_features_history=m - 1)
    iters = args.iters or (1 if args.tiny else 20)
    warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 3)
    for _ in range(warmup):
        net.predict_action(**kw)
    times = []
    for _ in range(iters):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        actions, normalized, feature = net.predict_action(**kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    import timm
    import transformers

    versions = dict(python=sys.version.split()[0], torch=torch.__version__, transformers=transformers.__version__,
                    timm=timm.__version__)
    # no tasks.bench import here: this process runs their pinned transformers, not ours (commit from the variable)
    row = dict(bench="step", impl="official", model=args.model, tiny=args.tiny, device=device, frames=m,
               ddim_steps=args.ddim_steps, step_ms_median=statistics.median(times), step_ms_min=min(times),
               bf16_vlm=args.bf16_vlm, attn=net.vlm.llm_backbone.llm.config._attn_implementation,
               prompt_tokens=_prompt_tokens(net, kw["instruction"]), params=sum(p.numel() for p in net.parameters()),
               actions_shape=list(actions.shape), feature_shape=list(feature.shape),
               actions_finite=bool(np.isfinite(actions).all()),
               peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
               versions=versions, command="python3 benchmarks/cronusvla_official.py " + " ".join(sys.argv[1:]),
               git_commit=os.environ.get("SHAREZOO_GIT_COMMIT", ""))
    print(json.dumps(row))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main()
