"""CronusVLA closed-loop inference: the feature deque (one VLM pass per control step), history padding, action
post-processing (clip, gripper binarisation, q01/q99 un-normalisation), CogACT's adaptive ensemble and the sticky
gripper of the released SimplerEnv policy.

``CronusVLAPolicy(cuda_graphs=True)`` replays the two fixed-shape parts of a control step as CUDA graphs
(:class:`zoo.layers.CapturedCall`): the single-frame VLM pass (static pixel / prompt buffers, one graph per input
shape, so a prompt of another length captures another) and the DDIM + CFG sampling of the action chunk (static
feature-chunk buffer). The deque, padding, post-processing, ensemble and sticky gripper stay in Python. Off CUDA the
option changes nothing (the same eager calls).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from .layers.cuda_graph import CapturedCall

__all__ = ["AdaptiveEnsembler", "StickyGripper", "CronusVLAPolicy", "pad_history", "postprocess_actions",
           "ENSEMBLE_HORIZON"]

#: ensemble horizon K by robot (the released SimplerEnv policy: motion per frame is larger on WidowX/Bridge)
ENSEMBLE_HORIZON = {"widowx": 7, "google": 2}


def pad_history(history: list[torch.Tensor], current: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The feature chunk ``[B, M, d]`` from up to ``M - 1`` cached ``[B, d]`` past features (oldest first) and the
    current one: a short history is padded in front by repeating its *oldest* feature; with no history the current
    feature fills every slot."""
    frames = list(history)[-(num_frames - 1):] if num_frames > 1 else []
    frames = frames + [current]
    frames = [frames[0]] * (num_frames - len(frames)) + frames
    return torch.stack(frames, dim=1)


def postprocess_actions(normalized: torch.Tensor, q01: torch.Tensor, q99: torch.Tensor, mask: torch.Tensor,
                        gripper_threshold: float = 0.5) -> torch.Tensor:
    """Clip to [-1, 1], binarise the gripper (last dim) at ``gripper_threshold``, un-normalise the masked dims with
    the q01/q99 bounds (``0.5 (a + 1) (q99 - q01) + q01``)."""
    a = normalized.clamp(-1, 1)
    a = torch.cat([a[..., :-1], (a[..., -1:] > gripper_threshold).to(a.dtype)], dim=-1)
    q01, q99, mask = q01.to(a), q99.to(a), mask.to(a)
    return torch.where(mask.bool(), 0.5 * (a + 1) * (q99 - q01) + q01, a)


class AdaptiveEnsembler:
    """CogACT's adaptive action ensemble: the action for this step averages the predictions for this step made by
    the last ``horizon`` chunks, each weighted by ``exp(alpha * cos(pred, newest))`` (weights normalised).

    Args:
        horizon: K, chunks kept (7 WidowX, 2 Google robot).
        alpha: similarity temperature (0.1).
    """

    def __init__(self, horizon: int, alpha: float = 0.1) -> None:
        self.horizon, self.alpha = horizon, alpha
        self.chunks: deque[np.ndarray] = deque(maxlen=horizon)
        self.last_weights: np.ndarray | None = None

    def reset(self) -> None:
        self.chunks.clear()

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """``chunk``: ``[T, A]`` predicted now (or ``[A]``); returns the ensembled action for this step."""
        self.chunks.append(np.asarray(chunk, dtype=np.float64))
        n = len(self.chunks)
        # the chunk predicted i steps ago holds this step's action at index i
        preds = np.stack([c if c.ndim == 1 else c[min(n - 1 - j, len(c) - 1)] for j, c in enumerate(self.chunks)])
        ref = preds[-1]
        cos = preds @ ref / (np.linalg.norm(preds, axis=1) * np.linalg.norm(ref) + 1e-7)
        w = np.exp(self.alpha * cos)
        self.last_weights = w / w.sum()
        return (self.last_weights[:, None] * preds).sum(0)


class StickyGripper:
    """Once the gripper command changes, repeat the new command for ``repeat`` steps (the released Google-robot
    policy: 10).

    Args:
        repeat: steps a changed gripper command is held.
    """

    def __init__(self, repeat: int = 10) -> None:
        self.repeat = repeat
        self.reset()

    def reset(self) -> None:
        self.value: float | None = None
        self.left = 0

    def __call__(self, gripper: float) -> float:
        if self.left > 0:
            self.left -= 1
            return self.value  # type: ignore[return-value]
        if self.value is not None and gripper != self.value:
            self.left = self.repeat - 1
        self.value = gripper
        return gripper


class CronusVLAPolicy:
    """Closed-loop CronusVLA: ``act(image)`` runs the VLM once on the current frame, forms the feature chunk from the
    cached past features, samples a chunk and returns it post-processed (``[T, A]`` in dataset units).

    Sampling noise: on the CPU from the policy's own generator (``seed``); on CUDA from the device's default generator
    (seed it with ``torch.manual_seed``). With ``cuda_graphs`` the noise is drawn inside the sampling graph from that
    same generator: torch's CUDA generator is graph-safe (each replay reads the generator's current seed and offset
    and advances the offset as an eager call would), so a graphed step draws exactly the noise the eager step would
    from the same generator state, and no static noise buffer or extra copy is needed.

    Args:
        model: a ``CronusVLA`` network (its q01/q99 buffers un-normalise).
        input_ids: ``[1, L]`` the tokenised prompt of the episode (with the cognition suffix).
        attention_mask: ``[1, L]``.
        num_steps: DDIM steps (10).
        cfg_scale: guidance scale (1.5).
        time_axis_cfg_quirk: the released guidance quirk (see ``sample_action_chunk``).
        seed: sampling noise seed (CPU generator).
        bank: optional ``FeatureActionBank`` (retrieval-prior models).
        cuda_graphs: replay the VLM pass and the action sampling as CUDA graphs on a CUDA model (captured on first
            use, per input shape); no effect off CUDA.
        graph_warmup: eager calls before each capture (lazy initialisation, compiled regions' first call).
    """

    def __init__(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 num_steps: int = 10, cfg_scale: float = 1.5, time_axis_cfg_quirk: bool = True, seed: int = 0,
                 bank: object | None = None, cuda_graphs: bool = False, graph_warmup: int = 1) -> None:
        self.model = model
        self.set_prompt(input_ids, attention_mask)
        self.num_steps, self.cfg_scale, self.quirk = num_steps, cfg_scale, time_axis_cfg_quirk
        self.generator = torch.Generator().manual_seed(seed)
        self.bank = bank
        self.cuda_graphs, self.graph_warmup = cuda_graphs, graph_warmup
        # shape key -> (static inputs, captured call)
        self._vlm_graphs: dict[tuple, tuple[tuple[torch.Tensor, ...], CapturedCall]] = {}
        self._sample_graphs: dict[tuple, tuple[tuple[torch.Tensor | None, ...], CapturedCall]] = {}
        self.history: deque[torch.Tensor] = deque(maxlen=max(model.num_frames - 1, 1))
        self.vlm_passes = 0

    def reset(self) -> None:
        self.history.clear()

    def set_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Use another prompt from the next step on (a graph of its length is captured on first use); the feature
        cache is kept (``reset`` clears it)."""
        self.input_ids = input_ids
        self.attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask

    @property
    def captured_graphs(self) -> int:
        """CUDA graphs captured so far (VLM passes per input shape + samplers); 0 off CUDA or without the option."""
        return len(self._vlm_graphs) + len(self._sample_graphs)

    def _graphed(self, device: torch.device) -> bool:
        return self.cuda_graphs and device.type == "cuda"

    @staticmethod
    def _replay(graphs: dict, key: tuple, inputs: tuple[torch.Tensor | None, ...], fn, device: torch.device,
                warmup: int, reset=None) -> torch.Tensor:
        """Copy ``inputs`` into the static buffers of ``key`` (capturing ``fn(*buffers)`` the first time) and replay;
        returns a copy of the output (the static one is overwritten by the next replay)."""
        entry = graphs.get(key)
        if entry is None:
            bufs = tuple(None if x is None else x.clone() for x in inputs)
            entry = graphs[key] = (bufs, CapturedCall(lambda: fn(*bufs), device, warmup, reset=reset))
        else:
            for dst, src in zip(entry[0], inputs):
                if dst is not None:
                    dst.copy_(src)
        return entry[1]().clone()

    @torch.no_grad()
    def frame_feature(self, image: torch.Tensor) -> torch.Tensor:
        """The current frame's cognition feature ``[1, d]`` (one VLM pass; nothing cached)."""
        m = self.model
        dev = next(m.parameters()).device
        img = image.to(dev)[None] if image.ndim == 3 else image.to(dev)
        ids, mask = self.input_ids.to(dev), self.attention_mask.to(dev)
        if not self._graphed(dev):
            return m.frame_features(img, ids, mask)
        key = (tuple(img.shape), img.dtype, tuple(ids.shape), ids.dtype, mask.dtype)
        return self._replay(self._vlm_graphs, key, (img, ids, mask), m.frame_features, dev, self.graph_warmup)

    @torch.no_grad()
    def features(self, image: torch.Tensor) -> torch.Tensor:
        """One VLM pass on ``[3, H, W]`` (or ``[1, 3, H, W]``) in [0, 1]; pushes it to the cache; the chunk."""
        m = self.model
        cur = self.frame_feature(image)
        self.vlm_passes += 1
        chunk = pad_history(list(self.history), cur, m.num_frames)
        if m.num_frames > 1:
            self.history.append(cur)
        return chunk

    @torch.no_grad()
    def sample(self, chunk: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised action chunk ``[B, T, A]`` sampled (DDIM + CFG) from a feature chunk ``[B, M, d]``."""
        m = self.model
        gen = self.generator if chunk.device.type == "cpu" else None

        def run(c: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
            return m.sample_actions(c, self.num_steps, self.cfg_scale, self.quirk, generator=gen, prior_actions=p)

        dev = chunk.device
        if not self._graphed(dev):
            return run(chunk, prior)
        key = (tuple(chunk.shape), chunk.dtype, None if prior is None else (tuple(prior.shape), prior.dtype))
        reset = None
        if key not in self._sample_graphs:  # the warm-up calls draw noise: put the generator back each time
            state = torch.cuda.get_rng_state(dev)

            def reset() -> None:
                torch.cuda.set_rng_state(state, dev)

        return self._replay(self._sample_graphs, key, (chunk, prior), run, dev, self.graph_warmup, reset)

    @torch.no_grad()
    def act(self, image: torch.Tensor) -> np.ndarray:
        """The post-processed action chunk ``[T, A]`` for the current frame."""
        m = self.model
        chunk = self.features(image)
        prior = self.bank.query(chunk) if self.bank is not None else None
        norm = self.sample(chunk, prior)
        out = postprocess_actions(norm[0].float(), m.action_q01, m.action_q99, m.action_mask)
        return out.cpu().numpy()
