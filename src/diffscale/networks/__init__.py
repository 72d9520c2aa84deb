"""Networks F(x, c_noise, **cond): they see c_noise, never sigma or the formulation."""

from diffscale.networks.embeddings import FourierEmbedding, PositionalEmbedding
from diffscale.networks.mlp import MLP

__all__ = ["MLP", "FourierEmbedding", "PositionalEmbedding"]
