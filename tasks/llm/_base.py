"""``LLMTask``: the base of every LLM-side LightningModule, on the :class:`tasks._base.ZooTask` conventions.

The network is ``self.net`` (checkpoint keys ``net.*``, clean under ``compile``), built from ``model`` +
``model_kwargs`` in one of two ways:

* a registered zoo model (``uni_encoder_tiny``, ``name.tag``, ``local-dir:``, ``hf-hub:``): :func:`zoo.create_model`,
  exactly as in ``ZooTask`` (``pretrained``, ``init_from`` and ``compile`` as there);
* anything else is a causal-LM spec for :func:`zoo.llm.build_causal_lm`: a family name (``llama``, ``qwen2``, ...)
  whose ``model_kwargs`` are config fields, or a local Hugging Face model folder (its weights; offline).
  ``init_from`` loads an earlier stage's checkpoint into it; ``compile: regional`` compiles each decoder layer in place
  (the LLM tasks call the decoder and the LM head separately, so a whole-model ``compile: true`` would never run and
  is refused).

``data_links`` (e.g. ``vocab_size``) are read from the datamodule in ``setup`` when the config leaves them out and
written back into ``model_kwargs``, so ``load_from_checkpoint`` needs no config.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

import zoo
from tasks._base import ZooTask
from zoo.llm import build_causal_lm, decoder_layers


def is_zoo_model_spec(model: str) -> bool:
    """True for what :func:`zoo.create_model` builds (a registered name, ``name.tag``, ``local-dir:``, ``hf-hub:``)."""
    return model.startswith(("local-dir:", "hf-hub:")) or zoo.is_model(model)


class LLMTask(ZooTask):
    """Base LLM task.

    Args:
        model: a registered zoo model (``zoo.list_models()``), or a causal-LM spec: a family name (``llama``,
            ``qwen2``, ``mistral``, ``gemma2``) or a local Hugging Face model folder.
        pretrained: zoo models: False, True, a weight tag, or a local weight file/folder (causal LMs: weights come
            from the folder given as ``model``).
        model_kwargs: constructor overrides of the zoo model, or config fields of the causal LM.
        compile: False, True / a mode (whole network; zoo models only), or 'regional' (each transformer block).
        init_from: an earlier stage's checkpoint loaded into the network when it is built.
    """

    def __init__(
        self,
        model: str,
        pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None,
        compile: bool | str = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__(model, pretrained, model_kwargs, compile, init_from)

    @property
    def builds_causal_lm(self) -> bool:
        return not is_zoo_model_spec(self.model_name)

    def create_network(self) -> nn.Module:
        if not self.builds_causal_lm:
            return super().create_network()
        if self.pretrained:
            raise ValueError(f"{type(self).__name__}: pretrained={self.pretrained!r} with the causal-LM spec "
                             f"{self.model_name!r}: give the weights' folder as `model` instead")
        if self.compile_mode and self.compile_mode != "regional":
            raise ValueError(f"{type(self).__name__}: compile={self.compile_mode!r}: the LLM tasks call the decoder "
                             "and its head separately; use compile: regional (each decoder layer, in place)")
        return build_causal_lm(self.model_name, **self.model_kwargs)

    def compile_regions(self) -> list[nn.Module]:
        return decoder_layers(self.net) if self.builds_causal_lm else super().compile_regions()

    def to_device(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """A list of variable-length tensors (prompts, completions) moved to the task's device."""
        return [x.to(self.device) for x in xs]
