"""Weight manifest entries, offline-first resolution, sha256 verification and safetensors loading (tied weights, which
safetensors stores once, come back tied: :func:`load_into`).

Resolution order for a weight (DESIGN.md "Weights"): explicit path -> cache dir (``cache_dir=`` ->
``$SHAREZOO_CACHE`` -> ``~/.cache/sharezoo``, the one policy of :func:`zoo.cache_dir`; then the Hugging Face hub
cache) -> download, never when ``HF_HUB_OFFLINE`` or ``SHAREZOO_OFFLINE`` is set (read at call time).

``SHAREZOO_OFFLINE=1`` implies the offline modes of every library the project calls (``HF_HUB_OFFLINE``,
``TRANSFORMERS_OFFLINE``, ``HF_DATASETS_OFFLINE``; timm, open_clip and diffusers go through huggingface_hub), applied
at ``zoo`` import and again at call time, never overriding a variable the user set; library pretrained loads
(:func:`try_pretrained_backbone`) then also run with socket connects refused, so url-only weights cannot be fetched.
"""
from __future__ import annotations

import dataclasses
import hashlib
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._cache import cache_dir as _cache_dir

_logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


class PretrainedWeightsError(RuntimeError):
    """A weight could not be resolved, verified or loaded."""


@dataclass
class PretrainedCfg:
    """One weight in the manifest.

    Args:
        sha256: hex digest of the safetensors file (required).
        file: file name of the weight (inside the hub repo, at the url, and in the cache).
        hf_hub_id: Hugging Face hub repo holding ``file``.
        url: direct download location of ``file``.
        preprocessing: what the weight expects (image ``input_size``/``mean``/``std``/``interpolation``;
            signal ``fs``/``leads``/``band``; ...).
        license: licence of the weight.
        source: where the weight came from (paper repo, our training run, conversion of ...).
        metrics: reported metrics of this weight, e.g. ``{'market1501': {'mAP': 91.7, 'rank1': 96.3}}``.
        classifier: state-dict key prefixes of the classification heads (dropped when num_classes differs).
        model_kwargs: constructor kwargs the weight needs (e.g. ``num_classes``).
        notes: free text.
    """

    sha256: str
    file: str = "model.safetensors"
    hf_hub_id: str | None = None
    url: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    license: str = "unknown"
    source: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    classifier: tuple[str, ...] = ()
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def validate(self, key: str) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256.lower()):
            raise ValueError(f"{key}: sha256 must be a 64-character hex digest")
        if not self.file.endswith(".safetensors"):
            raise ValueError(f"{key}: weights must be safetensors, got {self.file!r}")
        if not (self.hf_hub_id or self.url):
            raise ValueError(f"{key}: needs hf_hub_id or url")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classifier"] = list(self.classifier)
        return d


#: environment variables of the libraries' own offline modes that ``SHAREZOO_OFFLINE=1`` implies
LIBRARY_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def apply_offline_mode() -> bool:
    """Make ``SHAREZOO_OFFLINE=1`` imply the libraries' offline modes; True when the project flag is set.

    Sets each of :data:`LIBRARY_OFFLINE_VARS` the user has not set, and the ``HF_HUB_OFFLINE`` constants that
    huggingface_hub (and diffusers/datasets, which copy it) read once at their import, when those are already loaded.
    """
    if os.environ.get("SHAREZOO_OFFLINE", "").strip().lower() not in _TRUE:
        return False
    for var in LIBRARY_OFFLINE_VARS:
        os.environ.setdefault(var, "1")
    if os.environ["HF_HUB_OFFLINE"].strip().lower() in _TRUE:
        for name, mod in list(sys.modules.items()):
            if mod is not None and (name in ("huggingface_hub.constants", "datasets.config")
                                    or name.startswith("diffusers.")) and getattr(mod, "HF_HUB_OFFLINE", None) is False:
                mod.HF_HUB_OFFLINE = True
    return True


@contextlib.contextmanager
def no_network():
    """Refuse every name lookup and socket connect in this block (an ``OSError`` naming ``SHAREZOO_OFFLINE``)."""
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def refuse(*args, **kwargs):  # noqa: ARG001
        raise OSError(f"network access refused: SHAREZOO_OFFLINE/HF_HUB_OFFLINE is set ({args[-1]!r})")

    socket.socket.connect, socket.getaddrinfo = refuse, refuse
    try:
        yield
    finally:
        socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``SHAREZOO_OFFLINE`` is set (read now, not at import).

    ``SHAREZOO_OFFLINE`` also switches the libraries' offline modes on here (:func:`apply_offline_mode`).
    """
    apply_offline_mode()
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "SHAREZOO_OFFLINE"))


def cache_path(name: str, cfg: PretrainedCfg, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``name`` (``arch.tag``) lives in the sharezoo cache: ``<cache>/<arch.tag>/<file>`` (``zoo.cache_dir``)."""
    return _cache_dir(name, cache_dir) / cfg.file


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str, name: str, recorded_by: str = "the manifest",
                  remedy: str | None = None) -> None:
    """Refuse ``path`` unless its sha256 is ``expected`` (recorded by ``recorded_by``, named in the error)."""
    got = sha256_file(path)
    if got != expected.lower():
        remedy = remedy or f"Delete the file and re-fetch it with `sharezoo download {name}`."
        raise PretrainedWeightsError(
            f"sha256 mismatch for {name}: {path} has {got}, {recorded_by} records {expected}. Refusing to load. "
            f"{remedy}"
        )


def _hf_cached(cfg: PretrainedCfg) -> Path | None:
    if not cfg.hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(cfg.hf_hub_id, cfg.file)
    except Exception:  # noqa: BLE001 - a broken hub cache is a miss, not a crash
        return None
    return Path(hit) if isinstance(hit, str) else None


def _download(name: str, cfg: PretrainedCfg, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        src = Path(hf_hub_download(cfg.hf_hub_id, cfg.file))
        shutil.copyfile(src, dest)
        return dest
    assert cfg.url
    from tqdm.auto import tqdm

    with urllib.request.urlopen(cfg.url) as r, tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        total = int(r.headers.get("Content-Length", 0)) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
            while block := r.read(1 << 20):
                tmp.write(block)
                bar.update(len(block))
    os.replace(tmp.name, dest)
    return dest


def resolve_pretrained_file(
    name: str, cfg: PretrainedCfg, cache_dir: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Find (or fetch) the verified weight file for ``name`` = ``arch.tag``.

    Raises:
        PretrainedWeightsError: offline cache miss, download failure or sha256 mismatch.
    """
    local = cache_path(name, cfg, cache_dir)
    candidates = [local]
    hf = _hf_cached(cfg)
    if hf is not None:
        candidates.append(hf)
    for cand in candidates:
        if cand.is_file():
            verify_sha256(cand, cfg.sha256, name)
            return cand
    if is_offline() or not download:
        raise PretrainedWeightsError(
            f"weight {name} is not cached and downloads are off (HF_HUB_OFFLINE/SHAREZOO_OFFLINE). "
            f"Expected the file {local} (or {cfg.file} of {cfg.hf_hub_id or cfg.url} in the HF hub cache). "
            f"On a machine with network run `sharezoo download {name}` (and copy {local.parent} here), "
            f"or pass pretrained=<path to {cfg.file}>."
        )
    try:
        path = _download(name, cfg, local)
    except Exception as e:  # noqa: BLE001
        raise PretrainedWeightsError(f"downloading {name} from {cfg.hf_hub_id or cfg.url} failed: {e}") from e
    try:
        verify_sha256(path, cfg.sha256, name)
    except PretrainedWeightsError:
        path.unlink(missing_ok=True)
        raise
    return path


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, or (upstream checkpoints) a torch file with ``weights_only=True``.

    A ``{'state_dict': ...}`` / ``{'model': ...}`` wrapper is unwrapped.
    """
    return unwrap_state_dict(read_weight_file(path), path)


def read_weight_file(path: str | os.PathLike) -> Any:
    """The object stored in a weight file, as saved (safetensors: its tensors; torch: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return _read_safetensors(path)
        import argparse

        # released upstream checkpoints (DUSt3R/MASt3R lineage) keep their training args as a Namespace
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise PretrainedWeightsError(f"cannot read weights from {path}: {e}") from e


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, with the tied names that ``safetensors.torch.save_model`` dropped put back.

    safetensors stores a tensor shared by several state-dict keys (tied input/output embeddings) once; ``save_model``
    (which :func:`zoo.save_pretrained` uses) records each dropped name in the file's metadata as ``dropped -> kept``.
    The dropped names come back here as the kept tensor itself, so the state dict has every key the model saved.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        metadata = f.metadata() or {}
    for dropped, kept in metadata.items():
        if dropped not in sd and kept in sd:
            sd[dropped] = sd[kept]
    return sd


def tied_keys(state_dict: dict[str, torch.Tensor]) -> list[list[str]]:
    """Groups of keys of ``state_dict`` that are one tensor (tied weights: same storage, offset, shape, stride).

    Meta and empty tensors are never grouped (they have no storage to share).
    """
    groups: dict[tuple, list[str]] = {}
    for k, t in state_dict.items():
        ident = _alias_identity(t)
        if ident is not None:
            groups.setdefault(ident, []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def _alias_identity(t: Any) -> tuple | None:
    """What two names of one tensor share (storage, offset, shape, stride, dtype); None when it cannot be shared."""
    if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.numel() == 0:
        return None
    try:
        return t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype
    except (RuntimeError, NotImplementedError):  # a tensor subclass without a plain storage (DTensor, ...)
        return None


def _fill_tied(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor], source: str
               ) -> dict[str, torch.Tensor]:
    """Give each tied key of the model that ``state_dict`` lacks the value of its twin (a file that stores a tied
    tensor once: safetensors, Hugging Face folders); twins that are both in the file must agree."""
    for group in tied_keys(own):
        present = [k for k in group if k in state_dict]
        if not present:
            continue  # missing: reported by the strict key check
        first = state_dict[present[0]]
        for k in present[1:]:
            other, ident = state_dict[k], _alias_identity(first)
            if other is first or (ident is not None and _alias_identity(other) == ident):
                continue  # one tensor under both names (a torch checkpoint keeps the sharing)
            if not (isinstance(other, torch.Tensor) and isinstance(first, torch.Tensor) and other.shape == first.shape
                    and other.dtype == first.dtype and torch.equal(other.to(first.device), first)):
                raise PretrainedWeightsError(
                    f"{source}: {present[0]} and {k} are one tied tensor in the model but differ in the state dict; "
                    "refusing to load one of them silently"
                )
        for k in group:
            state_dict.setdefault(k, first)
    return state_dict


def unwrap_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object (``state_dict`` / ``model`` / ``module`` / ``net`` wrappers)."""
    for key in ("state_dict", "model", "module", "net"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return obj


def load_into(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    classifier: tuple[str, ...] = (),
    strict: bool = True,
) -> None:
    """Load ``state_dict`` into ``model``; classifier keys whose shape differs are dropped with a warning.

    Tied weights (keys of ``model`` that are one tensor) need only one of their keys in ``state_dict``; they stay
    tied (the values are copied into the model's tensors), and twins that are both given must be equal.
    Any other missing/unexpected key or shape mismatch raises (``strict=True``), naming ``source``.
    """
    own = model.state_dict()
    state_dict = _fill_tied(own, dict(state_dict), source)
    for k in list(state_dict):
        if k in own and own[k].shape != state_dict[k].shape and any(k.startswith(p) for p in classifier):
            _logger.warning("%s: dropping %s (shape %s != model %s; num_classes differs)",
                            source, k, tuple(state_dict[k].shape), tuple(own[k].shape))
            del state_dict[k]
    bad = [k for k in state_dict if k in own and own[k].shape != state_dict[k].shape]
    if bad:
        details = ", ".join(f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:5])
        raise PretrainedWeightsError(f"{source}: shape mismatch ({details})")
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not any(k.startswith(p) for p in classifier)]
    if strict and (missing or unexpected):
        raise PretrainedWeightsError(
            f"{source}: state dict does not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )


def try_pretrained_backbone(create, description: str):
    """Build a backbone with its library's pretrained weights when reachable (online or cached), else random.

    ``create(pretrained: bool)`` builds it (timm/open_clip/...); a failure to fetch logs a warning and falls
    back to random init, so offline machines still build the architecture. Offline, no socket connect is made.
    """
    try:
        if is_offline():  # cached weights still load; nothing is fetched, whatever the library would try
            with no_network():
                return create(pretrained=True)
        return create(pretrained=True)
    except Exception as e:  # noqa: BLE001
        _logger.warning("pretrained weights for %s unavailable (%s: %s); using random init",
                        description, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return create(pretrained=False)


apply_offline_mode()  # at ``zoo`` import: libraries imported later read their offline flags from the environment
