"""Building blocks shared by several model families."""
from .contextual_attention import ContextualAttention
from .cuda_graph import CapturedCall
from .dpt import DPTHead
from .geometry import normals_from_pointmap
from .rope2d import RoPE2D, grid_positions

__all__ = ["CapturedCall", "ContextualAttention", "DPTHead", "RoPE2D", "grid_positions", "normals_from_pointmap"]
