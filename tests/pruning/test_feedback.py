"""Closed-loop targets: the last step is bracketed by measured candidates and lands on target.

The backend here "measures" an architecture encoded as its kept widths: its latency is a
non-linear function of the table's layer sum (the gap the feedback has to close), and each
prepared session carries its own multiplicative offset, like the session-to-session drift of
real sub-millisecond timings.
"""
import json
import random

import pytest
import torch
import torch.nn as nn

from halp_trt.runtime.base import Backend
from fakes import StaircaseLatencyModel
from halp_trt.pruning.feedback import (LatencyFeedback, _aim, _bracket_targets,
                                       _monotone_fit)
from halp_trt.runtime.protocol import Protocol
from halp_trt.errors import HalpError
from halp_trt.pruning.pruner import HALPConfig, HALPPruner
from halp_trt.pruning.schedule import schedule_targets_ms
from tiny_models import TinyResNet

X0 = torch.randn(1, 3, 16, 16)


class WidthsBackend(Backend):
    name = "widths-fake"

    def __init__(self, latency_of, session_spread, seed=0):
        self.latency_of, self.spread = latency_of, session_spread
        self.rng = random.Random(seed)
        self.prepared = 0

    def _identity_impl(self):
        return {}

    def _prepare_impl(self, onnx_bytes, label=""):
        self.prepared += 1
        offset = 1 + self.rng.uniform(-self.spread, self.spread)
        return self.latency_of(json.loads(onnx_bytes)) * offset

    def _time_runs_impl(self, handle, n_runs):
        return [handle * (1 + 0.2 * self.rng.random()) for _ in range(n_runs)]

    def _infer_impl(self, handle, inputs):
        raise NotImplementedError

    def flush_cache(self, level="llc"):
        pass

    def release(self, handle):
        pass

    def close(self):
        pass


def make_loop(target_ratio, spread, seed=0, schedule="exp", curve=None, steps=3, **fb_kw):
    torch.manual_seed(seed)
    model = TinyResNet(width=32)
    # HALP's taylor: the widths these landings were tuned on (with taylor_per_layer, seed 1
    # lands 7.8% under 0.45: the bracket's undershoot, noted in BENCHMARKS, not fixed yet)
    pr = HALPPruner(model, X0, StaircaseLatencyModel(step=2),
                    HALPConfig(target=target_ratio, steps=steps, interval=2, schedule=schedule,
                               importance="taylor"))
    by_root = {g.root: g.id for g in pr.prunable}

    def true_ratio(kept_counts):
        widths = dict(pr.widths)
        widths.update({by_root[r]: c for r, c in kept_counts.items()})
        layers = pr.predict_ms(widths) / pr.full_ms
        if curve is not None:
            return curve(layers)
        return 0.15 + 0.85 * layers ** 1.4  # fixed overhead + a convex layer-sum curve

    full = {g.root: g.size for g in pr.prunable}
    backend = WidthsBackend(true_ratio, spread, seed)
    fb = LatencyFeedback(pr, lambda result: {r: len(k) for r, k in result.kept.items()},
                         lambda counts: json.dumps(counts).encode(), backend,
                         json.dumps(full).encode(), target_ratio,
                         Protocol(rounds=5, cold_above_bytes=2 ** 62, min_sample_ms=0.0,
                                  sessions_per_graph=3),
                         log=lambda m: None, **fb_kw)
    return model, pr, fb, true_ratio


def run(model, fb):
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        if fb.done:
            return
        loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16, generator=gen)),
                                           torch.randint(0, 10, (4,), generator=gen))
        model.zero_grad()
        loss.backward()
        fb.accumulate()
        fb.step()
    raise AssertionError("pruning did not finish")


def landed(pr, true_ratio):
    return true_ratio({r: int(m.sum()) for r, m in pr.masks.items()})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bracketed_last_step_lands_on_the_target(seed):
    model, pr, fb, true_ratio = make_loop(0.45, spread=0.02, seed=seed)
    run(model, fb)
    assert 0.45 * 0.93 <= landed(pr, true_ratio) <= 0.45 * 1.06
    last_step = fb.brackets[-1]["step"]
    attempts = [b for b in fb.brackets if b["step"] == last_step]  # re-aimed brackets too
    assert len(attempts[0]["candidates"]) >= 3
    # per attempt, picked: the most latency kept among the candidates at or under the target
    for b in attempts:
        meeting = {k: c for k, c in b["candidates"].items()
                   if c["measured_ratio"] <= 0.45 * 1.01}
        if meeting:
            assert b["picked"] == max(meeting, key=lambda k: meeting[k]["predicted_ms"])
    # the step committed exactly one attempt's pick (same scores, same knapsack), the one
    # keeping the most latency, and its reading is the last point (not timed twice)
    picks = [b["candidates"][b["picked"]] for b in attempts
             if b["candidates"][b["picked"]]["measured_ratio"] <= 0.45 * 1.01]
    best = max(picks, key=lambda c: c["layers_target_ms"])
    assert pr.history[-1].predicted_ms == pytest.approx(best["predicted_ms"], rel=1e-12)
    assert fb.points[-1].measured_ratio == best["measured_ratio"]


def test_without_bracketing_the_same_loop_misses_by_more():
    # session offsets of ±6%: reading the target off one session and hitting it in another
    mean_error, max_error = {}, {}
    for mode, kw in (("off", {"bracket": ()}), ("on", {})):
        errs = []
        for seed in range(8):
            model, pr, fb, true_ratio = make_loop(0.45, spread=0.06, seed=seed, **kw)
            run(model, fb)
            errs.append(abs(landed(pr, true_ratio) / 0.45 - 1))
        mean_error[mode], max_error[mode] = sum(errs) / len(errs), max(errs)
    assert mean_error["on"] < mean_error["off"]
    assert max_error["on"] < max_error["off"]


def test_reference_model_sets_the_target_in_each_session():
    # the first estimate (0.33) is ~15% off the reference, as one session of real timing can be
    model, pr, fb, true_ratio = make_loop(0.33, spread=0.03)
    half = {g.root: g.size // 2 for g in pr.prunable}
    fb.reference_onnx = json.dumps(half).encode()
    run(model, fb)
    ref = true_ratio(half)
    assert len(fb.reference_ratios) == len(fb.points) + len(fb.brackets) - 1
    assert fb.final_ratio == pytest.approx(ref, rel=0.07)
    assert ref * 0.9 <= landed(pr, true_ratio) <= ref * 1.08


@pytest.mark.parametrize("schedule", ["exp", "linear"])
def test_measured_targets_follow_the_configured_schedule(schedule):
    """The loop's corrected targets use the pruner's own schedule: a linear schedule stayed
    linear only until the first correction, which re-derived an exponential one."""
    model, pr, fb, _ = make_loop(0.45, spread=0.0, schedule=schedule, bracket=())
    run(model, fb)
    expected = schedule_targets_ms(1.0, 0.45, 3, schedule)
    got = [p.target_ratio for p in fb.points[:3]]
    assert got == pytest.approx(expected, rel=1e-9)
    if schedule == "linear":
        assert got[0] == pytest.approx(1 - (1 - 0.45) / 3)


def test_feedback_state_round_trips(tmp_path):
    model, pr, fb, _ = make_loop(0.45, spread=0.02)
    run(model, fb)
    state = fb.state_dict()
    torch.save(state, tmp_path / "fb.pt")
    _, _, fresh, _ = make_loop(0.45, spread=0.02)
    fresh.load_state_dict(torch.load(tmp_path / "fb.pt", weights_only=True))
    assert fresh.state_dict() == state
    assert [p.measured_ratio for p in fresh.points] == [p.measured_ratio for p in fb.points]
    with pytest.raises(HalpError, match="feedback checkpoint"):
        fresh.load_state_dict({"points": []})


@pytest.mark.parametrize("seed", [0, 1])
def test_a_bracket_entirely_under_the_target_is_re_aimed(seed):
    """When the calibration puts every candidate far under the target (measured curve much
    more convex than predicted), the last step re-aims from the measurements instead of
    committing an undershoot that cannot be undone."""
    def steep(layers):
        return 0.05 + 0.95 * layers ** 3

    model, pr, fb, true_ratio = make_loop(0.45, spread=0.01, seed=seed, curve=steep, steps=1)
    run(model, fb)
    first = fb.brackets[0]
    assert max(c["measured_ratio"] for c in first["candidates"].values()) < 0.45 * 0.97, \
        "the first bracket is entirely under the target (the case under test)"
    assert len([b for b in fb.brackets if b["step"] == first["step"]]) >= 2
    # this toy's widths are coarse near the goal (neighbours 10-20% apart)
    assert 0.45 * 0.88 <= landed(pr, true_ratio) <= 0.45 * 1.06

    model, pr, fb, true_ratio = make_loop(0.45, spread=0.01, seed=seed, curve=steep, steps=1,
                                          rebrackets=0)
    run(model, fb)
    assert landed(pr, true_ratio) < 0.45 * 0.85, "without re-aiming it undershoots"


def _held_trunk(layers):
    """Shufflenet-like: a held trunk measures 0.2 of the original whatever the knapsack does,
    and the prunable part is convex in the layer sum."""
    return 0.2 + 0.8 * layers ** 1.5


def run_from_the_floor(seed, module=None, **kw):
    """One-shot to a measured 0.5 where the calibration put the target at the table's floor
    (the pipeline's near-floor path): every first-bracket candidate measures near 0.2."""
    model, pr, fb, true_ratio = make_loop(0.5, spread=0.03, seed=seed, curve=_held_trunk,
                                          steps=1, **kw)
    pr.retarget([pr.min_ms])
    run(model, fb)
    return pr, fb, true_ratio


@pytest.mark.parametrize("seed", range(4))
def test_a_bracket_pinned_at_the_floor_searches_up_to_the_target(seed):
    pr, fb, true_ratio = run_from_the_floor(seed)
    first = fb.brackets[0]
    assert max(c["measured_ratio"] for c in first["candidates"].values()) < 0.3, \
        "the first bracket is entirely near the floor (the case under test)"
    # the old re-aim read a slope off the flat, noisy first bracket and gave up (or aimed at
    # the full model): it committed the floor, 0.20 for 0.5
    assert 0.5 * 0.95 <= landed(pr, true_ratio) <= 0.5 * 1.05
    # the committed widths are a candidate that measured at or under the target, not re-timed
    met = [c for b in fb.brackets for c in b["candidates"].values()
           if c["measured_ratio"] <= 0.5 * 1.01]
    assert pr.history[-1].predicted_ms in [c["predicted_ms"] for c in met]
    assert fb.points[-1].measured_ratio <= 0.5 * 1.01 and len(fb.points) == 1


def test_without_re_aiming_the_floor_bracket_is_committed():
    pr, fb, true_ratio = run_from_the_floor(0, rebrackets=0)
    assert landed(pr, true_ratio) < 0.25


def test_bracket_targets_trade_candidates_pinned_at_a_bound_for_the_other_side():
    factors = (0.8, 0.9, 1.0, 1.1, 1.2)
    free = _bracket_targets(10.0, factors, floor_ms=1.0, ceiling_ms=100.0)
    assert free == pytest.approx([8.0, 9.0, 10.0, 11.0, 12.0])
    # estimate at the floor: the three factors at or under 1 would all give the floor model
    low = _bracket_targets(10.0, factors, floor_ms=10.0, ceiling_ms=100.0)
    assert len(low) == len(factors) and min(low) == 10.0 and max(low) > 12.0
    assert all(b > a for a, b in zip(low, low[1:]))
    high = _bracket_targets(10.0, factors, floor_ms=1.0, ceiling_ms=10.0)
    assert len(high) == len(factors) and max(high) == 10.0 and min(high) < 8.0
    # both bounds within the bracket: nothing to trade for, fewer distinct targets
    both = _bracket_targets(10.0, factors, floor_ms=9.5, ceiling_ms=10.5)
    assert min(both) == 9.5 and max(both) == 10.5 and len(both) <= len(factors)


def test_monotone_fit_pools_noisy_inversions():
    pts = [(1.0, 0.20), (2.0, 0.30), (3.0, 0.28), (4.0, 0.50)]
    fit = _monotone_fit(pts)
    assert [t for t, _ in fit] == pytest.approx([1.0, 2.5, 4.0])
    assert [r for _, r in fit] == pytest.approx([0.20, 0.29, 0.50])
    rising = [(float(t), 0.1 * t) for t in range(5)]
    assert _monotone_fit(rising) == rising  # nothing to pool


def test_aim_crosses_the_goal_between_flat_noisy_points_and_the_current_model():
    # all candidates under the goal and flat within noise (a slope read off them is negative)
    pts = [(5.0, 0.23), (5.5, 0.27), (6.0, 0.39), (6.5, 0.34)]
    estimate, low, high = _aim(pts, 0.5, anchor=(17.0, 1.0))
    # pooled (6.25, 0.365) to the anchor: the line crosses 0.5 at 6.25 + 0.135 / 0.635 * 10.75
    assert estimate == pytest.approx(6.25 + 0.135 / 0.635 * 10.75)
    assert (low, high) == (6.5, 17.0)
    # a point over the goal narrows the interval; the anchor no longer bounds it
    estimate, low, high = _aim(pts + [(9.0, 0.6)], 0.5, anchor=(17.0, 1.0))
    assert 6.5 < estimate < 9.0 and (low, high) == (6.5, 9.0)
    assert _aim(pts, 0.5, anchor=(17.0, 0.45)) is None  # nothing measured above the goal


def test_a_big_model_gets_as_many_bracket_candidates_as_memory_holds(monkeypatch):
    """Every candidate's session is alive at once; on a machine whose memory holds the original
    plus four graphs of its size, the bracket measures at most four — the nearest to the
    estimate — and still lands on the target."""
    import halp_trt.runtime.machine as machine
    from halp_trt.runtime.protocol import SESSION_MEMORY_FACTOR, SESSION_MEMORY_SHARE

    model, pr, fb, true_ratio = make_loop(0.45, spread=0.0)
    graph_bytes = len(fb.original_onnx)
    monkeypatch.setattr(machine, "available_memory_bytes", lambda *a: int(
        5.5 * graph_bytes * SESSION_MEMORY_FACTOR / SESSION_MEMORY_SHARE))
    run(model, fb)
    # (re-aimed brackets of this tiny model can collapse to one distinct width)
    assert fb.brackets and all(len(b["candidates"]) <= 4 for b in fb.brackets)
    assert len(fb.brackets[0]["candidates"]) >= 2
    assert 0.45 * 0.93 <= landed(pr, true_ratio) <= 0.45 * 1.06
    # and with memory to spare, the full bracket (more than four) as before
    monkeypatch.undo()
    model, pr, fb, _ = make_loop(0.45, spread=0.0)
    run(model, fb)
    assert len(fb.brackets[0]["candidates"]) > 4



@pytest.mark.parametrize("bracket", [True, False])
def test_steps_before_the_last_are_timed_with_the_steering_rounds(monkeypatch, bracket):
    import halp_trt.pruning.feedback as feedback_module
    from halp_trt.pruning.feedback import steering_protocol

    model, pr, fb, true_ratio = make_loop(0.45, spread=0.02, steps=4,
                                          **({} if bracket else {"bracket": ()}))
    full = Protocol(rounds=30, cold_above_bytes=2 ** 62, min_sample_ms=0.0,
                    sessions_per_graph=3)
    fb.protocol, fb.steering_protocol = full, steering_protocol(full)
    calls = []  # (graphs besides the original, rounds) of every measurement session
    real = feedback_module.measure_interleaved

    def spy(backend, graphs, protocol):
        calls.append((len(graphs) - 1, protocol.rounds))
        return real(backend, graphs, protocol)

    monkeypatch.setattr(feedback_module, "measure_interleaved", spy)
    run(model, fb)
    single = [r for n, r in calls if n == 1]  # the current widths alone
    candidates = [r for n, r in calls if n > 1]  # the last step's bracket
    # the three steps before the last at 15 rounds; whatever decides the last step (its
    # bracket, or without one its reading and any re-measurement) at all 30
    assert single[:3] == [15, 15, 15] and set(single[3:]) <= {30}
    if bracket:
        assert candidates and set(candidates) == {30}
    else:
        assert not candidates and len(single) >= 4
    assert len(pr.history) >= 4 and fb.points[-1].step == len(pr.history)
    assert 0.45 * 0.9 <= landed(pr, true_ratio) <= 0.45 * 1.1


def test_steering_protocol_keeps_small_round_counts():
    from halp_trt.pruning.feedback import steering_protocol

    assert steering_protocol(Protocol(rounds=60)).rounds == 30
    assert steering_protocol(Protocol(rounds=30)).rounds == 15
    assert steering_protocol(Protocol(rounds=12)).rounds == 10
    assert steering_protocol(Protocol(rounds=5)).rounds == 5


@pytest.mark.parametrize("seed", [0, 1])
def test_a_prior_point_steadies_the_slope_after_one_noisy_early_reading(seed):
    # The first step's reading comes out 0.06 high (one noisy session). Alone, the fit through
    # the original and that point reads a shallow slope, and the next step cuts far past its
    # schedule; with the calibration's slimmed copy in the fit the slope stays near the true
    # one and the overshoot shrinks (what is left comes from the line through the high point).
    overshoot = {}
    for mode in ("alone", "with prior"):
        model, pr, fb, _ = make_loop(0.45, spread=0.0, seed=seed, steps=4, curve=lambda x: x)
        if mode == "with prior":
            fb.prior_points = [(0.5, 0.5)]  # latency here is the layer sum (curve x -> x)
        real, readings = fb.measure_current, []

        def noisy_first(steering=False):
            value = real(steering) + (0.06 if not readings else 0.0)
            readings.append(value)
            return value

        fb.measure_current = noisy_first
        run(model, fb)
        overshoot[mode] = fb.points[1].target_ratio - pr.history[1].predicted_ms / pr.full_ms
    assert overshoot["with prior"] < overshoot["alone"] - 0.03
