"""The perceiver-style resampler that OmniLMM and MiniCPM-V put between their image tower and
their text model: learned queries attend to the projected patch features (keys carry 2-D sin-cos
positions, values do not) and come out as one block of text-model embeddings per image. The two
families differ in where positions go and how they are laid out; each subclasses ``Resampler``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def sincos_grid(dim: int, rows: int, cols: int, *, column_first: bool = False) -> np.ndarray:
    """(rows*cols, dim) 2-D sin-cos position embeddings in raster order. Half of each vector
    encodes the row, half the column (which comes first: ``column_first``), each as sines then
    cosines of geometric frequencies."""
    def one_axis(half: int, coords: np.ndarray) -> np.ndarray:
        freqs = 1.0 / 10000 ** (np.arange(half // 2, dtype=np.float64) / (half / 2))
        angles = coords.reshape(-1)[:, None] * freqs[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    r, c = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    halves = [one_axis(dim // 2, r), one_axis(dim // 2, c)]
    return np.concatenate(halves[::-1] if column_first else halves, axis=1).astype(np.float32)


class Resampler(nn.Module):
    """The shared parameters, under the published names: ``query``, ``kv_proj``, ``attn`` (torch
    multi-head attention, sequence first), ``ln_q``, ``ln_kv``, ``ln_post`` and ``proj`` (applied
    as ``x @ proj``)."""

    def __init__(self, num_query: int, dim: int, heads: int, kv_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(num_query, dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, dim, bias=False) if kv_dim != dim else nn.Identity()
        self.attn = nn.MultiheadAttention(dim, heads)
        self.ln_q, self.ln_kv, self.ln_post = (nn.LayerNorm(dim, eps=1e-6) for _ in range(3))
        self.proj = nn.Parameter(torch.randn(dim, dim) * dim ** -0.5)

    def attend(self, queries: torch.Tensor, patches: torch.Tensor, key_positions: torch.Tensor,
               padding: torch.Tensor | None = None) -> torch.Tensor:
        """(num_query, batch, dim) queries over (batch, patches, kv_dim) features whose keys get
        ``key_positions`` (patches, batch, dim) -> (batch, num_query, dim)."""
        kv = self.ln_kv(self.kv_proj(patches)).transpose(0, 1)  # (patches, batch, dim)
        out = self.attn(queries, kv + key_positions.to(kv.dtype), kv, key_padding_mask=padding,
                        need_weights=False)[0]
        return self.ln_post(out.transpose(0, 1)) @ self.proj
