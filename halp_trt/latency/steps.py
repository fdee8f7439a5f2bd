"""Detect channel-count granularity ("steps") in a measured latency curve. Runtimes pad channels
to their vector width, so latency is a staircase, flat over ``phase+step*k+1 ..
phase+step*(k+1)`` (ONNX Runtime on AVX2: step 8, phase 0), not necessarily monotone (OpenVINO
is cheaper at the exact multiple of 8: still step 8, a dip at each step end).

For every candidate g and phase p, a least-squares fit of ``t(c) = a + b·g·ceil((c - p) / g)
+ d·c`` (g = 1 is the line). A fit is credible when it explains most of what the line leaves
and *every* aligned jump stands out of the noise (a g finer than the true step has boundaries
without a jump). The smallest credible g wins: a coarser fit over real fine steps (8-steps plus
MLAS jumps every 32) can have the lower residual but would waste the cheap counts between."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# MAD -> standard deviation for gaussian noise.
_MAD_TO_SIGMA = 1.4826
# The smallest noise assumed for one value, as a fraction of the curve's level.
REL_NOISE_FLOOR = 0.002


@dataclass
class StepFit:
    """Result of :func:`detect_step`.

    When ``accepted`` is False, ``step`` is 1 and ``phase`` 0, and ``residual_ratio`` /
    ``jump_to_noise`` describe the lowest-residual candidate that was turned down (why it was).
    """

    step: int  # detected granularity in channels (1 = no steps / linear)
    phase: int  # (c - phase) % step == 0: step ends; flat over phase+step*k+1 .. phase+step*(k+1)
    residual_ratio: float  # staircase residual sum of squares / linear one
    jump_to_noise: float  # smallest aligned jump / noise of one value (MAD of off-step diffs)
    accepted: bool


def _validated(counts: Sequence[int], latency_ms: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(counts, dtype=float).ravel()
    t = np.asarray(latency_ms, dtype=float).ravel()
    if c.shape != t.shape:
        raise ValueError(f"counts and latency_ms differ in length ({c.size} vs {t.size})")
    if not np.all(np.isfinite(c)) or not np.all(np.isfinite(t)):
        raise ValueError("counts and latency_ms must be finite (NaN or inf found)")
    if np.any(c != np.round(c)):
        raise ValueError("counts must be integers")
    order = np.argsort(c, kind="stable")
    c, t = c[order].astype(np.int64), t[order]
    if np.any(np.diff(c) == 0):
        raise ValueError("repeated channel counts; combine repeated measurements first")
    return c, t


def _rss(columns: list[np.ndarray], t: np.ndarray) -> float:
    # Centre the non-constant columns: same residual (an intercept is present), better conditioning.
    x = np.column_stack([np.ones_like(t)] + [col - col.mean() for col in columns])
    coef, *_ = np.linalg.lstsq(x, t, rcond=None)
    r = t - x @ coef
    return float(r @ r)


def _levels(c: np.ndarray, g: int, p: int) -> np.ndarray:
    # Index of the step each count falls in: constant over p+g*k+1 .. p+g*(k+1).
    return -((p - c) // g)  # ceil((c - p) / g) in exact integer arithmetic


def _jump_to_noise(c: np.ndarray, t: np.ndarray, level: np.ndarray) -> float:
    """Smallest aligned jump over the robust noise of one measurement.

    A jump is the difference of adjacent step levels measured on the data (median of each step,
    after removing the within-step drift), not read off the fit: a fit spreads one common jump
    over every boundary, while a boundary where nothing happens must show up as a ~0 jump. Medians
    keep a single burst or a dip at the step end (non-monotone runtimes) from moving a level.
    Noise is the MAD of the off-step consecutive differences, scaled to the standard deviation of
    one value (a difference of two values has sqrt(2) times that).
    """
    dc = np.diff(c).astype(float)
    dt = np.diff(t)
    off = np.diff(level) == 0
    steps = np.unique(level)
    if off.sum() < 2 or steps.size < 2:
        return 0.0
    # Within-step slope (0 on a flat staircase), removed so that a plain slope is not taken for
    # jumps. Median over all pairs inside a step (Theil-Sen), not only neighbours: its error is
    # multiplied by the distance between step centres, so it must be precise for large g.
    slopes = []
    for k in np.unique(level):
        i, j = np.triu_indices(int(np.sum(level == k)), 1)
        ck, tk = c[level == k], t[level == k]
        slopes.append((tk[j] - tk[i]) / (ck[j] - ck[i]))
    drift = float(np.median(np.concatenate(slopes)))
    off_dev = dt[off] - drift * dc[off]
    noise = _MAD_TO_SIGMA * float(np.median(np.abs(off_dev - np.median(off_dev)))) / np.sqrt(2.0)
    detrended = t - drift * c
    step_level = np.array([np.median(detrended[level == k]) for k in steps])
    # Divide by the number of step ends crossed when whole steps were not measured.
    jumps = np.diff(step_level) / np.diff(steps)
    # A minimum over rounds is not more precise than a few tenths of a percent, whatever the
    # off-step differences say: on a suffix minimum (flat plateaus, noise ~0) sub-microsecond
    # wiggles would otherwise count as jumps — seen: a clean 16-channel ORT staircase on
    # AVX-512 "refined" to 8 on 0.1-0.3 us jumps at 100 us.
    floor = max(REL_NOISE_FLOOR * float(np.median(np.abs(t))), 1e-300)
    return float(jumps.min()) / float(max(noise, floor))


class _Curve:
    """A validated, sorted curve and its linear-model residual, shared by all candidate fits."""

    def __init__(self, counts: Sequence[int], latency_ms: Sequence[float]):
        self.c, self.t = _validated(counts, latency_ms)
        self.cf = self.c.astype(float)
        self.rss_linear = _rss([self.cf], self.t) if self.c.size >= 2 else 0.0

    def fit(self, g: int, p: int) -> tuple[float, np.ndarray] | None:
        """(residual sum of squares, step index per count) of the (g, p) staircase."""
        level = _levels(self.c, g, p)
        if np.unique(level).size < 2:
            return None
        return _rss([g * level.astype(float), self.cf], self.t), level

    def result(self, g, p, rss, level, max_ratio, min_jtn) -> StepFit:
        # A perfectly linear (or constant) curve leaves nothing for steps to explain.
        ratio = rss / self.rss_linear if self.rss_linear > 0 else 1.0
        jtn = _jump_to_noise(self.c, self.t, level)
        ok = ratio < max_ratio and jtn > min_jtn
        return StepFit(step=g, phase=p, residual_ratio=ratio, jump_to_noise=jtn, accepted=ok)


def _candidates(candidates: Sequence[int], n: int) -> list[int]:
    gs = sorted({int(g) for g in candidates})
    if gs and gs[0] < 1:
        raise ValueError(f"candidate step must be >= 1, got {gs[0]}")
    # g = 1 is the linear baseline, always computed; a staircase needs >= 2g+3 points.
    return [g for g in gs if g > 1 and n >= 2 * g + 3]


def _scan(curve: _Curve, candidates, max_ratio, min_jtn) -> list[StepFit]:
    fits = []
    for g in _candidates(candidates, curve.c.size):
        best = None
        for p in range(g):
            f = curve.fit(g, p)
            if f is not None and (best is None or f[0] < best[1]):
                best = (p, *f)
        if best is not None:
            fits.append(curve.result(g, *best, max_ratio, min_jtn))
    return fits


def detect_step(
    counts: Sequence[int],
    latency_ms: Sequence[float],
    candidates: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    max_residual_ratio: float = 0.5,
    min_jump_to_noise: float = 3.0,
) -> StepFit:
    """Granularity and phase of a latency staircase, or step 1 when none is credible.

    ``counts`` may be unsorted and non-contiguous; NaN/inf, repeated counts or mismatched
    lengths raise ValueError. The result is the smallest g that passes both tests. If the
    staircase found is coarse, it is then refined to the smallest divisor g' (same phase mod g')
    whose every boundary still shows a real jump: super-steps much larger than the fine steps
    (MLAS filter blocks every 32 on top of 8-steps) make the common-jump fit of the fine g miss
    the residual test even though every fine step is real. A refined result is ``accepted`` on
    the strength of the coarse fit, so its own ``residual_ratio`` may exceed the limit.
    """
    curve = _Curve(counts, latency_ms)
    fits = _scan(curve, candidates, max_residual_ratio, min_jump_to_noise)
    chosen = next((f for f in fits if f.accepted), None)
    if chosen is None:
        if not fits:
            return StepFit(step=1, phase=0, residual_ratio=1.0, jump_to_noise=0.0, accepted=False)
        best = min(fits, key=lambda f: f.residual_ratio)
        return StepFit(1, 0, best.residual_ratio, best.jump_to_noise, False)
    for g in _candidates(candidates, curve.c.size):
        if g >= chosen.step or chosen.step % g:
            continue
        p = chosen.phase % g
        f = curve.fit(g, p)
        if f is None:
            continue
        fine = curve.result(g, p, *f, max_residual_ratio, min_jump_to_noise)
        if fine.jump_to_noise > min_jump_to_noise:
            fine.accepted = True
            return fine
    return chosen


def suffix_min(values: Sequence[float]) -> np.ndarray:
    """``out[i] = min(values[i:])`` for values ordered by ascending channel count.

    A layer can always be padded up to a larger count, so what c channels really cost is the
    cheapest count ≥ c; this matters on non-monotone curves (cheaper at exact multiples).
    """
    v = np.asarray(values, dtype=float).ravel()
    if np.any(np.isnan(v)):
        raise ValueError("suffix_min: values contain NaN")
    return np.minimum.accumulate(v[::-1])[::-1].copy()


def round_up_to_step(c: int, step: int, phase: int = 0, upper: int | None = None) -> int:
    """Smallest c' ≥ c with (c' - phase) % step == 0 (the end of c's step), capped at ``upper``."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    r = int(c) + (int(phase) - int(c)) % int(step)
    return r if upper is None else min(r, int(upper))
