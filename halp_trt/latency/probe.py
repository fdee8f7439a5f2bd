"""Does a latency table describe *this* machine? A short measurement decides, since the identity
cannot (masked CPU names, hosts behind one name, hand-edited or older tables). A few of the
table's own configurations are re-measured here in one interleaved session and compared:

- **steps**: a dense sweep of output widths on a signature that showed a step at build time
  must show the same step and phase here (ONNX Runtime: 8 on AVX2, 16 on AVX-512);
- **scale**: the median ratio of latencies here to the table's (a faster machine shows here);
- **shape**: each point's ratio against that median (another landscape at the same speed).

A few seconds on small layers; the figures are kept so a user sees why a table was refused."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from halp_trt.latency.layer_onnx import layer_onnx
from halp_trt.latency.steps import detect_step, suffix_min
from halp_trt.runtime.protocol import Protocol, measure_interleaved

# Same machine, another session: scale within a few percent and shape within ~10% for a
# 15-round table of resnet18 at 64x64; a 3-round table of 16x16 layers read 0.66x and 27%
# (few rounds leave minima high); 1.6x was seen on microsecond layers under load. Another
# machine class: 2.5x (Zen 3 vs Zen 5), or steps that moved. Scale matters least (calibration
# on the measured whole model absorbs it), so its bound is wide.
MAX_SCALE_RATIO = 2.0
# Shape is judged on the 80th percentile of the ratios' deviation, over at least
# MIN_SHAPE_POINTS entries the table itself measured cleanly (not flagged noisy).
# Same machine: 7% (Xeon, 15-round table of resnet18 at 64x64), ~10% (Zen); the Zen 4 table
# on the Xeon, at the same steps and a median of 1.09-1.13: 22-27%. But ten batch-1 tables of
# small torchvision layers at 64x64, re-probed 10 minutes after their build on the machine that
# built them (Zen 4), read 20-29% on 7 of 20 checks: on small layers the shape drifts as far on
# its own machine as it differs between these two. A deviation up to SHAPE_REFUSAL is therefore
# reported (``warnings``), not refused; beyond it no own table has been seen.
MAX_SHAPE_DEVIATION = 0.15
SHAPE_REFUSAL = 0.40
MIN_SHAPE_POINTS = 6
# A table measured with fewer rounds has minima too high and too scattered for a shape verdict
# (a 3-round table of 16x16 layers read 27-32% shape deviation on the machine it came from).
MIN_TABLE_ROUNDS_FOR_SHAPE = 10
SWEEP_WIDTH = 40  # consecutive counts: enough for the detector to tell 8 from 16 (>= 2g+3)
LATTICE_SIGNATURES = 4
MAX_LAYER_MS = 2.0  # keep the probe short: small layers only
# Below this a layer is mostly call overhead, whose share moves with whatever else the machine
# does (seen: 0.67x-1.6x on 16x16 test layers while other work ran): such layers are not
# compared, and a table of nothing else gets no scale or shape verdict.
MIN_LAYER_MS = 0.02
MIN_ROUNDS = 15  # at least the project's minimum for a trustworthy minimum
# The step sweep's signature must take at least this long at full width: on microsecond layers
# a step is noise (seen: a depthwise 3x3 at 2x2 of shufflenet_v2_x1_0 read steps of 16 where the
# table built minutes before on the same machine had 8, and the table was refused).
MIN_STEP_LAYER_MS = 0.05
# Signatures swept for steps; the steps differ only when every conclusive sweep says so. One
# sweep of a stem read 8 on the Xeon whose own table (15 rounds, minutes before) had 16 there.
STEP_SWEEPS = 3
# A step disagreement refuses only when at least this many signatures show it: one signature's
# sweep can read a neighbouring step on the machine that built the table (a 1x1 conv at 32x32
# of regnet_y_400mf read 8 in the probe's window, 16 in its build, three sessions in a row);
# a table from another ISA shows it on every signature swept. One signature alone: inconclusive.
MIN_DIFFERING_SIGNATURES = 2
# A conv with fewer input channels than this runs another kernel (a 3-channel stem reads its
# own steps: 8 or 16 from one build to the next on the same machine); it is not swept.
MIN_SWEEP_C_IN = 16


@dataclass
class ProbeResult:
    fits: bool
    reasons: list[str] = field(default_factory=list)
    step_signature: str | None = None
    step_expected: tuple[int, int] | None = None  # (step, phase) from the table
    step_found: tuple[int, int] | None = None  # (step, phase) measured here; None: no sweep
    step_conclusive: bool = False
    warnings: list[str] = field(default_factory=list)  # findings that do not refuse the table
    step_sweeps: list[dict] = field(default_factory=list)  # every signature swept
    scale_ratio: float | None = None  # median of measured here / table, lattice points
    # None when the table has no layer big enough to compare (all below MIN_LAYER_MS)
    shape_deviation: float | None = None  # 80th percentile of |ratio / median - 1|
    points: int = 0
    # each lattice point: its configuration, the table's ms and this machine's
    lattice: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    # a refusal measured twice (the second session's faster readings kept): None when the
    # first session found nothing to refuse
    confirmed_by_second_session: bool | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        steps = ("no step sweep (no signature of the table showed a step)"
                 if self.step_found is None else
                 f"steps expected {self.step_expected[0]} (phase {self.step_expected[1]}), found "
                 f"{self.step_found[0]} (phase {self.step_found[1]})"
                 + ("" if self.step_conclusive else ", inconclusive")
                 + f" on {self.step_signature}")
        scale = ("; no layer big enough to compare latencies" if self.scale_ratio is None else
                 f"; latencies here / table: median {self.scale_ratio:.2f}, shape deviation "
                 f"{100 * self.shape_deviation:.0f}% over {self.points} points")
        verdict = "fits this machine" if self.fits else "does NOT fit this machine"
        if self.fits and self.warnings:
            verdict += " (with warnings: " + "; ".join(self.warnings) + ")"
        second = {None: "", True: " (confirmed by a second session)",
                  False: " (a first session's refusal was not confirmed by a second)"}
        return (f"probe ({self.wall_s:.1f} s): {verdict}: {steps}{scale}"
                f"{second[self.confirmed_by_second_session]}")


def _expected_step(sig) -> tuple[int, int]:
    st = sig.step_out
    return (st.step, st.phase % st.step) if st.accepted and st.step > 1 else (1, 0)


def _step_signatures(table, n: int | None = None) -> list:
    """Up to ``n`` signatures whose own sweeps showed the clearest output steps, among small
    layers whose step is the table's most common one. One signature's sweep can read another
    step than the rest of its table (a coarse 3-round table of efficientnet_v2_l had 8 on one
    signature and 16 elsewhere, and the probe refused it on the machine it was built on minutes
    before); the table's consensus is what the knapsack relies on, so that is what the probe
    checks."""
    eligible = []
    for sig in table.signatures.values():
        st = sig.step_out
        grouped = sig.signature.op == "conv" and sig.signature.groups > 1  # no dense sweep
        if sig.signature.op not in ("conv", "dwconv") or grouped or not sig.out_prunable:
            continue
        if sig.signature.op == "conv" and not sig.depthwise and sig.c_in_max < MIN_SWEEP_C_IN:
            continue
        if sig.c_out_max < SWEEP_WIDTH or not sig.entries:
            continue
        full = sig.ms(sig.c_out_max if sig.depthwise else sig.c_in_max, sig.c_out_max)
        if full is None or not MIN_STEP_LAYER_MS <= full <= MAX_LAYER_MS:
            continue
        if st.accepted and st.source == "own" and (st.jump_to_noise or 0.0) > 0:
            eligible.append(sig)
    if not eligible:
        return []
    votes = Counter(sig.step_out.step for sig in table.signatures.values()
                    if sig.step_out.accepted and sig.step_out.source == "own")
    top = max(votes.values())
    consensus = {step for step, k in votes.items() if k == top}  # a tie keeps all of them
    agreeing = [sig for sig in eligible if sig.step_out.step in consensus] or eligible
    return sorted(agreeing, key=lambda sig: -sig.step_out.jump_to_noise)[:n or STEP_SWEEPS]


def _lattice_points(table) -> list[tuple[str, int, int]]:
    """Up to three measured entries (smallest, middle, largest) among those cheap enough, of a
    few signatures, largest first."""
    sigs = []
    for sig in table.signatures.values():
        # measured entries only: a transferred table's predictions (n = 0) are no reference
        pts = sorted(p for p, st in sig.entries.items()
                     if sig.ms(*p) is not None and not st.noisy and st.n > 0)
        if not pts:
            continue
        # a big layer's narrow entries count too (a resnet50 table at 224x224 has few layers
        # under MAX_LAYER_MS at full width: 3 points, no shape verdict)
        cheap = [p for p in pts if MIN_LAYER_MS <= sig.ms(*p) <= MAX_LAYER_MS]
        if cheap:
            sigs.append((max(sig.ms(*p) for p in cheap), sig, cheap))
    sigs.sort(key=lambda x: -x[0])
    out = []
    for _, sig, pts in sigs[:LATTICE_SIGNATURES]:
        for p in {pts[0], pts[len(pts) // 2], pts[-1]}:
            out.append((sig.key, *p))
    return out


def probe_table(table, backend, protocol: Protocol | None = None) -> ProbeResult:
    """Measure a few of ``table``'s configurations with ``backend`` and say whether the table
    describes this machine (see the module docstring)."""
    t0 = time.perf_counter()
    if protocol is None:
        recorded = table.identity.get("protocol", {})
        protocol = Protocol.from_json(recorded, rounds=max(MIN_ROUNDS, int(recorded.get(
            "rounds", MIN_ROUNDS))))
    batch = int(table.identity.get("batch", 1))
    step_sigs = _step_signatures(table)
    graphs, sweeps = {}, []
    for step_sig in step_sigs:
        c_in = step_sig.c_in_max
        hi = step_sig.c_out_max
        sweep = []
        for c in range(hi - SWEEP_WIDTH + 1, hi + 1):
            ci = c if step_sig.depthwise else c_in
            key = (step_sig.key, ci, c)
            sweep.append(key)
            graphs[key] = (lambda s=step_sig.signature, a=ci, b=c: layer_onnx(s, a, b, batch))
        sweeps.append(sweep)
    lattice = _lattice_points(table)
    for key in lattice:
        sig = table.signatures[key[0]]
        graphs.setdefault(key, (lambda s=sig.signature, a=key[1], b=key[2]:
                                layer_onnx(s, a, b, batch)))
    est = protocol.estimator

    def measure() -> dict:
        stats = measure_interleaved(backend, graphs, protocol) if graphs else {}
        return {k: st.estimate(est) for k, st in stats.items()}

    ms = measure()
    result = _verdict(table, step_sigs, sweeps, lattice, ms)
    if result.reasons:
        # one session can read a layer a few percent off for its whole life: a refusal stands
        # only if a second session, each configuration at its faster reading, confirms it
        again = measure()
        result = _verdict(table, step_sigs, sweeps, lattice,
                          {k: min(v, again[k]) for k, v in ms.items()})
        result.confirmed_by_second_session = bool(result.reasons)
    result.fits = not result.reasons
    result.wall_s = round(time.perf_counter() - t0, 2)
    return result


def _verdict(table, step_sigs, sweeps, lattice, ms: dict) -> ProbeResult:
    """The probe's findings from ``ms`` (configuration -> measured ms)."""
    result = ProbeResult(fits=True, points=len(lattice))
    for step_sig, sweep in zip(step_sigs, sweeps):
        counts = [k[2] for k in sweep]
        fit = detect_step(counts, suffix_min([ms[k] for k in sweep]))
        found = (int(fit.step), int(fit.phase) % int(fit.step)) if fit.accepted else (1, 0)
        result.step_sweeps.append({"signature": step_sig.key,
                                   "expected": list(_expected_step(step_sig)),
                                   "found": list(found), "conclusive": bool(fit.accepted)})
    if result.step_sweeps:
        conclusive = [r for r in result.step_sweeps if r["conclusive"]]
        differing = [r for r in conclusive if r["found"] != r["expected"]]
        steps_differ = len(differing) >= MIN_DIFFERING_SIGNATURES and \
            len(differing) == len(conclusive)
        # the sweep shown: a disagreement if every conclusive sweep disagrees, else the first
        # agreeing (or only inconclusive) one
        shown = differing[0] if differing and len(differing) == len(conclusive) else \
            next((r for r in conclusive if r["found"] == r["expected"]), result.step_sweeps[0])
        result.step_signature, result.step_conclusive = shown["signature"], shown["conclusive"]
        result.step_expected, result.step_found = tuple(shown["expected"]), tuple(shown["found"])
        (exp, exp_phase), (got, got_phase) = shown["expected"], shown["found"]
        if steps_differ:
            result.reasons.append(
                f"the latency steps differ: the table has steps of {exp} channels "
                f"(phase {exp_phase}), this machine shows {got} (phase {got_phase}) "
                f"on {shown['signature']}"
                + (f" and {len(differing) - 1} other signature(s)" if len(differing) > 1
                   else ""))
        elif differing and len(differing) == len(conclusive):
            result.step_conclusive = False
            result.warnings.append(
                f"steps of {got} instead of {exp} on {shown['signature']}, the only signature "
                f"swept conclusively: inconclusive (one signature can read a neighbouring step "
                f"on the machine that built its table)")
    if lattice:
        ratios = np.array([ms[k] / table.signatures[k[0]].ms(k[1], k[2])
                           for k in lattice])
        result.lattice = [{"config": f"{k[0]} {k[1]}->{k[2]}",
                           "table_ms": round(table.signatures[k[0]].ms(k[1], k[2]), 5),
                           "here_ms": round(ms[k], 5)} for k in lattice]
        median = float(np.median(ratios))
        result.scale_ratio = round(median, 4)
        result.shape_deviation = round(float(np.percentile(np.abs(ratios / median - 1), 80)), 4)
        if not 1 / MAX_SCALE_RATIO <= median <= MAX_SCALE_RATIO:
            result.reasons.append(f"this machine measures {median:.2f}x the table's latencies "
                                  f"(median over {len(lattice)} of its configurations)")
        table_rounds = int(table.identity.get("protocol", {}).get("rounds", 0))
        if len(lattice) >= MIN_SHAPE_POINTS and table_rounds >= MIN_TABLE_ROUNDS_FOR_SHAPE:
            off = (f"after scaling, 20% of the probed configurations are off by more than "
                   f"{100 * result.shape_deviation:.0f}%")
            if result.shape_deviation > SHAPE_REFUSAL:
                result.reasons.append(f"relative latencies differ: {off}")
            elif result.shape_deviation > MAX_SHAPE_DEVIATION:
                result.warnings.append(
                    f"relative latencies drift: {off} (up to {100 * SHAPE_REFUSAL:.0f}% is "
                    f"seen on the machine that built a table of small layers; not refused)")
    return result
