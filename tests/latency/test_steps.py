"""Step detection, suffix minimum and rounding to a step, on synthetic and real curves."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from halp_trt.latency.steps import (StepFit, _Curve, _scan, detect_step, round_up_to_step,
                                    suffix_min)

DATA = Path(__file__).parent / "data" / "ort_step_curves.json"


def scan_steps(counts, latency_ms, candidates=(1, 2, 4, 8, 16, 32, 64)):
    """Every candidate step's best-phase fit, ascending: what detect_step picks among."""
    return _scan(_Curve(counts, latency_ms), candidates, 0.5, 3.0)


def staircase(counts, step, phase, jump, sigma, seed, slope=0.0, base=2.0):
    """Latency constant over phase+step*k+1 .. phase+step*(k+1), plus gaussian noise."""
    c = np.asarray(counts)
    level = np.ceil((c - phase) / step)
    return base + jump * level + slope * c + np.random.default_rng(seed).normal(0.0, sigma, c.size)


def found(fit: StepFit):
    return fit.step, fit.phase, fit.accepted


# --- synthetic staircases ------------------------------------------------------------------------

SEEDS = range(5)


@pytest.mark.parametrize("seed", SEEDS)
def test_step8_phase0(seed):
    c = np.arange(96, 161)  # the real sweep's range
    assert found(detect_step(c, staircase(c, 8, 0, jump=0.12, sigma=0.015, seed=seed))) == (8, 0, True)


@pytest.mark.parametrize("seed", SEEDS)
def test_step16_with_slope_inside_steps(seed):
    c = np.arange(32, 161)
    t = staircase(c, 16, 0, jump=0.2, sigma=0.015, seed=seed, slope=0.002)
    fit = detect_step(c, t)
    assert found(fit) == (16, 0, True)
    # Nesting: g=8 fits a 16-staircase only with every other jump ~0; the jump test says so.
    g8 = next(f for f in scan_steps(c, t) if f.step == 8)
    assert g8.jump_to_noise < 3.0 and not g8.accepted


def test_a_flat_suffix_minimum_is_not_refined_to_a_finer_step_on_tiny_wiggles():
    # A 16-channel staircase read as its suffix minimum: plateaus exactly flat except for
    # sub-0.3% wiggles at the multiples of 8 (as ORT on AVX-512 measured), so the off-step
    # noise is ~0 and only a floor relative to the level keeps 8 from looking like a step.
    c = np.arange(33, 81)
    t = 0.088 + 0.037 * np.ceil((c - 0) / 16)
    t[(c % 16) == 8] -= 0.0002
    assert found(detect_step(c, suffix_min(t))) == (16, 0, True)


@pytest.mark.parametrize("seed", SEEDS)
def test_step4_phase2(seed):
    c = np.arange(40, 101)
    t = staircase(c, 4, 2, jump=0.05, sigma=0.005, seed=seed)
    assert found(detect_step(c, t)) == (4, 2, True)


@pytest.mark.parametrize("seed", SEEDS)
def test_true_step8_is_not_reported_as_4_or_16(seed):
    c = np.arange(96, 161)
    t = staircase(c, 8, 0, jump=0.12, sigma=0.015, seed=seed)
    by_g = {f.step: f for f in scan_steps(c, t)}
    assert by_g[4].jump_to_noise < 3.0  # half of the 4-boundaries have no jump
    assert by_g[16].residual_ratio > 0.5  # a 16-staircase misses every other real jump


@pytest.mark.parametrize("seed", SEEDS)
def test_unsorted_and_noncontiguous_counts(seed):
    rng = np.random.default_rng(100 + seed)
    c = rng.permutation(np.arange(96, 192))[:70]  # shuffled, ~1/4 of the counts missing
    t = staircase(c, 8, 0, jump=0.12, sigma=0.015, seed=seed)
    assert found(detect_step(c, t)) == (8, 0, True)
    assert found(detect_step(list(c), list(t))) == (8, 0, True)  # plain sequences too


@pytest.mark.parametrize("seed", SEEDS)
def test_large_super_steps_do_not_hide_fine_steps(seed):
    # 8-steps plus MLAS-like extra jumps every 32, twice the 8-step: the common-jump 8-fit misses
    # the residual test, the 32-fit passes, and every 8-boundary still has a real jump.
    c = np.arange(1, 161)
    t = staircase(c, 8, 0, jump=0.1, sigma=0.015, seed=seed) + 0.2 * np.ceil(c / 32)
    by_g = {f.step: f for f in scan_steps(c, t)}
    assert not by_g[8].accepted and by_g[32].accepted
    assert found(detect_step(c, t)) == (8, 0, True)


@pytest.mark.parametrize("seed", SEEDS)
def test_pure_32_step_is_not_refined(seed):
    c = np.arange(1, 161)
    assert found(detect_step(c, staircase(c, 32, 5, jump=0.2, sigma=0.015, seed=seed))) == (32, 5, True)


def test_exact_staircase_without_noise():
    c = np.arange(1, 80)
    fit = detect_step(c, staircase(c, 8, 3, jump=1.0, sigma=0.0, seed=0))
    assert found(fit) == (8, 3, True) and fit.residual_ratio < 1e-12


# --- no steps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_noisy_linear_is_rejected(seed):
    c = np.arange(96, 161)
    t = 1.0 + 0.015 * c + np.random.default_rng(seed).normal(0.0, 0.015, c.size)
    fit = detect_step(c, t)
    assert (fit.step, fit.phase, fit.accepted) == (1, 0, False)


@pytest.mark.parametrize("seed", SEEDS)
def test_flat_noise_is_rejected(seed):
    c = np.arange(96, 161)
    fit = detect_step(c, 2.0 + np.random.default_rng(seed).normal(0.0, 0.02, c.size))
    assert (fit.step, fit.phase, fit.accepted) == (1, 0, False)


def test_exact_line_and_constant_are_rejected():
    c = np.arange(10, 60)
    assert found(detect_step(c, 0.5 + 0.01 * c)) == (1, 0, False)
    assert found(detect_step(c, np.full(c.size, 2.0))) == (1, 0, False)


def test_too_few_points():
    # 2g+3 points are needed for g; with 6 points only g=2 is tried, with 4 nothing is.
    assert found(detect_step([1, 2, 3, 4], [1.0, 1.0, 2.0, 2.0])) == (1, 0, False)
    assert scan_steps([1, 2, 3, 4], [1.0, 1.0, 2.0, 2.0]) == []
    assert [f.step for f in scan_steps(range(1, 12), np.ones(11))] == [2, 4]


# --- non-monotone (OpenVINO-like) ----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_cheaper_at_exact_multiple(seed):
    """Flat over 8k+1..8k+7, the exact multiple 8k+8 cheaper by less than a step.

    Expected: step 8, phase 0 — the latency jumps right after the multiple (the dip is the end of
    its step, not the start of the next); the suffix minimum is a monotone step-8/phase-0
    staircase at the dip's level, and rounding up to the step lands on the dip.
    """
    c = np.arange(96, 161)
    t = staircase(c, 8, 0, jump=0.15, sigma=0.015, seed=seed)
    t[c % 8 == 0] -= 0.1
    assert np.any(np.diff(t) < -0.05)  # really non-monotone
    assert found(detect_step(c, t)) == (8, 0, True)

    eff = suffix_min(t)
    assert np.all(np.diff(eff) >= 0)
    assert found(detect_step(c, eff)) == (8, 0, True)
    for i, ci in enumerate(c):
        j = round_up_to_step(int(ci), 8, 0, upper=int(c[-1])) - c[0]
        assert eff[i] == t[j]  # padding up to the step end is the cheapest choice


# --- input checks --------------------------------------------------------------------------------


def test_invalid_inputs():
    c = np.arange(96, 161)
    t = staircase(c, 8, 0, jump=0.12, sigma=0.015, seed=0)
    bad = t.copy()
    bad[10] = np.nan
    with pytest.raises(ValueError):
        detect_step(c, bad)
    with pytest.raises(ValueError):
        detect_step(c, t[:-1])
    with pytest.raises(ValueError):
        detect_step(np.r_[c[:-1], c[0]], t)  # repeated count
    with pytest.raises(ValueError):
        detect_step(c + 0.5, t)
    with pytest.raises(ValueError):
        detect_step(c, t, candidates=(0, 8))
    with pytest.raises(ValueError):
        suffix_min([1.0, np.nan, 2.0])


# --- real ONNX Runtime CPU sweeps ----------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    d = json.loads(DATA.read_text())
    return np.array(d["c_out"]), d["sweeps"]


def runs(sweeps, opt, protocol):
    return [np.array(r) for s in sweeps if (s["graph_optimization"], s["protocol"]) == (opt, protocol)
            for r in s["runs_ms"]]


def test_real_phase_convention(real):
    """Model-free: the biggest rise is from c = 8k to 8k+1, i.e. steps end at multiples of 8."""
    c, sweeps = real
    diffs = np.mean([np.diff(t) for t in runs(sweeps, "all", "interleaved_min")], axis=0)
    by_residue = [diffs[(c[:-1] % 8) == r].mean() for r in range(8)]
    assert int(np.argmax(by_residue)) == 0
    assert round_up_to_step(97, 8) == round_up_to_step(104, 8) == 104  # phase 0: 97..104 is a step


def test_real_all_interleaved_min_is_step8_phase0(real):
    c, sweeps = real
    curves = runs(sweeps, "all", "interleaved_min")
    assert len(curves) == 6
    results = [detect_step(c, t) for t in curves]
    # Never a wrong step: either step 8 phase 0, or (single noisy sweeps) nothing.
    assert all(found(f) in {(8, 0, True), (1, 0, False)} for f in results)
    assert sum(f.accepted for f in results) > len(results) / 2
    for t in curves:  # even where rejected, the lowest-residual staircase is 8/0
        best = min(scan_steps(c, t), key=lambda f: f.residual_ratio)
        assert (best.step, best.phase) == (8, 0)
    # The protocol's estimate over all rounds (minimum over the sweeps of one session).
    for session in ("later", "earlier"):
        session_runs = [np.array(r) for s in sweeps if s["session"] == session
                        and (s["graph_optimization"], s["protocol"]) == ("all", "interleaved_min")
                        for r in s["runs_ms"]]
        assert found(detect_step(c, np.min(session_runs, axis=0))) == (8, 0, True)


def test_real_basic_is_not_stepped(real):
    c, sweeps = real
    curves = runs(sweeps, "basic", "interleaved_min")
    assert curves
    for t in curves + [np.min(curves, axis=0)]:
        fit = detect_step(c, t)
        assert (fit.step, fit.accepted) == (1, False)


def test_real_consecutive_median_never_gives_a_wrong_step(real):
    # Whether these noisy sweeps are accepted is not asserted; a wrong step would be a bug.
    c, sweeps = real
    for t in runs(sweeps, "all", "consecutive_median"):
        assert found(detect_step(c, t)) in {(8, 0, True), (1, 0, False)}


# --- suffix_min and round_up_to_step -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_suffix_min_properties(seed):
    v = np.random.default_rng(seed).normal(size=50)
    s = suffix_min(v)
    assert s.shape == v.shape
    assert np.all(s <= v) and np.all(np.diff(s) >= 0) and s[-1] == v[-1]
    assert np.array_equal(s, [v[i:].min() for i in range(v.size)])
    assert np.array_equal(suffix_min(s), s)  # idempotent
    assert np.array_equal(suffix_min(np.sort(v)), np.sort(v))  # monotone input unchanged
    assert suffix_min(list(v)).tolist() == s.tolist()
    assert v.tolist() == np.random.default_rng(seed).normal(size=50).tolist()  # input untouched


def test_suffix_min_empty():
    assert suffix_min([]).size == 0


@pytest.mark.parametrize("step", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("phase", [0, 2, 7, -3, 19])
def test_round_up_to_step_properties(step, phase):
    for c in range(-5, 70):
        r = round_up_to_step(c, step, phase)
        assert r >= c and (r - phase) % step == 0 and r - c < step  # smallest such count
        assert round_up_to_step(r, step, phase) == r  # step ends are fixed points
        assert round_up_to_step(c, step, phase + 5 * step) == r  # phase only matters mod step
        assert round_up_to_step(c, step, phase, upper=40) == min(r, 40)
    if step == 1:
        assert all(round_up_to_step(c, 1, phase) == c for c in range(20))


def test_round_up_to_step_rejects_bad_step():
    with pytest.raises(ValueError):
        round_up_to_step(5, 0)
