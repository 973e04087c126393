"""The official UniPic 1.5B (github SkyworkAI/UniPic, folder UniPic-1) timed beside ours (issue 19), random init.

    benchmarks/fetch_upstream.sh UniPic                                    # the code, into the ignored .upstream/
    pip install --no-index --no-deps --target DIR .whl/official_unipic/*.whl   # their pins (only this Python's
                                                                               # tokenizers wheel)
    python3 benchmarks/unipic_official.py train --site DIR --stages stage1_pt stage3_ct   # GPU, paper size
    python3 benchmarks/unipic_official.py gen --site DIR --size 1024 --num-iter 64        # GPU, paper size
    python3 benchmarks/unipic_official.py count --site DIR          # paper-size parameter counts (meta device)
    python3 benchmarks/unipic_official.py train --site DIR --device cpu --tiny            # CPU smoke (reduced)

What runs is theirs, unchanged: their model config ``configs/models/qwen2_5_1_5b_kl16_mar_h.py`` read by mmengine's
``Config.fromfile`` and built by their ``src.builder.BUILDER`` (KL-16 ``AutoencoderKL``, ``mar_huge`` at img_size 512
with DiffLoss 12 x 1536 and their ``grad_checkpointing=True``, Qwen2.5-1.5B-Instruct, SigLIP2 so400m/16-512, proj_in /
proj_out / siglip2_proj). ``train`` builds their training class ``SkyworkUnipicDev`` (src/models/skywork_unipic_dev.py,
gradient checkpointing on as its default) with that config; one step is their ``forward(data, mode='loss')`` ->
``compute_loss`` (their per-kind weighted losses, summed as mmengine's ``parse_losses`` does), ``backward``, AdamW
(lr 1e-5, betas (0.9, 0.95), eps 1e-15: the optimiser our bench_unipic.py train rows use) ``step`` and ``zero_grad``.
Stages as ours (configs/unipic/stage1_pt.yaml, stage3_ct.yaml): ``stage1_pt`` = their ``freeze_llm=True``, text-to-
image only; ``stage3_ct`` = everything trained, text-to-image + editing + understanding at 0.01 : 1 : 1 (their code
defaults). Batch 1, 512-px images (our rows' ``example_batch``), understanding at 512 px. ``gen`` builds their
inference class ``SkyworkUnipic``, casts it to bf16 and calls ``prepare_text_conditions`` + ``sample`` exactly as their
``scripts/text2image.py`` does (prompt "Generate an image: ...", negative prompt "Generate an image.", CFG 3.0
constant, temperature 1.0, 100 DiffLoss sampling steps from their config), one image.

Random init: no checkpoint, VAE or LLM weights are read. What is missing here and what stands in (nothing changes
the maths of their step):

- Hub loads (``AutoModelForCausalLM.from_pretrained`` / ``SiglipVisionModel.from_pretrained`` /
  ``AutoTokenizer.from_pretrained`` of ``checkpoint/...``) and the VAE's ``ckpt_path``: the config's builders are
  swapped for ``from_config`` of the public Qwen2.5-1.5B-Instruct / siglip2-so400m-patch16-512 values written here,
  ``ckpt_path=None``.
- The Qwen2.5 BPE tokenizer (a download): a byte-level ``Qwen2TokenizerFast`` stand-in (one token per UTF-8 byte,
  Qwen's ids for ``<|endoftext|> <|im_start|> <|im_end|>``), so their prompts have exactly as many tokens as ours
  (our paper-size rows use a byte tokenizer too); the real BPE gives fewer (``prompt_tokens`` in each row).
- flash-attn 2.6.2 (their config's ``attn_implementation="flash_attention_2"``; no wheel for this torch): the LLM is
  built with ``"sdpa"`` (exact attention, as flash-attn computes).
- ``xtuner.model.utils`` (imports xtuner's LLaVA / InternVL / SFT wrappers and with them peft, accelerate and
  DeepSpeed integration): a stub module whose ``guess_load_checkpoint`` raises; UniPic imports it but calls it only
  for a ``pretrained_pth``. The real ``xtuner.utils`` (their ``PROMPT_TEMPLATE`` / ``IMAGE_TOKEN_INDEX`` import) runs.
- CPU only (``--device cpu``): their ``DiffLoss.sample`` draws its noise with ``.cuda()``; while sampling on a CPU,
  ``Tensor.cuda`` returns the tensor itself.

Precision: their training runs DeepSpeed ZeRO-3 bf16 (bf16 weights in the forward, fp32 master weights); ours runs fp32
weights under bf16 autocast. ``--precision bf16-mixed`` (default on a GPU) builds the LLM and SigLIP in fp32 (their
config asks bf16) and autocasts, as ours; ``bf16-true`` keeps their bf16 LLM / SigLIP and casts the rest to bf16
(DeepSpeed's bf16 forward, without its fp32 master copy). ``gen`` is bf16 throughout (their text2image.py's
``model.to(model.dtype)``; ours too). ``--no-checkpointing`` turns their gradient checkpointing off (ours has none).

Differences from our rows that stay (recorded per row under ``differences``): their understanding loss reads VAE +
MAR-encoder features (1088 ``<image>`` slots at 512 px; ours: SigLIP2, 1024 slots); they drop the prompt to the
negative one in their datasets (not here: the batch is fixed), ours with p 0.1 in the step; their MAR builds an unused
1000-class embedding (1.28 M parameters); no gradient clipping in either timed step (their runs clip at 1.0).

One JSON line per row (``impl: official``; the fields of our bench_unipic.py rows plus provenance, versions, parameter
counts) is appended to ``--out`` (default benchmarks/results/unipic_official.jsonl; --tiny: a temporary file).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shlex
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

UPSTREAM = "SkyworkAI/UniPic (UniPic-1)"
UPSTREAM_COMMIT_CHECKED = "9e2a609"  # the snapshot this harness was written against
CONFIG = "configs/models/qwen2_5_1_5b_kl16_mar_h.py"
HASHED = (CONFIG, "src/models/skywork_unipic_siglip.py", "src/models/skywork_unipic_dev.py", "src/models/mar/mar.py",
          "src/models/mar/diffloss.py", "src/models/mar/vae.py")
PROMPT = "a red circle left of a blue square"  # our bench_unipic.py rows' caption / prompt
INSTRUCTION, QUESTION, ANSWER = "make the circle green", "how many circles are there?", "two"

#: Qwen2.5-1.5B-Instruct's public config.json values
QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False, bos_token_id=151643,
                  eos_token_id=151645)
#: google/siglip2-so400m-patch16-512 vision tower (loaded by their config as a SiglipVisionModel)
SIGLIP2 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=16,
               image_size=512)
TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
TINY_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=16,
                   image_size=64)
#: --tiny: their MAR class at a reduced width / depth (64-px images -> a 4 x 4 latent grid), 5 sampling steps
TINY_MAR = dict(img_size=64, encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=64,
                decoder_depth=2, decoder_num_heads=4, buffer_size=4, diffloss_d=2, diffloss_w=64,
                num_sampling_steps="5")
STAGES = {  # ours: configs/unipic/stage1_pt.yaml, stage3_ct.yaml (loss weights U:G:E)
    "stage1_pt": dict(freeze_llm=True, loss_weights={"image2text": 0.0, "text2image": 1.0, "image_edit": 0.0}),
    "stage3_ct": dict(freeze_llm=False, loss_weights={"image2text": 0.01, "text2image": 1.0, "image_edit": 1.0}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("mode", choices=["train", "gen", "count"])
    p.add_argument("--site", default=None, help="folder holding their pins (pip install --target of "
                   ".whl/official_unipic/*.whl); put first on sys.path")
    p.add_argument("--repo", default=os.environ.get("UNIPIC_REPO", str(ROOT / ".upstream" / "UniPic" / "UniPic-1")),
                   help="their UniPic-1 folder (benchmarks/fetch_upstream.sh UniPic)")
    p.add_argument("--device", default=None)
    p.add_argument("--tiny", action="store_true", help="reduced config, fp32 (CPU smoke test)")
    p.add_argument("--stages", nargs="+", choices=sorted(STAGES), default=["stage1_pt", "stage3_ct"])
    p.add_argument("--precision", default=None, choices=["bf16-mixed", "bf16-true", "32-true"],
                   help="train: default bf16-mixed on a GPU (as ours), 32-true on a CPU")
    p.add_argument("--no-checkpointing", action="store_true", help="train: their gradient checkpointing off")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="train: steps (default 6; tiny 2)")
    p.add_argument("--size", type=int, default=None, help="gen: image size (default 1024; tiny 64)")
    p.add_argument("--num-iter", type=int, default=None, help="gen: MaskGIT steps (default 64; tiny 4)")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--out", default=None, help="JSON-lines file (default benchmarks/results/unipic_official.jsonl; "
                   "tiny: a temporary file)")
    a = p.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.steps = a.steps or (2 if a.tiny else 6)
    a.size = a.size or (64 if a.tiny else 1024)
    a.num_iter = a.num_iter or (4 if a.tiny else 64)
    a.precision = a.precision or ("bf16-mixed" if a.device.startswith("cuda") else "32-true")
    from tasks.bench import results_path

    a.out = a.out or results_path("unipic_official", a.tiny)
    return a


# ------------------------------------------------------------------------------------------------ shims and build
def _install_shims() -> None:
    """The stub for xtuner's model zoo (see the module docstring)."""
    def guess_load_checkpoint(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("xtuner.model.utils is stubbed here: no checkpoint is loaded (random init)")

    model, utils = types.ModuleType("xtuner.model"), types.ModuleType("xtuner.model.utils")
    utils.guess_load_checkpoint = guess_load_checkpoint
    model.utils = utils
    sys.modules["xtuner.model"], sys.modules["xtuner.model.utils"] = model, utils


def byte_tokenizer(padding_side: str = "right", **_: Any) -> Any:
    """A byte-level Qwen2TokenizerFast stand-in for Qwen2.5's BPE (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    vocab.update({f"<|unused_{i}|>": i for i in range(256, 151643)})  # unreachable fillers: no holes in the ids
    vocab.update({"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    out = Qwen2TokenizerFast(tokenizer_object=tok, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                             pad_token="<|endoftext|>", padding_side=padding_side)
    out.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return out


def _llm_builder(tiny: bool, dtype: torch.dtype):
    def build(**_: Any) -> Any:  # their from_pretrained(checkpoint/Qwen2.5-1.5B-Instruct, bf16, flash_attention_2)
        from transformers import AutoModelForCausalLM, Qwen2Config

        cfg = Qwen2Config(**{**QWEN25_15B, **(TINY_LLM if tiny else {})})
        return AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype, attn_implementation="sdpa")
    return build


def _siglip_builder(tiny: bool, dtype: torch.dtype):
    def build(**_: Any) -> Any:  # their SiglipVisionModel.from_pretrained(checkpoint/siglip2-so400m-patch16-512)
        from transformers import SiglipVisionConfig, SiglipVisionModel

        return SiglipVisionModel(SiglipVisionConfig(**(TINY_SIGLIP if tiny else SIGLIP2))).to(dtype)
    return build


def _import_official(a: argparse.Namespace) -> types.SimpleNamespace:
    repo = Path(a.repo)
    if not (repo / CONFIG).is_file():
        raise FileNotFoundError(f"official UniPic-1 code not found at {repo}; run benchmarks/fetch_upstream.sh UniPic")
    sys.path.insert(0, str(repo.resolve()))
    _install_shims()
    import mmengine
    import timm
    import transformers
    import xtuner
    from mmengine.config import Config

    cwd = os.getcwd()
    os.chdir(repo)  # their configs and scripts run from UniPic-1/
    try:
        cfg = Config.fromfile(CONFIG)
    finally:
        os.chdir(cwd)
    from src.builder import BUILDER
    from src.models.mar.mar import MAR
    from src.models.skywork_unipic_dev import SkyworkUnipicDev

    versions = dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                    timm=timm.__version__, mmengine=mmengine.__version__, xtuner=xtuner.__version__)
    return types.SimpleNamespace(repo=repo, cfg=cfg, BUILDER=BUILDER, MAR=MAR, Dev=SkyworkUnipicDev,
                                 versions=versions)


def model_config(up: types.SimpleNamespace, tiny: bool, dtype: torch.dtype) -> dict[str, Any]:
    """Their ``model`` dict with the hub loads swapped (see the module docstring); ``tiny`` shrinks MAR, LLM, SigLIP."""
    m = dict(up.cfg.model)
    m["vae"] = {**m["vae"], "ckpt_path": None}
    m["llm"] = dict(type=_llm_builder(tiny, dtype))
    m["siglip2"] = dict(type=_siglip_builder(tiny, dtype))
    m["tokenizer"] = dict(type=byte_tokenizer, padding_side="right")
    if tiny:
        mar = {k: v for k, v in m["mar"].items() if k != "type"}
        m["mar"] = dict(type=up.MAR, **{**mar, **TINY_MAR})
    return m


def build(up: types.SimpleNamespace, a: argparse.Namespace, device: torch.device, train_stage: str | None) -> Any:
    """Their SkyworkUnipicDev (``train_stage``) or SkyworkUnipic (gen), random init, built on ``device``."""
    dtype = torch.bfloat16 if (train_stage is None or a.precision == "bf16-true") and not a.tiny else torch.float32
    m = model_config(up, a.tiny, dtype)
    if train_stage is not None:
        m = dict(m, type=up.Dev, gradient_checkpointing=not a.no_checkpointing, **STAGES[train_stage])
    ctx = torch.device(device) if device.type != "cpu" else contextlib.nullcontext()
    with ctx:  # a CPU init of ~3 G parameters is slow
        model = up.BUILDER.build(m)
    if device.type == "meta":
        return model
    model = model.to(device)
    if dtype == torch.bfloat16:
        model = model.to(torch.bfloat16)  # their text2image.py's model.to(model.dtype); DeepSpeed bf16 in training
    return model


# --------------------------------------------------------------------------------------------------- the batches
def _gen_ids(tok: Any, template: str, text: str, image_slots: int = 0) -> torch.Tensor:
    body = ("<image>" * image_slots + "\n" if image_slots else "") + text
    return tok.encode(template.format(input=body), add_special_tokens=True, return_tensors="pt")[0]


def _collated(ids: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Their collate_func_gen / collate_func_und: right padding with 151645, a boolean mask."""
    from torch.nn.utils.rnn import pad_sequence

    out = {"input_ids": pad_sequence(ids, batch_first=True, padding_value=151645)}
    out["attention_mask"] = torch.zeros_like(out["input_ids"]).bool()
    for i, x in enumerate(ids):
        out["attention_mask"][i, :len(x)] = True
    if labels is not None:
        out["labels"] = pad_sequence(labels, batch_first=True, padding_value=-100)
    return out


def train_batch(model: Any, stage: str, batch: int, size: int, und_size: int, device: torch.device) -> dict:
    """One fixed batch of every kind the stage's loss weights use, in their datasets' formats: "Generate an image:
    <caption>" in their ChatML template; the edit instruction after ``m*n + buffer`` ``<image>`` slots (their
    image_edit.py's layout); the question after the understanding image's ``<image>`` slots, labels on the answer and
    its ``<|im_end|>``. Images uniform in [-1, 1] (seed 0)."""
    g = torch.Generator().manual_seed(0)
    img = lambda s: (torch.rand(batch, 3, s, s, generator=g) * 2 - 1).to(device)  # noqa: E731
    tok, tmpl, buf = model.tokenizer, model.prompt_template["INSTRUCTION"], model.mar.buffer_size
    out: dict[str, Any] = {"text2image": {"pixel_values": img(size), **_collated(
        [_gen_ids(tok, tmpl, f"Generate an image: {PROMPT}")] * batch)}}
    w = STAGES[stage]["loss_weights"]
    if w["image_edit"]:
        slots = (size // 16) ** 2 + buf
        out["image_edit"] = {"pixel_values_src": img(size), "pixel_values": img(size), **_collated(
            [_gen_ids(tok, tmpl, INSTRUCTION, slots)] * batch)}
    if w["image2text"]:
        prompt = _gen_ids(tok, tmpl, QUESTION, (und_size // 16) ** 2 + buf)
        full = torch.cat([prompt, torch.tensor(tok.encode(ANSWER + "<|im_end|>", add_special_tokens=False))])
        labels = full.clone()
        labels[:len(prompt)] = -100
        out["image2text"] = {"pixel_values": img(und_size), **_collated([full] * batch, [labels] * batch)}
    return {k: {n: t.to(device) if torch.is_tensor(t) else t for n, t in v.items()} for k, v in out.items()}


# ------------------------------------------------------------------------------------------------------ measuring
def _count(params: Any) -> int:
    return sum(p.numel() for p in params)


def param_counts(model: Any) -> dict[str, float]:
    """Millions, per component, beside the component counts of our card (zoo.unipic MODEL_CARD)."""
    mar = model.mar
    c = {"params_m": _count(model.parameters()), "llm_m": _count(model.llm.parameters()),
         "mar_m": _count(mar.parameters()), "mar_encoder_m": _count(mar.encoder_blocks.parameters()),
         "mar_decoder_m": _count(mar.decoder_blocks.parameters()), "diffloss_m": _count(mar.diffloss.parameters()),
         "mar_class_emb_m": _count(mar.class_emb.parameters()), "siglip2_m": _count(model.siglip2.parameters()),
         "siglip2_proj_m": _count(model.siglip2_proj.parameters()),
         "proj_in_out_m": _count(model.proj_in.parameters()) + _count(model.proj_out.parameters()),
         "vae_m": _count(model.vae.parameters()),
         "trainable_m": _count(p for p in model.parameters() if p.requires_grad)}
    return {k: v / 1e6 for k, v in c.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _cuda_noop_on_cpu(device: torch.device):
    """Their DiffLoss.sample calls ``.cuda()``: a no-op while sampling on a CPU (see the module docstring)."""
    if device.type == "cuda":
        yield
        return
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


def _file_hashes(repo: Path) -> str:
    h = hashlib.sha256()
    for rel in HASHED:
        h.update((repo / rel).read_bytes())
    return h.hexdigest()[:12]


def bench_train(up: types.SimpleNamespace, a: argparse.Namespace, device: torch.device, stage: str) -> dict:
    """Their step (see the module docstring), ``a.steps`` times on one fixed batch, RNGs reseeded as ours."""
    import numpy as np

    t0 = time.perf_counter()
    torch.manual_seed(0)
    np.random.seed(0)
    model = build(up, a, device, stage)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), eps=1e-15)
    size = 64 if a.tiny else model.mar.img_size  # ours: net.image_size (the MAR tables' 512)
    und = 64 if a.tiny else 512
    batch = train_batch(model, stage, a.batch, size, und, device)
    _sync(device)
    build_s = time.perf_counter() - t0
    counts = param_counts(model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if a.precision == "bf16-mixed" else \
        contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(1)
    np.random.seed(1)  # their orders (np.random.shuffle) and mask ratio (scipy truncnorm on numpy's RNG)
    times, losses, parts = [], [], {}
    for _ in range(a.steps):
        _sync(device)
        t = time.perf_counter()
        with autocast:
            out = model(batch, mode="loss")
            loss = sum(out.values())  # mmengine's parse_losses: the sum of every key holding 'loss'
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t)
        losses.append(float(loss.detach()))
        parts = {k: float(v.detach()) for k, v in out.items()}
    warm = times[min(2, len(times) - 1):]
    median = sorted(warm)[len(warm) // 2]
    prompt_tokens = {k: int(v["attention_mask"].sum(1)[0]) for k, v in batch.items()}
    return {"bench": "train", "stage": stage, "compile": "eager", "batch": a.batch, "image_size": size,
            "und_image_size": und, "precision": a.precision, "gradient_checkpointing": not a.no_checkpointing,
            "build_s": build_s, "first_step_s": times[0], "step_s_median": median, "step_s": times,
            "losses": losses, "last_losses": parts, "prompt_tokens": prompt_tokens, **counts,
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None}


def bench_gen(up: types.SimpleNamespace, a: argparse.Namespace, device: torch.device) -> dict:
    """Their scripts/text2image.py at grid 1: prepare_text_conditions + sample, twice (the first warms up)."""
    import numpy as np

    t0 = time.perf_counter()
    torch.manual_seed(0)
    np.random.seed(0)
    model = build(up, a, device, None).eval()
    _sync(device)
    out: dict[str, Any] = {"bench": "gen", "size": a.size, "num_iter": a.num_iter, "cfg": a.cfg,
                           "dtype": str(model.dtype), "batch": 1, "cfg_schedule": "constant", "temperature": 1.0,
                           "build_s": time.perf_counter() - t0, **param_counts(model)}
    cond = model.prepare_text_conditions(f"Generate an image: {PROMPT}", "Generate an image.")
    ids, mask = cond["input_ids"], cond["attention_mask"]  # (2, L): the prompt and the negative prompt
    out["prompt_tokens"] = [int(x) for x in mask.sum(1)]
    if a.cfg == 1.0:
        ids, mask = ids[:1], mask[:1]
    m = a.size // 16
    for rep in range(2):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t = time.perf_counter()
        with _cuda_noop_on_cpu(device):
            img = model.sample(input_ids=ids, attention_mask=mask, num_iter=a.num_iter, cfg=a.cfg,
                               cfg_schedule="constant", temperature=1.0, progress=False, image_shape=(m, m))
        _sync(device)
        out[f"seconds_run{rep}"] = time.perf_counter() - t
    out["image_shape"] = list(img.shape)
    out["image_finite"] = bool(torch.isfinite(img).all())
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out


DIFFERENCES = [
    "their understanding loss reads VAE + MAR-encoder features (released code; (size/16)^2 + 64 <image> slots); ours "
    "SigLIP2 (1024 slots at 512 px)",
    "ours replaces a training prompt by the negative one with p 0.1 inside the step; their datasets do it (not here)",
    "their MAR builds an unused 1000-class embedding (1.28 M)",
    "their LLM attention: flash_attention_2 in their config, sdpa here (no flash-attn wheel for this torch)",
    "tokenizer: byte-level stand-in for both (the real Qwen2.5 BPE gives fewer prompt tokens)",
]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.site:  # their pins before anything imports the image's newer transformers / timm
        sys.path.insert(0, str(Path(a.site).resolve()))
    from tasks.bench import git_commit

    up = _import_official(a)
    device = torch.device("meta" if a.mode == "count" else a.device)
    if device.type == "cuda":  # the same backend flags as bench_unipic.py (defaults)
        torch.backends.cuda.matmul.allow_tf32 = False
    head = {"impl": "official", "upstream": UPSTREAM, "upstream_commit_checked": UPSTREAM_COMMIT_CHECKED,
            "upstream_files_sha256": _file_hashes(up.repo),
            "model": "official:" + CONFIG + (" (tiny)" if a.tiny else ""),
            "command": "python3 benchmarks/unipic_official.py " + " ".join(shlex.quote(x) for x in argv),
            "git_commit": git_commit()[0][:12], "machine": platform.node(), "device": str(device),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "versions": up.versions,
            "attention": "sdpa", "tokenizer": "byte-level Qwen2TokenizerFast stand-in", "differences": DIFFERENCES}
    if a.mode == "count":
        for stage in a.stages:
            print(json.dumps({"stage": stage, **param_counts(build(up, a, device, stage))}))
        return 0
    rows = [bench_gen(up, a, device)] if a.mode == "gen" else []
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    for stage in (a.stages if a.mode == "train" else []):
        rows.append(bench_train(up, a, device, stage))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with open(a.out, "a") as f:
            f.write(json.dumps({**head, **rows[-1]}) + "\n")
        print(json.dumps({**head, **rows[-1]}), flush=True)
    if a.mode == "gen":
        with open(a.out, "a") as f:
            f.write(json.dumps({**head, **rows[0]}) + "\n")
        print(json.dumps({**head, **rows[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
