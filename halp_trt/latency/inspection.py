"""Looking at a latency table: per-signature rows and step-curve pictures."""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass

from halp_trt.fileio import make_dirs, write_atomic_with
from halp_trt.graph.layers import LayerSpec
from halp_trt.latency.table import LatencyTable, SignatureTable


@dataclass
class SignatureRow:
    key: str
    layers: list[str]
    c_in_range: tuple[int, int]
    c_out_range: tuple[int, int]
    step_in: int
    step_out: int
    min_ms: float
    max_ms: float
    n_entries: int
    noisy_entries: int


def table_layer_specs(table: LatencyTable) -> list[LayerSpec]:
    """The model's layers as stored in the table."""
    specs = []
    for d in table.layers:
        sig = table.signatures[d["signature"]].signature
        specs.append(LayerSpec(name=d["name"], signature=sig, in_channels=d["in_channels"],
                               out_channels=d["out_channels"], in_group=d["in_group"],
                               out_group=d["out_group"]))
    return specs


def _matches(sig: SignatureTable, pattern: str | None) -> bool:
    if not pattern:
        return True
    names = [sig.key] + sig.layers
    regex = _safe_regex(pattern)
    return any(fnmatch.fnmatch(n, pattern) or (regex and re.search(pattern, n)) for n in names)


def _safe_regex(pattern: str) -> bool:
    try:
        re.compile(pattern)
        return True
    except re.error:
        return False


def signature_rows(table: LatencyTable, pattern: str | None = None) -> list[SignatureRow]:
    rows = []
    for sig in table.signatures.values():
        if not _matches(sig, pattern) or not sig.entries:
            continue
        vals = [sig.ms(ci, co) for ci, co in sig.entries]
        lo_in = 1 if sig.in_prunable else sig.c_in_max
        lo_out = 1 if sig.out_prunable else sig.c_out_max
        rows.append(SignatureRow(sig.key, sig.layers, (lo_in, sig.c_in_max),
                                 (lo_out, sig.c_out_max), sig.step_in.step, sig.step_out.step,
                                 min(vals), max(vals), len(sig.entries),
                                 sum(st.noisy for st in sig.entries.values())))
    return rows


def format_report(table: LatencyTable, pattern: str | None = None) -> str:
    ident = table.identity
    lines = [
        f"table: {ident.get('model')} input {ident.get('input_shape')} on "
        f"{ident.get('runtime')} {ident.get('runtime_version')} ({ident.get('device')}, "
        f"{ident.get('cpu_model', '')}) precision {ident.get('precision')}, threads "
        f"{ident.get('threads')}, optimization {ident.get('optimization_level')}",
        f"protocol: {ident.get('protocol', {}).get('rounds')} interleaved rounds, estimator "
        f"{table.estimator}; complete: {table.complete}",
        "",
        f"{'signature':44s} {'layers':>6s} {'c_in':>9s} {'c_out':>9s} {'step':>7s} "
        f"{'min ms':>8s} {'max ms':>8s} {'n':>5s} {'noisy':>5s}",
    ]
    for r in signature_rows(table, pattern):
        lines.append(
            f"{r.key:44s} {len(r.layers):6d} {r.c_in_range[0]:>4d}-{r.c_in_range[1]:<4d} "
            f"{r.c_out_range[0]:>4d}-{r.c_out_range[1]:<4d} {r.step_in:>3d}/{r.step_out:<3d} "
            f"{r.min_ms:8.4f} {r.max_ms:8.4f} {r.n_entries:5d} {r.noisy_entries:5d}")
    landscape = head_landscapes(table, pattern)
    if landscape:
        lines += ["", "attention (c_in: embedding width, c_out: heads); ms by head count at "
                  "full width, the step is in heads:"] + landscape
    specs = table_layer_specs(table)
    layers_ms = table.layers_sum_ms(specs)
    lines.append("")
    lines.append(f"full model, sum of {len(specs)} layers predicted: {layers_ms:.3f} ms")
    if table.model_measured_ms is not None:
        lines.append(f"full model measured whole: {table.model_measured_ms:.3f} ms "
                     f"(layer sum / whole = {layers_ms / table.model_measured_ms:.2f}; the rest "
                     "is pooling, adds, the classifier and graph overheads)")
    val = table.extra.get("validation")
    if val and val.get("n"):
        lines.append(f"held-out validation: {val['n']} points, median |error| "
                     f"{100 * val['median_abs_rel_error']:.1f}%, max "
                     f"{100 * val['max_abs_rel_error']:.1f}%")
    return "\n".join(lines)


def head_landscapes(table: LatencyTable, pattern: str | None = None) -> list[str]:
    """One line per attention signature: measured latency at every head count (its own step
    landscape: heads are knapsack items, not channels)."""
    lines = []
    for sig in table.signatures.values():
        if not sig.signature.is_attention or not _matches(sig, pattern) or not sig.entries:
            continue
        pts, _, _ = _axis_curves(sig, "out")
        st = sig.step_out
        lines.append(f"  {sig.key} (embed {sig.c_in_max}, {len(sig.layers)} layer(s), step "
                     f"{st.step}{'' if st.accepted else ' (none)'}): "
                     + " ".join(f"{h}:{ms:.4f}" for h, ms in pts))
    return lines


def _axis_curves(sig: SignatureTable, axis: str):
    """(measured points, lookup curve, full width) along one axis at the other's full width."""
    if axis == "out":
        pts = sorted((co, sig.ms(ci, co)) for ci, co in sig.entries
                     if ci == (co if sig.depthwise else sig.c_in_max))
        full = sig.c_out_max
        curve = [(c, sig.lookup(c if sig.depthwise else sig.c_in_max, c))
                 for c in range(1, full + 1)]
    else:
        pts = sorted((ci, sig.ms(ci, co)) for ci, co in sig.entries if co == sig.c_out_max)
        full = sig.c_in_max
        curve = [(c, sig.lookup(c, sig.c_out_max)) for c in range(1, full + 1)
                 if c % sig.signature.groups == 0]
    return pts, curve, full


def plot_signature(sig: SignatureTable, path: str, others: list[tuple[str, SignatureTable]] = (),
                   label: str = "") -> None:
    """Two panels: latency vs c_out at full c_in, and vs c_in at full c_out — measured points,
    the lookup curve (step rounding + suffix minimum + interpolation) and step marks. With
    ``others`` (label, signature of another table), their curves are drawn in the same panels
    so runtimes or precisions can be compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tables = [(label or "table", sig)] + list(others)
    colors = ["tab:blue", "tab:red", "tab:green", "tab:purple"]
    for ax, axis in zip(axes, ("out", "in")):
        prunable = sig.out_prunable if axis == "out" else sig.in_prunable and not sig.depthwise
        own = sig.step_out if axis == "out" else sig.step_in
        steps = ", ".join(f"{lab}: {(s.step_out if axis == 'out' else s.step_in).step}"
                          for lab, s in tables) if others else \
            f"{own.step}" + ("" if own.accepted else " (none)")
        other_full = sig.c_in_max if axis == "out" else sig.c_out_max
        ax.set_title(f"vs c_{axis} at full c_{'in' if axis == 'out' else 'out'} "
                     f"({other_full}); step {steps}", fontsize=9)
        ax.set_xlabel(("heads" if axis == "out" else "embedding width")
                      if sig.signature.is_attention else f"c_{axis}")
        ax.set_ylabel("latency (ms)")
        if not prunable:
            ax.text(0.5, 0.5, "axis not prunable", ha="center", transform=ax.transAxes)
            continue
        for i, (lab, s) in enumerate(tables):
            pts, curve, full = _axis_curves(s, axis)
            color = colors[i % len(colors)]
            prefix = f"{lab} " if others else ""
            if pts:
                ax.plot(*zip(*pts), "o", ms=3, label=f"{prefix}measured", color=color)
            ax.plot(*zip(*curve), "-", lw=1.2, label=f"{prefix}lookup", color=color,
                    alpha=0.6 if others else 1.0)
            step = s.step_out if axis == "out" else s.step_in
            if not others and step.accepted and step.step > 1:
                for c in range(step.phase + step.step, full + 1, step.step):
                    ax.axvline(c, color="0.85", lw=0.6, zorder=0)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{sig.key} ({len(sig.layers)} layer{'s' if len(sig.layers) > 1 else ''})",
                 fontsize=10)
    fig.tight_layout()
    write_atomic_with(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


def _setup(table: LatencyTable) -> str:
    i = table.identity
    return (f"{i.get('backend') or i.get('runtime')} {i.get('runtime_version')} "
            f"{i.get('precision')}")


def compare_report(a: LatencyTable, b: LatencyTable, pattern: str | None = None,
                   labels: tuple[str, str] = ("A", "B")) -> str:
    """Side by side, per signature both tables hold: steps and full-width latency."""
    la, lb = labels
    lines = [f"{la}: {_setup(a)}; {lb}: {_setup(b)}", "",
             f"{'signature':44s} {'step in/out ' + la:>14s} {'step in/out ' + lb:>14s} "
             f"{'full ms ' + la:>11s} {'full ms ' + lb:>11s} {lb + '/' + la:>6s}"]
    shared = [k for k in a.signatures if k in b.signatures and _matches(a.signatures[k], pattern)]
    for k in shared:
        sa, sb = a.signatures[k], b.signatures[k]
        fa = sa.lookup(sa.c_in_max, sa.c_out_max)
        fb = sb.lookup(sb.c_in_max, sb.c_out_max)
        lines.append(f"{k:44s} {sa.step_in.step:>7d}/{sa.step_out.step:<6d} "
                     f"{sb.step_in.step:>7d}/{sb.step_out.step:<6d} {fa:11.4f} {fb:11.4f} "
                     f"{fb / fa:6.2f}")
    only = sorted(set(a.signatures) ^ set(b.signatures))
    if only:
        lines += ["", f"{len(only)} signature(s) in only one table: {', '.join(only[:4])}"
                  + (" ..." if len(only) > 4 else "")]
    differ = sum(a.signatures[k].step_out.step != b.signatures[k].step_out.step for k in shared)
    lines += ["", f"{differ} of {len(shared)} shared signatures have a different output step"]
    return "\n".join(lines)


def inspect_table(table: LatencyTable, out_dir: str | None = None, pattern: str | None = None,
                  other: LatencyTable | None = None, labels: tuple[str, str] = ("A", "B")
                  ) -> tuple[str, list[str]]:
    """Text report and, with ``out_dir``, one PNG per matching signature. With ``other`` (a
    table of the same model on another runtime or precision) the report compares the two and
    each PNG draws both tables' curves."""
    pngs = []
    if out_dir:
        make_dirs(out_dir)
        for sig in table.signatures.values():
            if _matches(sig, pattern) and sig.entries:
                path = os.path.join(out_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", sig.key) + ".png")
                others = [(labels[1], other.signatures[sig.key])] if other is not None and \
                    sig.key in other.signatures else []
                plot_signature(sig, path, others, label=labels[0])
                pngs.append(path)
    if other is None:
        return format_report(table, pattern), pngs
    return (format_report(table, pattern) + "\n\n" + format_report(other, pattern) + "\n\n"
            + compare_report(table, other, pattern, labels)), pngs
