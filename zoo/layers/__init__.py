"""Building blocks shared by several model families."""
from .contextual_attention import ContextualAttention
from .dpt import DPTHead
from .rope2d import RoPE2D, grid_positions

__all__ = ["ContextualAttention", "DPTHead", "RoPE2D", "grid_positions"]
