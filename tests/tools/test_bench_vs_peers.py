"""The Fashion-MNIST comparison's bookkeeping: one level per run, levels from different
machines side by side, a level cut off on another machine re-run rather than mixed, peers
interpolated at halp-trt's latency from a bracketing pair, and the screening plan."""
import json
from types import SimpleNamespace

import pytest
import torch
from tool_scripts import load_tool


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_vs_peers")


def row(method, seed, acc_ft, machine="zen4", level=0.15, ratio=0.15, vs=1.0, points=()):
    return {"method": method, "seed": seed, "level": level, "acc_ft": acc_ft, "acc_bn": 0.5,
            "latency_ratio": ratio, "latency_vs_halp": vs, "matched": abs(vs - 1) <= 0.02,
            "interpolated": len(points) == 2, "points": list(points), "wall_s": 60.0,
            "setup": {"machine": machine, "base_sha256": "abc"}}


def test_rows_of_the_level_from_another_machine_are_not_mixed_in(bench, tmp_path, capsys):
    path = str(tmp_path / "rows.jsonl")
    for r in (row("halp-trt", 0, 0.85, "xeon"), row("halp-trt", 0, 0.86, "zen4"),
              row("halp-trt", 0, 0.87, "zen4", level=0.3)):
        bench.append_row(path, r)
    here = bench.read_rows(path, 0.15, {"machine": "zen4", "base_sha256": "abc"})
    assert [r["acc_ft"] for r in here] == [0.86]
    assert "1 rows of level 0.15 from another machine" in capsys.readouterr().out
    # a half-finished level on a new machine starts over: nothing of the Xeon's is kept
    assert bench.read_rows(path, 0.15, {"machine": "zen3", "base_sha256": "abc"}) == []


def test_levels_from_two_machine_classes_live_in_one_json(bench):
    a = bench.summarize_level([row("halp-trt", 0, 0.85), row("tp-l2-global-r16", 0, 0.84)],
                              0.15, 16, {"machine": "zen4"})
    b = bench.summarize_level([row("halp-trt", 0, 0.88, "xeon", level=0.3)], 0.3, 16,
                              {"machine": "xeon"})
    merged = bench.merge_level(bench.merge_level({}, b), a)
    assert [(lv["target"], lv["machine"]) for lv in merged["levels"]] == [(0.15, "zen4"),
                                                                          (0.3, "xeon")]
    redo = bench.summarize_level([row("halp-trt", 0, 0.9, "zen3")], 0.15, 8, {"machine": "zen3"})
    merged = bench.merge_level(json.loads(json.dumps(merged)), redo)  # survives a JSON trip
    assert [(lv["target"], lv["machine"]) for lv in merged["levels"]] == [(0.15, "zen3"),
                                                                          (0.3, "xeon")]
    lv = merged["levels"][0]
    assert set(lv["methods"]["halp-trt"]) >= {
        "latency_ratio_mean", "latency_ratio_std", "acc_bn_mean", "acc_bn_std", "acc_ft_mean",
        "acc_ft_std", "n_seeds"}


def test_an_ablation_added_later_keeps_the_levels_date_and_carries_its_own(bench):
    rows = [row("halp-trt", 0, 0.85), row("tp-l2-global-r16", 0, 0.84)]
    first = bench.summarize_level(rows, 0.15, 16, {"machine": "zen4", "date": "2026-12-06",
                                                   "original_ms": 10.5})
    merged = bench.merge_level({}, first)
    later = bench.summarize_level(rows + [row("halp-trt-min2groups", 0, 0.86)], 0.15, 16,
                                  {"machine": "zen4", "date": "2099-01-01", "original_ms": 9.9})
    lv = bench.merge_level(json.loads(json.dumps(merged)), later)["levels"][0]
    assert (lv["date"], lv["original_ms"]) == ("2026-12-06", 10.5)
    assert lv["ablations"]["halp-trt-min2groups"]["date"] != "2026-12-06"
    assert "(ablation, " in bench.markdown_section({"levels": [lv]})
    # a level whose own rows changed is a new measurement: its new date stands
    redo = bench.summarize_level([row("halp-trt", 0, 0.9), row("tp-l2-global-r16", 0, 0.84)],
                                 0.15, 16, {"machine": "zen4", "date": "2099-01-01"})
    assert bench.merge_level(merged, redo)["levels"][0]["date"] == "2099-01-01"


def test_a_peer_that_cannot_land_is_interpolated_from_a_bracketing_pair(bench):
    readings = [{"amount": 0.5, "latency_vs_halp": 1.12}, {"amount": 0.6, "latency_vs_halp": 0.93},
                {"amount": 0.55, "latency_vs_halp": 1.05}, {"amount": 0.7, "latency_vs_halp": 0.8}]
    pair = bench.match_points(readings)
    assert [p["amount"] for p in pair] == [0.6, 0.55]  # the closest on each side
    pair[0]["acc_ft"], pair[1]["acc_ft"] = 0.80, 0.90
    # 1.0 lies 7/12 of the way from 0.93 to 1.05
    assert bench.at_reference(pair, "acc_ft") == pytest.approx(0.80 + 0.10 * 7 / 12)
    # within 2%: that one reading alone; all on one side: the closest alone
    assert bench.match_points(readings + [{"amount": 0.57, "latency_vs_halp": 1.015}]) == [
        {"amount": 0.57, "latency_vs_halp": 1.015}]
    assert [p["amount"] for p in bench.match_points(readings[1::2] + readings[3:])] == [0.6]


def test_the_plan_screens_variants_at_seed_0_and_carries_the_best_two(bench):
    a = SimpleNamespace(seeds=3, screen=True, carry=2, ablation=True, with_fastnas=True)
    plan = bench.level_plan(a, 16, [])
    assert plan[0] == ("halp-trt", 0) and ("modelopt-fastnas", 0) in plan
    assert all(seed == 0 for _, seed in plan)  # later seeds wait for the screening
    accs = {"tp-l2-uniform-r16": 0.80, "tp-l2-global-r16": 0.84, "tp-taylor-uniform-r16": 0.82,
            "tp-taylor-global-r16": 0.86}
    done = [row("halp-trt", 0, 0.85), row("modelopt-fastnas", 0, 0.8)] + [
        row(m, 0, acc) for m, acc in accs.items()]
    plan = bench.level_plan(a, 16, done)
    assert plan[0] == ("tp-taylor-global-r8", 0)  # the other round_to, best variant, one seed
    assert plan[1:] == [(m, s) for s in (1, 2) for m in (
        "halp-trt", "tp-taylor-global-r16", "tp-l2-global-r16", "modelopt-fastnas")] + [
        (name, 0) for name in bench.HALP_ABLATIONS]  # halp-trt's ablations last
    a.screen = False
    assert sum(1 for m, _ in bench.level_plan(a, 8, []) if m.startswith("tp-")) == 4 * 3


def test_halp_ablations_can_run_at_every_seed(bench):
    a = SimpleNamespace(seeds=3, screen=False, carry=2, ablation=True, with_fastnas=False,
                        halp_ablation_seeds=3, halp_ablations=["halp-trt-interval40"])
    plan = bench.level_plan(a, 16, [row("halp-trt-interval40", 0, 0.9)])
    assert [p for p in plan if p[0].startswith("halp-trt-")] == [
        ("halp-trt-interval40", 1), ("halp-trt-interval40", 2)]



def test_the_unpruned_base_is_the_recipes_ceiling_and_no_peer(bench, tmp_path):
    """The base fine-tuned with the level's recipe runs last (one row per seed), sits in its
    own group — never the best peer — and the section says how far each side ends below it; a
    level whose setup already has that row at another level copies it."""
    a = SimpleNamespace(seeds=2, screen=False, carry=2, ablation=False, with_fastnas=False,
                        reference=True)
    plan = bench.level_plan(a, 16, [])
    assert plan[-2:] == [(bench.UNPRUNED, 0), (bench.UNPRUNED, 1)]
    rows = [row("halp-trt", 0, 0.85), row("tp-l2-global-r16", 0, 0.84),
            row(bench.UNPRUNED, 0, 0.90, ratio=1.0)]
    lv = bench.summarize_level(rows, 0.15, 16, {"machine": "zen4"})
    assert set(lv["methods"]) == {"halp-trt", "tp-l2-global-r16"}
    assert bench.best_peer(lv) == "tp-l2-global-r16"
    assert lv["reference"][bench.UNPRUNED]["acc_ft_mean"] == pytest.approx(0.90)
    md = bench.markdown_section({"levels": [lv]})
    assert "same fine-tuning: 0.9000 (-6.00 for the best peer, -5.00 for halp-trt)" in md
    assert "the fine-tuning recipe's ceiling" in md
    path = str(tmp_path / "rows.jsonl")
    setup = {"machine": "zen4", "base_sha256": "abc"}
    bench.append_row(path, {**row(bench.UNPRUNED, 0, 0.9, level=0.3, ratio=1.0),
                            "prune_batches": 0, "ft_batches": 938})
    copied = bench.unpruned_elsewhere(path, 0, setup)
    assert copied["acc_ft"] == 0.9 and copied["copied_from_level"] == 0.3
    assert bench.unpruned_elsewhere(path, 1, setup) is None
    assert bench.unpruned_elsewhere(path, 0, {**setup, "machine": "xeon"}) is None


def test_the_recorded_command_keeps_every_flag_given(bench):
    a = bench.parse_args(["--level", "0.15", "--distill", "0.5", "--ft-schedule", "cosine",
                          "--json", "tools/results/x.json", "--rows", "tools/results/x.jsonl",
                          "--halp-ablation-seeds", "3", "--halp-ablations", "halp-trt-min2groups"])
    assert a.distill == 0.5
    assert bench.level_command(a) == (
        "python tools/bench_vs_peers.py --level 0.15 --distill 0.5 --ft-schedule cosine "
        "--json tools/results/x.json --rows tools/results/x.jsonl --halp-ablation-seeds 3 "
        "--halp-ablations halp-trt-min2groups")
    assert "--distill" not in bench.level_command(bench.parse_args(["--level", "0.3"]))


def test_a_screening_runs_only_the_methods_named(bench):
    a = SimpleNamespace(seeds=1, screen=True, carry=2, ablation=False, with_fastnas=True,
                        methods=["halp-trt", "modelopt-fastnas", "tp-l2-global-r16"])
    assert bench.level_plan(a, 16, []) == [("halp-trt", 0), ("tp-l2-global-r16", 0),
                                           ("modelopt-fastnas", 0)]


def test_a_rows_width_profile_is_each_convs_pruned_output_width(bench):
    import torch_pruning as tp
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 16, 1), nn.Flatten(), nn.LazyLinear(4))
    model(torch.randn(1, 3, 8, 8))
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    graph.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(12))).prune()
    assert bench.layer_widths(model) == {"0": 20, "3": 16}


def test_a_screening_of_named_methods_goes_on_to_later_seeds(bench):
    """--methods with one Torch-Pruning variant: seed 0 done, seeds 1-2 follow (the plan used
    to stop, waiting for the variants the screening had left out)."""
    a = SimpleNamespace(seeds=3, screen=True, carry=2, ablation=False, with_fastnas=True,
                        methods=["halp-trt", "modelopt-fastnas", "tp-l2-global-r16"])
    done = [row(m, 0, 0.91) for m in a.methods]
    assert bench.level_plan(a, 16, done) == [
        (m, s) for s in (1, 2) for m in ("halp-trt", "tp-l2-global-r16", "modelopt-fastnas")]


def test_matching_leaves_a_plateau_of_the_peers_knob(bench, monkeypatch):
    """A knob whose latency does not move over a range (FastNAS's discrete subnets): aiming by
    the last reading creeps along the plateau; the bisection still finds a bracketing pair."""
    import halp_trt.runtime.export

    monkeypatch.setattr(halp_trt.runtime.export, "export_onnx", lambda model, example: model)

    def latency_vs_reference(amount):  # 6% faster from 0.7 up, 30% slower below
        return 0.94 if amount >= 0.7 else 1.3

    s = SimpleNamespace(example=None, measure=lambda graphs: {
        "reference": 1.0, "candidate": float(graphs["candidate"])})
    m = bench.match_latency(s, lambda a: str(latency_vs_reference(a)).encode(), (0.0, 0.95),
                            b"1.0", 0.85, exponent=1.0)
    assert [round(p["latency_vs_halp"], 2) for p in m["points"]] == [0.94, 1.3]


def test_halp_at_fastnas_widths_runs_after_fastnas_only_when_named(bench):
    a = SimpleNamespace(seeds=2, screen=True, carry=2, ablation=False, with_fastnas=True,
                        methods=["halp-trt", "modelopt-fastnas"])
    assert bench.AT_FASTNAS_WIDTHS not in {m for m, _ in bench.level_plan(a, 16, [])}
    a.methods.append(bench.AT_FASTNAS_WIDTHS)
    plan = bench.level_plan(a, 16, [])
    assert plan[-2:] == [(bench.AT_FASTNAS_WIDTHS, 0), (bench.AT_FASTNAS_WIDTHS, 1)]
    assert plan.index(("modelopt-fastnas", 1)) < plan.index((bench.AT_FASTNAS_WIDTHS, 0))
    frozen = bench.AT_FASTNAS_WIDTHS + "-frozen-magnitude"
    a.methods.append(frozen)
    assert bench.level_plan(a, 16, [])[-2:] == [(frozen, 0), (frozen, 1)]


def test_the_widths_pruner_ends_at_the_widths_given_keeping_its_most_important(bench):
    """Steps narrow every group toward the given widths (never widening), the last lands on
    them exactly, and each step keeps the channels its importance ranks highest."""
    from fakes import StaircaseLatencyModel
    from tiny_models import tiny_resnet

    from halp_trt.pruning.config import HALPConfig
    from halp_trt.pruning.pruner import HALPPruner

    torch.manual_seed(0)
    model, x = tiny_resnet(), torch.randn(4, 3, 16, 16)
    config = HALPConfig(target=0.5, steps=3, interval=1)
    groups = HALPPruner(model, x[:1], StaircaseLatencyModel(step=4), config).prunable
    final = {g.root: max(4, g.size // 2 // 4 * 4) for g in groups}
    pruner = bench.widths_pruner_class()(model, x[:1], StaircaseLatencyModel(step=4), config,
                                         final_widths=final)
    y = torch.randint(0, 10, (4,))
    widths_seen = []
    while not pruner.done:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        pruner.accumulate()
        scores = {g.id: s.clone() for g, s in zip(pruner.prunable, pruner.accumulator.scores())}
        before = {g.id: pruner.keep[g.id].clone() for g in pruner.prunable}
        record = pruner.step()
        widths_seen.append(record.kept)
        for g in pruner.prunable:  # no dropped channel outranks a kept one
            dropped = before[g.id] & ~pruner.keep[g.id]
            if dropped.any():
                assert scores[g.id][pruner.keep[g.id]].min() >= scores[g.id][dropped].max()
    assert widths_seen[-1] == final
    for a_step, b_step in zip(widths_seen, widths_seen[1:]):
        assert all(b_step[r] <= a_step[r] for r in final)
    assert any(widths_seen[0][r] > final[r] for r in final)  # gradual, not all at the first
