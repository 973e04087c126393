"""UniPic training: any mix of text-to-image, editing and understanding, one task for the paper's four stages.

Losses (official ``skywork_unipic_dev.py``): text-to-image and editing are MAR's diffusion loss on the masked tokens
of the target (editing with the source image in the prompt and as the decoder's ``x_con``); understanding is the
cross-entropy of the answer tokens. The total is ``sum(loss_weights[k] * L_k)`` over the batch's kinds (paper
U:G:E = 0.01 : 1 : 1; 0 : 1 : 0 in MAR pre-training). Prompts are "Generate an image: <caption>", replaced by the
negative prompt "Generate an image." with probability ``uncond_prob`` (the official datasets' 0.1; "Repeat this
image." for edits) so classifier-free guidance has an unconditional model. Stages differ only in freeze flags,
optimiser values and EMA (``configs/unipic/stage*.yaml``). Evaluation samples with the MaskGIT/CFG sampler and scores
the scene set with its exact judge: GenEval-style accuracy per category (``SceneJudgeScore``), edit accuracy
(``judge_edit``) and exact-match answers.
"""
from __future__ import annotations

import json
import math
import random
from typing import Any

import torch
import torch.nn.functional as F

from ._base import ZooTask

_DEFAULT_WEIGHTS = {"image2text": 0.01, "text2image": 1.0, "image_edit": 1.0}


class UniPicTask(ZooTask):
    """UniPic generation / editing / understanding training and scene-set evaluation.

    Args:
        model: registered model name (``unipic_1p5b``, ``unipic_tiny``).
        pretrained: False, a weight tag, or a local weight file (official UniPic / MAR files convert).
        model_kwargs: constructor overrides (``conditioning: bag`` = the MAR-only baseline).
        compile: ``torch.compile`` switch (``regional``: the MAR and LLM blocks).
        init_from: the earlier stage's checkpoint.
        lr: AdamW learning rate (5e-5 PT, 1e-5 alignment / CT, 5e-6 SFT).
        weight_decay: AdamW weight decay (0 PT, else 0.02).
        betas: AdamW betas ((0.9, 0.95)).
        eps: AdamW epsilon (1e-15).
        schedule: ``constant`` (PT) or ``cosine``, both after linear warm-up.
        warmup_ratio: warm-up fraction of the total steps (0.05 PT / alignment, 0.01 CT / SFT).
        loss_weights: ``image2text`` / ``text2image`` / ``image_edit`` weights.
        uncond_prob: probability of replacing a prompt by the negative prompt in training.
        freeze_llm: freeze the LLM (alignment).
        freeze_mar: freeze the whole MAR (encoder, decoder, DiffLoss).
        freeze_mar_decoder: freeze the MAR decoder and its position tables.
        freeze_siglip_proj: freeze the understanding projector.
        freeze_siglip: freeze the SigLIP tower.
        ema_decay: EMA of the weights (0.9999 PT / CT, 0.995 SFT; None = off); evaluation uses the EMA.
        eval_num_iter: MaskGIT steps when evaluating.
        eval_cfg: CFG scale when evaluating.
        eval_batches: batches per task sampled and judged per validation / test epoch.
        answer_tokens: max new tokens of an answer.
        sample_seed: seed of evaluation sampling.
    """

    def __init__(self, model: str = "unipic_tiny", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, compile: bool | str = False,
                 init_from: str | None = None, lr: float = 1e-5, weight_decay: float = 0.02,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-15, schedule: str = "cosine",
                 warmup_ratio: float = 0.01, loss_weights: dict[str, float] | None = None, uncond_prob: float = 0.1,
                 freeze_llm: bool = False, freeze_mar: bool = False, freeze_mar_decoder: bool = False,
                 freeze_siglip_proj: bool = False, freeze_siglip: bool = False, ema_decay: float | None = None,
                 eval_num_iter: int = 8, eval_cfg: float = 3.0, eval_batches: int = 1, answer_tokens: int = 8,
                 sample_seed: int = 0) -> None:
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
        object.__setattr__(self, "_freeze", dict(llm=freeze_llm, mar=freeze_mar, mar_decoder=freeze_mar_decoder,
                                                 siglip_proj=freeze_siglip_proj, siglip=freeze_siglip))
        super().__init__(model, pretrained, model_kwargs, compile, init_from)
        self.save_hyperparameters()
        self.loss_weights = dict(_DEFAULT_WEIGHTS if loss_weights is None else loss_weights)
        self.ema = None

    # ------------------------------------------------------------------------------------------- set-up
    def on_net_built(self) -> None:
        from tasks.metrics.scene_judge import SceneJudgeScore

        net, f = self.net, self._freeze
        if f["llm"] and net.llm is not None:
            net.llm.requires_grad_(False)
        if f["mar"]:
            net.mar.requires_grad_(False)
        if f["mar_decoder"]:
            for m in (net.mar.decoder_embed, net.mar.decoder_blocks, net.mar.decoder_norm):
                m.requires_grad_(False)
            net.mar.decoder_pos_embed_learned.requires_grad_(False)
            net.mar.diffusion_pos_embed_learned.requires_grad_(False)
        if getattr(net, "siglip", None) is not None:
            if f["siglip_proj"]:
                net.siglip_proj.requires_grad_(False)
            if f["siglip"]:
                net.siglip.requires_grad_(False)
        self.judge = torch.nn.ModuleDict({s: SceneJudgeScore() for s in ("val", "test")})

    def configure_optimizers(self) -> Any:
        params = [p for p in self.net.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: every module is frozen")
        hp = self.hparams
        opt = torch.optim.AdamW(params, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = max(1, int(round(hp.warmup_ratio * total)))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if hp.schedule == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.hparams.ema_decay:
            return
        if self.ema is None:  # built on first use: the network is on its device by now
            from timm.utils import ModelEmaV3

            object.__setattr__(self, "ema", ModelEmaV3(self.net, decay=self.hparams.ema_decay))
        self.ema.update(self.net)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema_state_dict"] = self.ema.module.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema_state_dict" in checkpoint:
            import copy

            ema = copy.deepcopy(self.net)
            ema.load_state_dict(checkpoint["ema_state_dict"])
            from timm.utils import ModelEmaV3

            holder = ModelEmaV3(ema, decay=self.hparams.ema_decay or 0.9999)
            object.__setattr__(self, "ema", holder)

    @property
    def eval_net(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.net

    # ------------------------------------------------------------------------------------------- losses
    def _prompts(self, texts: list[str], negative: str, slots: int = 0, t2i: bool = False) -> tuple:
        from zoo.unipic import chat_prompt, t2i_text, tokenize

        out = []
        for t in texts:
            if self.training and random.random() < self.hparams.uncond_prob:
                out.append(chat_prompt(negative, slots))
            else:
                out.append(chat_prompt(t2i_text(t) if t2i else t, slots))
        return tokenize(self.net.tokenizer, out, self.device)

    def _masked(self, tokens: torch.Tensor) -> torch.Tensor:
        orders = self.net.mar.sample_orders(tokens.shape[0], tokens.shape[1])
        return self.net.mar.random_masking(orders).to(tokens.device)

    def text2image_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        from zoo.unipic import NEGATIVE_PROMPT

        tokens, grid = self.net.encode_images(batch["image"])
        mask = self._masked(tokens)
        ids, attn = self._prompts(list(batch["caption"]), NEGATIVE_PROMPT, t2i=True)
        z = self.network(tokens, mask, ids, attn, grid)
        return self.net.mar.forward_loss(z, tokens, mask)

    def image_edit_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        from zoo.unipic import EDIT_NEGATIVE_PROMPT

        both, grid = self.net.encode_images(torch.cat([batch["source"], batch["target"]]))
        src, tgt = both.chunk(2)
        mask = self._masked(tgt)
        ids, attn = self._prompts(list(batch["instruction"]), EDIT_NEGATIVE_PROMPT,
                                  slots=src.shape[1] + self.net.mar.buffer_size)
        z = self.network(tgt, mask, ids, attn, grid, source_tokens=src)
        return self.net.mar.forward_loss(z, tgt, mask)

    def image2text_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        from zoo.unipic import chat_prompt, tokenize

        net = self.net
        prompts = [chat_prompt(q, net.und_token_count()) for q in batch["question"]]
        full = [p + a + "<|im_end|>" for p, a in zip(prompts, batch["answer"], strict=True)]
        ids, attn = tokenize(net.tokenizer, full, self.device)
        labels = ids.masked_fill(~attn, -100)
        for r, p in enumerate(prompts):
            labels[r, :len(net.tokenizer.encode(p))] = -100  # only the answer (and its end token) is predicted
        logits = net.understanding_logits(batch["image"], ids, attn)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        losses = {}
        for kind, sub in batch.items():
            if sub is None:
                continue
            w = self.loss_weights.get(kind, 1.0)
            if w == 0:
                continue
            losses[kind] = getattr(self, f"{kind}_loss")(sub)
        if not losses:
            raise ValueError(f"no data kind with a non-zero loss weight in the batch ({list(batch)}; weights "
                             f"{self.loss_weights})")
        losses["loss"] = sum(self.loss_weights.get(k, 1.0) * v for k, v in losses.items())
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch)
        bs = max(len(next(iter(v.values()))) for v in batch.values() if v is not None)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=True, batch_size=bs)
        return losses["loss"]

    # ---------------------------------------------------------------------------------------- evaluation
    def _kind(self, dataloader_idx: int) -> str:
        dm = self.trainer.datamodule
        return dm.eval_tasks[dataloader_idx]

    def _evaluate(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int, prefix: str) -> None:
        from datamodules.scenes import Scene
        from tasks.metrics.scene_judge import judge, judge_edit
        from zoo.unipic import answer_questions, edit_images, generate_images

        kind = self._kind(dataloader_idx)
        bs = len(next(iter(batch.values())))
        torch.manual_seed(self.hparams.sample_seed + batch_idx)
        loss = self.compute_losses({kind: batch}).get(kind) if self.loss_weights.get(kind, 1.0) else None
        if loss is not None:
            self.log(f"{prefix}/{kind}_loss", loss, batch_size=bs, add_dataloader_idx=False)
        if batch_idx >= self.hparams.eval_batches:
            return
        net, hp = self.eval_net, self.hparams
        size = batch.get("image", batch.get("target")).shape[-1]
        if kind == "text2image" and all(batch["category"]):
            images = generate_images(net, list(batch["caption"]), hp.eval_num_iter, hp.eval_cfg, image_size=size,
                                     seed=hp.sample_seed + batch_idx)
            verdicts = [judge(_to_pil(im), None, c, p) for im, c, p in
                        zip(images, batch["category"], batch["caption"], strict=True)]
            self.judge[prefix].update_verdicts(verdicts, list(batch["category"]))
        elif kind == "image_edit" and all(batch["target_scene"]):
            images = edit_images(net, batch["source"], list(batch["instruction"]), hp.eval_num_iter, hp.eval_cfg,
                                 seed=hp.sample_seed + batch_idx)
            ok = [judge_edit(_to_pil(im), Scene.from_dict(json.loads(s))) for im, s in
                  zip(images, batch["target_scene"], strict=True)]
            self.log(f"{prefix}/edit_acc", sum(ok) / len(ok), batch_size=len(ok), add_dataloader_idx=False)
        elif kind == "image2text" and net.llm is not None and net.understanding != "none":
            answers = answer_questions(net, batch["image"], list(batch["question"]), hp.answer_tokens)
            em = [a.strip().lower() == b.strip().lower() for a, b in zip(answers, batch["answer"], strict=True)]
            self.log(f"{prefix}/vqa_em", sum(em) / len(em), batch_size=len(em), add_dataloader_idx=False)

    def _log_judge(self, prefix: str) -> None:
        metric = self.judge[prefix]
        if int(metric.total.sum()) == 0:
            return
        for k, v in metric.compute().items():
            self.log(f"{prefix}/geneval_{k}", v)
        metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, batch_idx, dataloader_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, batch_idx, dataloader_idx, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_judge("val")

    def on_test_epoch_end(self) -> None:
        self._log_judge("test")

    # ------------------------------------------------------------------------------------------ benchmarks
    def example_batch(self, batch_size: int) -> dict[str, Any]:
        net, s = self.net, self.net.image_size
        img = lambda: torch.rand(batch_size, 3, s, s, device=self.device) * 2 - 1  # noqa: E731
        batch: dict[str, Any] = {"text2image": {"image": img(), "caption": ["a red circle left of a blue square"] *
                                                batch_size}}
        if self.loss_weights.get("image_edit", 0):
            batch["image_edit"] = {"source": img(), "target": img(), "instruction": ["make the circle green"] *
                                   batch_size}
        if self.loss_weights.get("image2text", 0) and net.understanding != "none":
            u = net.und_image_size
            batch["image2text"] = {"image": torch.rand(batch_size, 3, u, u, device=self.device) * 2 - 1,
                                   "question": ["how many circles are there?"] * batch_size,
                                   "answer": ["two"] * batch_size}
        return batch


def _to_pil(image: torch.Tensor):
    from PIL import Image

    arr = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)
