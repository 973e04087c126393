"""sharezoo models: plain ``nn.Module``s behind a timm-style registry. Never imports Lightning."""
from ._builder import TASK_PREFIX, build_model, load_checkpoint, strip_task_prefix
from ._cache import cache_dir
from ._data_config import register_data_config, resolve_data_config
from ._card import count_params, model_card, model_card_dict
from ._factory import create_model, save_pretrained
from ._pretrained import PretrainedCfg, PretrainedWeightsError, is_offline, resolve_pretrained_file
from ._registry import (
    get_pretrained_cfg,
    is_model,
    list_models,
    list_pretrained,
    model_module,
    register_model,
    register_pretrained_cfgs,
)

# model families: importing a module registers its entrypoints
from . import dens3r, fusionreid, pepsi, ppgflowecg  # noqa: E402,F401
from . import uni_encoder  # noqa: E402,F401  (LLM side; primitives in zoo.llm)
from . import neuropictor  # noqa: E402,F401
from . import cmrag  # noqa: E402,F401
from . import cronusvla  # noqa: E402,F401
from . import neo  # noqa: E402,F401
from . import unipic  # noqa: E402,F401

__all__ = [
    "PretrainedCfg", "PretrainedWeightsError", "build_model", "count_params", "create_model", "get_pretrained_cfg",
    "is_model", "is_offline", "list_models", "list_pretrained", "load_checkpoint", "model_card", "model_card_dict",
    "model_module", "register_model", "register_pretrained_cfgs", "resolve_pretrained_file", "save_pretrained",
    "cache_dir", "register_data_config", "resolve_data_config", "TASK_PREFIX", "strip_task_prefix",
]
