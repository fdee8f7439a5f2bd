#!/usr/bin/env python
"""How often does ``check-table`` refuse a table built on this very machine?

For each of ten models: ``halp-trt build-table`` (batch 1, 64 px, coarse grid), then
``halp-trt check-table`` on it right away and again at least ``--wait-min`` minutes later (the
other tables are built in between). A refusal of an own table is a false refusal; the goal is
none. Each table is also checked once with its identity edited to another machine class (an
AVX2 Zen 3): that check must refuse. Rows are written as they finish; the same command resumes.

    python tools/bench_probe.py --json tools/results/bench_probe.json [--wait-min 10]"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODELS = ["resnet18", "mobilenet_v3_small", "mobilenet_v2", "shufflenet_v2_x0_5",
          "squeezenet1_1", "mnasnet0_5", "regnet_x_400mf", "efficientnet_b0", "resnet34",
          "regnet_y_400mf"]
INPUT_SHAPE = "1,3,64,64"
# another machine class: what an AVX2 Zen 3 writes in a table's identity
OTHER_MACHINE = {"cpu_model": "AMD EPYC", "cpu_family": 25, "cpu_model_number": 1,
                 "cpu_stepping": 1, "isa": ["avx2", "fma", "avx", "sse4_2"]}


def halp_trt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "halp_trt.cli", *args], capture_output=True,
                          text=True)


def check(path: str, json_path: str) -> dict:
    t0 = time.perf_counter()
    proc = halp_trt("check-table", path, "--json", json_path)
    if proc.returncode not in (0, 2):
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:],
                "exit": proc.returncode}
    with open(json_path) as f:
        verdict = json.load(f)
    probe = verdict.get("probe") or {}
    return {"fits": verdict["fits"], "identity_differs": verdict["identity_differs"],
            "reasons": probe.get("reasons", []), "warnings": probe.get("warnings", []),
            "probe_fits": probe.get("fits"), "step_expected": probe.get("step_expected"),
            "step_found": probe.get("step_found"), "step_conclusive": probe.get("step_conclusive"),
            "scale_ratio": probe.get("scale_ratio"), "shape_deviation": probe.get("shape_deviation"),
            "confirmed_by_second_session": probe.get("confirmed_by_second_session"),
            "lattice": probe.get("lattice", []),
            "time": time.time(), "wall_s": round(time.perf_counter() - t0, 1)}


def edited_copy(path: str, out: str) -> str:
    with open(path) as f:
        table = json.load(f)
    table["identity"].update(OTHER_MACHINE)
    with open(out, "w") as f:
        json.dump(table, f)
    return out


def summarize(rows: dict) -> dict:
    done = [r for r in rows.values() if "second" in r]
    own = [c for r in done for c in (r["first"], r["second"])]
    return {"tables": len(done), "own_checks": len(own),
            "false_refusals": sum(not c.get("fits", False) for c in own),
            "other_machine_checks": sum("other_machine" in r for r in done),
            "other_machine_refused": sum(not r["other_machine"].get("fits", True)
                                         for r in done if "other_machine" in r)}


def markdown_section(results: dict) -> str:
    """The BENCHMARKS.md section for ``results`` (the JSON this script writes)."""
    s = results["summary"]
    lines = ["## Does check-table refuse a table of this machine? (probe false refusals)", "",
             f"`{results['command']}` — {results['date']}; ten torchvision models at "
             f"{results['input_shape']}, `build-table --max-points {results['max_points']}`, each "
             f"checked right after its build and again ≥ {results['wait_min']:g} min later, "
             "then once with its identity edited to an AVX2 Zen 3 (must refuse).", "",
             "| machine | tables | own-table checks | false refusals | another machine's "
             "refused |", "|---|---|---|---|---|",
             f"| {results['machine']} | {s['tables']} | {s['own_checks']} | "
             f"**{s['false_refusals']}** | {s['other_machine_refused']} of "
             f"{s['other_machine_checks']} |", "",
             "| model | build (min) | first check | second check (min later) | probe scale, "
             "shape deviation (second) |", "|---|---|---|---|---|"]
    for model, r in results["rows"].items():
        if "second" not in r:
            continue
        verdict = {True: "fits", False: "**refused**"}
        sec = r["second"]
        lines.append(f"| {model} | {r['build_s'] / 60:.1f} | {verdict[r['first'].get('fits')]}"
                     f" | {verdict[sec.get('fits')]} ({r['minutes_between']}) | "
                     f"{sec.get('scale_ratio') or float('nan'):.2f}, "
                     f"{100 * (sec.get('shape_deviation') or float('nan')):.0f}% |")
    return "\n".join(lines + [""])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", dest="json_path", required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--wait-min", type=float, default=10.0,
                    help="minutes between a table's first and second check")
    ap.add_argument("--max-points", type=int, default=6, help="build-table's grid per axis")
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "halp-probe"))
    a = ap.parse_args(argv)
    from halp_trt.runtime.machine import cpu_identity, machine_class

    os.makedirs(a.work_dir, exist_ok=True)
    machine = machine_class(cpu_identity())
    results = {}
    if os.path.exists(a.json_path):
        with open(a.json_path) as f:
            results = json.load(f)
    rows = results.get("rows", {}) if results.get("machine") == machine else {}

    def save():
        out = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "input_shape": INPUT_SHAPE,
               "wait_min": a.wait_min, "max_points": a.max_points,
               "command": "python tools/bench_probe.py --json " + a.json_path,
               "summary": summarize(rows), "rows": rows}
        with open(a.json_path + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(a.json_path + ".tmp", a.json_path)

    models = [m for m in a.models.split(",") if m]
    for model in models:  # build and check each once
        row = rows.setdefault(model, {})
        table = os.path.join(a.work_dir, f"{model}.json")
        if "first" in row and os.path.exists(table):
            continue
        row = rows[model] = {}  # a new table: an earlier run's checks were of another one
        t0 = time.perf_counter()
        proc = halp_trt("build-table", model, "--input-shape", INPUT_SHAPE, "--out", table,
                        "--max-points", str(a.max_points))
        if proc.returncode != 0:
            row["build_error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            save()
            continue
        row["build_s"] = round(time.perf_counter() - t0, 1)
        row["first"] = check(table, table + ".check1.json")
        print(f"{model}: built in {row['build_s'] / 60:.1f} min; first check "
              f"{'fits' if row['first'].get('fits') else 'REFUSED'}", flush=True)
        save()
    for model in models:  # the second check, --wait-min after the first
        row = rows[model]
        table = os.path.join(a.work_dir, f"{model}.json")
        if "first" not in row or "second" in row:
            continue
        wait_s = row["first"]["time"] + 60 * a.wait_min - time.time()
        if wait_s > 0:
            time.sleep(wait_s)
        row["second"] = check(table, table + ".check2.json")
        row["minutes_between"] = round((row["second"]["time"] - row["first"]["time"]) / 60, 1)
        row["other_machine"] = check(edited_copy(table, table + ".other.json"),
                                     table + ".other.check.json")
        print(f"{model}: second check after {row['minutes_between']} min "
              f"{'fits' if row['second'].get('fits') else 'REFUSED'}; as another machine "
              f"{'REFUSED' if not row['other_machine'].get('fits', True) else 'fits (wrong)'}",
              flush=True)
        save()
    s = summarize(rows)
    print(f"{machine}: {s['false_refusals']} false refusals in {s['own_checks']} checks of "
          f"{s['tables']} own tables; tables of another machine refused "
          f"{s['other_machine_refused']} of {s['other_machine_checks']}")


if __name__ == "__main__":
    main()
