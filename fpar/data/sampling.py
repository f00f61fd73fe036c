"""Temporal sampling: pure functions from counts to 0-based frame indices."""

from __future__ import annotations

import math

import numpy as np


def uniform_indices(n: int, t: int, *, method: str = "seed") -> list[int]:
    """T frame indices spread over N frames; frames repeat when N < T.

    ``seed`` (default, the report authors' formula): frame k is floor(k*N/T), which includes the first frame.
    ``egornn``: the original Ego-RNN code, floor(linspace(1, N, T, endpoint=False)) on 1-based names, i.e.
    floor(1 + k*(N-1)/T) - 1 here; it never reaches the last frame (reference-spec §7.3, §9 item 7).
    """
    if n < 1 or t < 1:
        raise ValueError(f"expected n >= 1 and t >= 1, got n={n}, t={t}")
    if method == "seed":
        return [(k * n) // t for k in range(t)]
    if method == "egornn":
        return [int(math.floor(1 + k * (n - 1) / t)) - 1 for k in range(t)]
    raise ValueError(f"unknown sampling method {method!r}")


def flow_stack_start(m: int, length: int, *, train: bool, rng: np.random.Generator | None = None) -> int:
    """Start of a stack of ``length`` consecutive flows among ``m``: random when training, centred at test."""
    span = m - length
    if span <= 0:
        return 0
    if train:
        rng = rng or np.random.default_rng()
        return int(rng.integers(0, span + 1))
    return span // 2


def flow_stack_starts(m: int, length: int, count: int) -> list[int]:
    """``count`` evenly spaced stack starts for multi-stack testing (scores are averaged over them)."""
    span = max(m - length, 0)
    return [(k * (span + 1)) // count for k in range(count)]


def stack_indices(start: int, length: int, m: int) -> list[int]:
    """Indices of a stack; the last flow repeats when the video is shorter than the stack."""
    return [min(start + i, m - 1) for i in range(length)]


def centred_stack_starts(frames: list[int], m: int, length: int) -> list[int]:
    """For each RGB frame index k, the start of the stack of ``length`` flows centred on it (flow k goes from frame
    k to k+1), clamped into the ``m`` flows: ``k - length // 2`` within ``[0, m - length]``."""
    hi = max(m - length, 0)
    return [min(max(k - length // 2, 0), hi) for k in frames]
