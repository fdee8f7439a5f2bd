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

from halp_trt.runtime.machine import COLD_LEVELS

# Median more than this far above the minimum: the estimate is suspect (bursty machine).
NOISY_SPREAD = 0.15

# Every session of a call is alive at once. A session holds its graph's weights about this many
# times over (ORT keeps the initializers and MLAS's prepacked copies, plus its arena): a bracket
# of 13 whole models x 3 sessions of an 88M-parameter model would want ~40 GB.
SESSION_MEMORY_FACTOR = 3.0
# Share of the memory available when a call starts that its sessions may take.
SESSION_MEMORY_SHARE = 0.5


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
    # Which cache "cold" empties (``machine.cold_level_for``): "llc" when the model's weights
    # do not stay in the last-level cache between inferences, "l2" when they do.
    cold_level: str = "llc"
    # Sessions built per graph. Each session's samples are summarized on their own and the
    # graph's statistics are the mean over sessions of each one's (``measure_sessions`` keeps
    # them all, so a comparison can say how far one session reads from another). Seen before
    # ``warm_ms``: four sessions of one pruned resnet18 at 64x64 in one interleaved run had
    # minima 0.596-0.673 ms. The minimum of per-round means over 8 sessions, used before,
    # lets a burst in any one session spoil a round: it read 0.81-0.87 ms in three runs where
    # the per-session minima averaged 0.78-0.80 (Zen 4, busy machine).
    sessions_per_graph: int = 1
    # Untimed runs before each timed one last at least this long (and are at least
    # ``untimed_runs_per_round``). Whole models under a few ms need it: measured on a
    # half-width resnet18 at 64x64 (0.75 ms, ORT CPU, Zen 4), 8 sessions of one graph read
    # per-session minima 25-29% apart after one untimed run, 7-8% after two, 1.1-1.6% after
    # four or more; arena, memory pattern, spinning, pinning, IOBinding and input alignment
    # changed nothing. After a switch from another session one run does not refill the caches,
    # so the minimum over rounds rewards whichever session is better prepared by what ran
    # before it (itself again when a shuffled round starts with the previous round's last
    # graph) — the same sessions every round for a fixed seed: a lifelong per-session offset.
    # 0 keeps the table protocol as it was.
    warm_ms: float = 0.0
    # ... and are at least this many, as long as they fit in ``MAX_WARM_RUNS_MS``. Time alone
    # is not enough where the weights fit in a large L3: on an Intel Xeon (family 6 model 207,
    # 260 MB L3 shared, 2 vCPUs), 8 sessions of resnet18 at 64x64 (3.1-4.8 ms, 45 MB of
    # weights) read minima 8-53% apart after one untimed run (what 3 ms of ``warm_ms`` gives),
    # 13-21% after two, 3-17% after four, 2-6% after eight (two runs of
    # tools/bench_session_spread.py); on Zen 4 (32 MB L3, the weights stream from memory every
    # run) one run was enough.
    warm_runs: int = 0

    def __post_init__(self):
        if self.rounds < 1 or self.timed_runs_per_round < 1 or self.batch_size < 1 or \
                self.sessions_per_graph < 1:
            raise ValueError("rounds, timed_runs_per_round, batch_size and sessions_per_graph "
                             "must be >= 1")
        if self.min_sample_ms < 0 or self.warm_ms < 0 or self.warm_runs < 0:
            raise ValueError("min_sample_ms, warm_ms and warm_runs must be >= 0")
        if self.cold_level not in COLD_LEVELS:
            raise ValueError(f"cold_level must be one of {COLD_LEVELS}, not "
                             f"{self.cold_level!r}")
        if self.estimator not in ("min", "p25", "median"):
            raise ValueError(f"estimator must be min, p25 or median, not {self.estimator!r}")

    def to_json(self) -> dict:
        d = asdict(self)
        if d["sessions_per_graph"] == 1:
            del d["sessions_per_graph"]  # tables measured before the field existed stay equal
        for name in ("warm_ms", "warm_runs"):
            if d[name] == 0:
                del d[name]
        if d["cold_level"] == "llc":
            del d["cold_level"]  # as every table measured before the field existed
        d["name"] = "interleaved-rounds"
        return d

    @classmethod
    def from_json(cls, d: dict, **overrides) -> "Protocol":
        """The protocol a table recorded (``to_json``), fields it lacks at their defaults."""
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, **overrides})


# Untimed warm-up per visit for whole models (see Protocol.warm_ms and warm_runs): 4 runs of
# the 0.75 ms model above were enough on Zen 4; the 3 ms resnet18 on the Xeon needed 8.
MODEL_WARM_MS = 3.0
MODEL_WARM_RUNS = 8
# Warm runs beyond warm_ms stop here: a 100 ms model is warm after one run and 30 rounds of
# several sessions would otherwise spend minutes warming.
MAX_WARM_RUNS_MS = 30.0


def warm_up_runs(protocol: Protocol, one_run_ms: float) -> int:
    """Untimed runs before each timed one for a graph whose one run takes ``one_run_ms``."""
    one_run_ms = max(one_run_ms, 1e-4)
    runs = protocol.untimed_runs_per_round
    if protocol.warm_ms:
        runs = max(runs, min(1000, math.ceil(protocol.warm_ms / one_run_ms)))
    if protocol.warm_runs:
        runs = max(runs, min(protocol.warm_runs, math.floor(MAX_WARM_RUNS_MS / one_run_ms)))
    return runs


def model_protocol(rounds: int = 30, sessions_per_graph: int = 3) -> Protocol:
    """For whole models: warm caches (a deployed model runs back to back and its own layers
    decide what stays cached: ``MODEL_WARM_MS`` of untimed runs before each timed one), one run
    per sample, several sessions per graph."""
    return Protocol(rounds=rounds, cold_above_bytes=2 ** 62, min_sample_ms=0.0,
                    sessions_per_graph=sessions_per_graph, warm_ms=MODEL_WARM_MS,
                    warm_runs=MODEL_WARM_RUNS)


@dataclass
class SessionStats:
    """One graph measured with several sessions: ``sessions`` summarize each session's own
    samples (in the order the sessions were built), ``combined`` is their mean (what
    ``measure_interleaved`` returns)."""

    combined: Stats
    sessions: list[Stats]

    def session_estimates(self, estimator: str = "min") -> list[float]:
        return [s.estimate(estimator) for s in self.sessions]


def measure_interleaved(backend, graphs: Mapping[Hashable, Callable[[], bytes] | bytes],
                        protocol: Protocol | None = None,
                        on_round: Callable[[int], None] | None = None) -> dict[Hashable, Stats]:
    """Time every graph with the interleaved-rounds protocol; all handles of this call are
    prepared (built and warmed) before the first round. Returns Stats per key.

    ``graphs`` values may be callables so that ONNX bytes are only made when needed.
    ``on_round`` is called after each round with the number of configurations it timed.
    """
    return {k: m.combined for k, m in measure_sessions(backend, graphs, protocol,
                                                        on_round).items()}


def measure_sessions(backend, graphs: Mapping[Hashable, Callable[[], bytes] | bytes],
                     protocol: Protocol | None = None,
                     on_round: Callable[[int], None] | None = None
                     ) -> dict[Hashable, SessionStats]:
    """``measure_interleaved`` keeping each session's samples as well (SessionStats per key).
    Every timing session of halp-trt passes here and holds the machine-wide timing lock."""
    from halp_trt.runtime.timing_lock import timing_exclusive

    with timing_exclusive():
        return _measure_sessions(backend, graphs, protocol or Protocol(), on_round)


def _measure_sessions(backend, graphs, protocol: Protocol, on_round) -> dict:
    keys = list(graphs)
    handles, repeats, cold, untimed = {}, {}, {}, {}
    per_graph = None
    try:
        for k in keys:
            g = graphs[k]
            onnx_bytes = g() if callable(g) else g
            if per_graph is None:  # the first graph (the original, usually the largest)
                per_graph = sessions_that_fit(len(onnx_bytes), len(keys),
                                              protocol.sessions_per_graph)
            cold[k] = len(onnx_bytes) > protocol.cold_above_bytes
            handles[k] = []
            for _ in range(per_graph):
                handles[k].append(backend.prepare(onnx_bytes, label=str(k)))
            one_ms = min(min(backend.time_runs(h, 3)) for h in handles[k])  # also warms each
            repeats[k] = 1 if cold[k] else max(1, min(1000, math.ceil(
                protocol.min_sample_ms / max(one_ms, 1e-4))))
            untimed[k] = warm_up_runs(protocol, one_ms)
        samples: dict[Hashable, list[list[float]]] = {
            k: [[] for _ in handles[k]] for k in keys}
        rng = random.Random(protocol.seed)
        for _ in range(protocol.rounds):
            order = keys[:]
            rng.shuffle(order)
            for k in order:
                for _ in range(protocol.timed_runs_per_round):
                    # sessions in a shuffled order too: the first after a switch from another
                    # graph reads slowest despite warm_ms (seen: session 0 slowest in 4 of 6
                    # compare_onnx runs, 6-13% apart); a fixed order made that a lasting offset
                    visits = list(zip(handles[k], samples[k]))
                    if len(visits) > 1:
                        rng.shuffle(visits)
                    for h, own in visits:
                        if untimed[k]:
                            backend.time_runs(h, untimed[k])
                        if cold[k]:
                            backend.flush_cache(protocol.cold_level)
                        runs = backend.time_runs(h, repeats[k])
                        own.append(sum(runs) / len(runs))
            if on_round:
                on_round(len(keys))
    finally:
        for hs in handles.values():
            for h in hs:
                backend.release(h)
    out = {}
    for k, v in samples.items():
        sessions = [summarize(own) for own in v]
        out[k] = SessionStats(mean_of_sessions(sessions, [x for own in v for x in own]), sessions)
    return out


def _session_memory_budget(available_bytes: int | None) -> float:
    """Bytes of graph weights the sessions of one call may hold (``SESSION_MEMORY_SHARE`` of
    the available memory, ~``SESSION_MEMORY_FACTOR`` times the weights per session); unbounded
    when the available memory is unknown."""
    from halp_trt.runtime.machine import available_memory_bytes

    if available_bytes is None:
        available_bytes = available_memory_bytes()
    if available_bytes is None:
        return float("inf")
    return available_bytes * SESSION_MEMORY_SHARE / SESSION_MEMORY_FACTOR


def sessions_that_fit(graph_bytes: int, n_graphs: int, wanted: int,
                      available_bytes: int | None = None) -> int:
    """Sessions per graph (1 to ``wanted``) such that ``n_graphs`` graphs of about
    ``graph_bytes`` each fit in the call's memory budget. Big models lose sessions first: their
    readings spread least from one session to the next."""
    if wanted <= 1:
        return wanted
    fits = graphs_that_fit(graph_bytes * max(1, n_graphs), available_bytes)
    return max(1, min(wanted, fits))


def graphs_that_fit(graph_bytes: int, available_bytes: int | None = None) -> int:
    """How many graphs of about ``graph_bytes`` one call can hold, one session each."""
    budget = _session_memory_budget(available_bytes)
    if budget == float("inf"):
        return 10 ** 6
    return int(budget // max(graph_bytes, 1))


def memory_chunks(items: Sequence, max_count: int, bytes_of: Callable[[object], int],
                  available_bytes: int | None = None) -> list[list]:
    """``items`` in order, split into chunks of at most ``max_count`` whose graphs (``bytes_of``
    each) fit in the call's memory budget; an item too big for that alone is a chunk of its
    own. A VGG table's step sweep at full width (24 linear layers of 25088 x 4096, 411 MB
    each) was killed for memory as one chunk."""
    budget = _session_memory_budget(available_bytes)
    chunks, current, used = [], [], 0
    for item in items:
        size = bytes_of(item)
        if current and (len(current) >= max_count or used + size > budget):
            chunks.append(current)
            current, used = [], 0
        current.append(item)
        used += size
    if current:
        chunks.append(current)
    return chunks


def mean_of_sessions(sessions: Sequence[Stats], all_samples: Sequence[float] = ()) -> Stats:
    """A graph's statistics from its sessions': each estimate the mean of the sessions' (one
    session: its own); n and cv over every sample (without the samples: n summed, cv the
    sessions' mean)."""
    if len(sessions) == 1:
        return sessions[0]
    if all_samples:
        pooled = summarize(all_samples)
        n, cv = pooled.n, pooled.cv
    else:
        n, cv = sum(s.n for s in sessions), float(np.mean([s.cv for s in sessions]))
    return Stats(n=n, min_ms=float(np.mean([s.min_ms for s in sessions])),
                 p25_ms=float(np.mean([s.p25_ms for s in sessions])),
                 median_ms=float(np.mean([s.median_ms for s in sessions])), cv=cv)
