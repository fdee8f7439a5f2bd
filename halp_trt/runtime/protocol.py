"""The timing protocol shared by every backend.

Single timings on shared machines lie: noise arrives in bursts from other work, so consecutive
runs of one configuration can all land in a burst. Interleaving configurations across rounds
spreads each configuration's samples over time, and the minimum (or a low percentile) over
rounds filters the bursts. Measured here: median-of-30-consecutive gave 8.5% run-to-run CV and
missed the 8-channel steps; interleaved minimum over 15 rounds gave ~1% and found them.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

# Median more than this far above the minimum: the estimate is suspect (bursty machine).
NOISY_SPREAD = 0.15


@dataclass
class Stats:
    n: int
    min_ms: float
    p25_ms: float
    median_ms: float
    cv: float  # std / mean over all samples

    @property
    def spread(self) -> float:
        """(median − min) / min: how far typical runs sit above the best one."""
        return self.median_ms / self.min_ms - 1.0 if self.min_ms > 0 else float("inf")

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD

    def estimate(self, estimator: str = "min") -> float:
        return {"min": self.min_ms, "p25": self.p25_ms, "median": self.median_ms}[estimator]

    def to_json(self) -> dict:
        d = {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}
        return d


def summarize(samples_ms: Sequence[float]) -> Stats:
    a = np.asarray(samples_ms, dtype=float)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError("no finite timing samples")
    mean = float(a.mean())
    return Stats(n=int(a.size), min_ms=float(a.min()), p25_ms=float(np.percentile(a, 25)),
                 median_ms=float(np.median(a)),
                 cv=float(a.std() / mean) if mean > 0 else 0.0)


@dataclass
class Protocol:
    """How each entry was measured; stored in the table's identity."""

    rounds: int = 15
    timed_runs_per_round: int = 1
    untimed_runs_per_round: int = 1
    estimator: str = "min"
    batch_size: int = 48  # configurations whose sessions/engines are alive together
    seed: int = 0
    # A timed sample is the mean of enough back-to-back runs to last this long: a 15 µs conv
    # timed once is mostly timer and call overhead.
    min_sample_ms: float = 0.3
    # Graphs bigger than this (≈ their weights; default: more than a core's L2 holds) are timed
    # cold: the backend evicts its caches before each timed run, one run per sample, as their
    # weights would be inside a model. Measured on resnet18 at 64x64: with every layer warm the
    # table had an 8 MB cache cliff the whole model lacks; with every layer cold it predicted a
    # half-width model at 0.40 of the original for a measured 0.29; with this threshold, 0.27
    # for 0.27. The price is a step at the threshold that interpolation can straddle.
    cold_above_bytes: int = 1 << 20
    # Sessions built per graph; a sample is their mean within a round. One ORT session of a
    # whole model is a few percent faster or slower than another of the same graph for its
    # whole life (memory placement): measured on a pruned resnet18 at 64x64, four sessions of
    # one graph in one interleaved run had minima 0.596-0.673 ms. Layer tables average that
    # out over many entries; whole-model comparisons need several sessions.
    sessions_per_graph: int = 1

    def __post_init__(self):
        if self.rounds < 1 or self.timed_runs_per_round < 1 or self.batch_size < 1 or \
                self.sessions_per_graph < 1:
            raise ValueError("rounds, timed_runs_per_round, batch_size and sessions_per_graph "
                             "must be >= 1")
        if self.min_sample_ms < 0:
            raise ValueError("min_sample_ms must be >= 0")
        if self.estimator not in ("min", "p25", "median"):
            raise ValueError(f"estimator must be min, p25 or median, not {self.estimator!r}")

    def to_json(self) -> dict:
        d = asdict(self)
        if d["sessions_per_graph"] == 1:
            del d["sessions_per_graph"]  # tables measured before the field existed stay equal
        d["name"] = "interleaved-rounds"
        return d


def model_protocol(rounds: int = 30, sessions_per_graph: int = 3) -> Protocol:
    """For whole models: warm caches (a deployed model runs back to back and its own layers
    decide what stays cached), one run per sample, several sessions per graph."""
    return Protocol(rounds=rounds, cold_above_bytes=2 ** 62, min_sample_ms=0.0,
                    sessions_per_graph=sessions_per_graph)


def measure_interleaved(backend, graphs: Mapping[Hashable, Callable[[], bytes] | bytes],
                        protocol: Protocol | None = None,
                        on_round: Callable[[int], None] | None = None) -> dict[Hashable, Stats]:
    """Time every graph with the interleaved-rounds protocol; all handles of this call are
    prepared (built and warmed) before the first round. Returns Stats per key.

    ``graphs`` values may be callables so that ONNX bytes are only made when needed.
    ``on_round`` is called after each round with the number of configurations it timed.
    """
    protocol = protocol or Protocol()
    keys = list(graphs)
    handles, repeats, cold = {}, {}, {}
    try:
        for k in keys:
            g = graphs[k]
            onnx_bytes = g() if callable(g) else g
            cold[k] = len(onnx_bytes) > protocol.cold_above_bytes
            handles[k] = []
            for _ in range(protocol.sessions_per_graph):
                handles[k].append(backend.prepare(onnx_bytes, label=str(k)))
            one_ms = min(min(backend.time_runs(h, 3)) for h in handles[k])  # also warms each
            repeats[k] = 1 if cold[k] else max(1, min(1000, math.ceil(
                protocol.min_sample_ms / max(one_ms, 1e-4))))
        samples: dict[Hashable, list[float]] = {k: [] for k in keys}
        rng = random.Random(protocol.seed)
        for _ in range(protocol.rounds):
            order = keys[:]
            rng.shuffle(order)
            for k in order:
                for _ in range(protocol.timed_runs_per_round):
                    per_session = []
                    for h in handles[k]:
                        if protocol.untimed_runs_per_round:
                            backend.time_runs(h, protocol.untimed_runs_per_round)
                        if cold[k]:
                            backend.flush_cache()
                        runs = backend.time_runs(h, repeats[k])
                        per_session.append(sum(runs) / len(runs))
                    samples[k].append(sum(per_session) / len(per_session))
            if on_round:
                on_round(len(keys))
    finally:
        for hs in handles.values():
            for h in hs:
                backend.release(h)
    return {k: summarize(v) for k, v in samples.items()}
