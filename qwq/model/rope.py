"""Rotary position embedding, Qwen2 convention: rotate-half over the two halves of head_dim.

YaRN (rope_scaling {"type": "yarn", "factor": F, "original_max_position_embeddings": L}) is how
Qwen documents contexts past 32K: frequencies below a ramp are interpolated by F, those above
kept, and cos/sin scaled by 0.1*ln(F)+1.
"""

from __future__ import annotations

import math

import torch

from qwq.config import ModelConfig
from qwq.errors import CheckpointError


def _yarn_inv_freq(dim: int, base: float, rs: dict) -> tuple[torch.Tensor, float]:
    factor = float(rs.get("factor", 1.0))
    orig = float(rs.get("original_max_position_embeddings", 32768))
    beta_fast, beta_slow = float(rs.get("beta_fast", 32)), float(rs.get("beta_slow", 1))
    mscale = rs.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

    def correction_dim(rotations: float) -> float:
        # the dimension index whose wavelength completes `rotations` turns over `orig` positions
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if rs.get("truncate", True) is False:
        low, high = max(correction_dim(beta_fast), 0), min(correction_dim(beta_slow), dim - 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim)
    extrapolate, interpolate = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    ramp = (torch.arange(dim // 2, dtype=torch.float64, device="cpu") - low) / max(high - low, 1e-3)
    keep = 1.0 - ramp.clamp(0, 1)  # 1 where the original (extrapolated) frequency is kept
    inv_freq = interpolate * (1 - keep) + extrapolate * keep
    return inv_freq.float(), float(mscale)


class RotaryEmbedding(torch.nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, base = config.head_dim, config.rope_theta
        rs = config.rope_scaling or {}
        kind = rs.get("type", rs.get("rope_type", "default"))
        if kind == "yarn":
            inv_freq, self.scale = _yarn_inv_freq(dim, base, rs)
        elif kind in ("default", None):
            exponents = torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim
            inv_freq = 1.0 / (base ** exponents).float()
            self.scale = 1.0
        else:
            raise CheckpointError(f"rope_scaling type {kind!r} is not supported (default, yarn)")
        # a plain float32 CPU attribute, not a buffer: it is computed from the config, so it
        # survives a model built on meta and moved with to_empty, and dtype casts don't round it
        # (and a factory op on meta would import torch._dynamo, ~140 MiB resident)
        self.inv_freq = inv_freq
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        # rope_factors of the whole table, for one dtype: (the float32 cos table they come
        # from, dtype, cos, signed sin)
        self._factors: tuple | None = None

    def _table(self, upto: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache[0].shape[0] < upto or self._cache[0].device != device:
            n = max(upto, 4096, 2 * (self._cache[0].shape[0] if self._cache else 0))
            t = torch.arange(n, dtype=torch.float32, device=device)
            freqs = torch.outer(t, self.inv_freq.to(device))
            emb = torch.cat([freqs, freqs], dim=-1)
            self._cache = (emb.cos() * self.scale, emb.sin() * self.scale)
        return self._cache

    def cos_sin(self, positions: torch.Tensor, upto: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (T, head_dim) in float32 for the given absolute positions, all
        below `upto` (given by a caller that knows it, else read from positions: on a GPU
        that read waits for the device)."""
        if upto is None:
            upto = int(positions.max()) + 1
        cos, sin = self._table(upto, positions.device)
        return cos[positions], sin[positions]

    def factors(self, positions: torch.Tensor, upto: int, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """rope_factors(*cos_sin(positions, upto), dtype), looked up in tables of them kept for
        the last dtype asked: two lookups a step where the rounding and the sign fold were ten
        small ops (~70 us of a decode step's Python). The same numbers: both are elementwise."""
        cos, sin = self.factor_tables(upto, dtype, positions.device)
        return cos[positions], sin[positions]

    def factor_tables(self, upto: int, dtype: torch.dtype, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """rope_factors of the table of every position below `upto` at least: (n, 1, head_dim)
        cos and signed sin in `dtype`, made again only for a new dtype or a longer table."""
        cos, sin = self._table(upto, device)
        if self._factors is None or self._factors[0] is not cos or self._factors[1] != dtype:
            self._factors = (cos, dtype, *rope_factors(cos, sin, dtype))
        return self._factors[2], self._factors[3]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (T, heads, head_dim); cos/sin: (T, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotated * sin


def rope_factors(cos: torch.Tensor, sin: torch.Tensor,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin for apply_rope_prepared, shaped (T, 1, head_dim) in `dtype`.
    Built once per forward so each layer's rope is four ops instead of ten; the sign of the
    rotate-half is moved onto sin (exact), so results match apply_rope bit for bit."""
    half = sin.shape[-1] // 2
    cos, sin = cos.to(dtype), sin.to(dtype)
    return cos.unsqueeze(1), torch.cat([-sin[:, :half], sin[:, half:]], dim=-1).unsqueeze(1)


def apply_rope_prepared(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor
                        ) -> torch.Tensor:
    """apply_rope with factors from rope_factors: x: (T, heads, head_dim)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
