"""Fuzzing: random mutations of a valid latency table, and random option values for
every command. No outcome may be a traceback: each is success, a HalpError, or a click usage
error (exit code 2). CLI cases must fail before any heavy work (training, evaluating,
measuring, building a table), which is replaced here by an exception that counts as
"accepted". Fixed seeds; 400 table mutations and 200 command lines."""
import collections
import json
import random

import pytest
import torch
from click.testing import CliRunner

import halp_trt.runtime.deploy  # noqa: F401  (bind their imports before the tests patch them)
import halp_trt.pruning.feedback  # noqa: F401
from halp_trt.cli import main
from halp_trt.errors import HalpError
from halp_trt.runtime.export import export_onnx
from halp_trt.latency.inspection import format_report
from halp_trt.latency.table import LatencyTable
from fakes import ReachedHeavyWork
from tiny_models import tiny_resnet

MODEL = "tiny_models:tiny_resnet"
N_TABLE_CASES = 400
N_CLI_CASES = 200  # 50 per command




# ---- the table loader -------------------------------------------------------------------------

def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(node, path):
    for k in path:
        node = node[k]
    return node


def mutate(text: str, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["delete", "type", "number", "truncate", "flip"])
    if kind == "truncate":
        return kind, text[: rng.randrange(len(text))].encode()
    if kind == "flip":
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return kind, bytes(b)
    d = json.loads(text)
    paths = [p for p in _paths(d) if p]
    if kind == "number":
        paths = [p for p in paths if isinstance(_get(d, p), (int, float))
                 and not isinstance(_get(d, p), bool)]
    p = rng.choice(paths)
    parent = _get(d, p[:-1])
    if kind == "delete":
        del parent[p[-1]]
    elif kind == "type":
        parent[p[-1]] = rng.choice([None, "x", "", [], {}, 0, 1, -1, 1.5, True, [1, 2],
                                    {"a": 1}, [[1]]])
    else:
        v = _get(d, p)
        parent[p[-1]] = rng.choice([float("nan"), float("inf"), -float("inf"), -abs(v) - 1, 0,
                                    10 ** 30, 10 ** 400, 1e308, -1e-300, v * 1e12, 2 ** 63])
    return kind, json.dumps(d).encode()  # NaN/Infinity are written as bare literals


def test_fuzz_table_loader(tmp_path, tiny_table):
    valid = open(tiny_table).read()
    rng = random.Random(0)
    outcomes = collections.Counter()
    runner = CliRunner()
    path = tmp_path / "fuzzed.json"
    for i in range(N_TABLE_CASES):
        kind, data = mutate(valid, rng)
        path.write_bytes(data)
        try:
            table = LatencyTable.load(str(path), require_complete=False)
        except HalpError:
            outcomes["refused"] += 1
            continue
        # whatever loads must be usable without a traceback: report, lookups, inspect
        outcomes["loaded"] += 1
        try:
            format_report(table)
            for sig in table.signatures.values():
                for c in {1, sig.c_out_max // 2 or 1, sig.c_out_max}:
                    sig.lookup(sig.c_in_max if not sig.depthwise else c, c)
        except HalpError:
            pass
        res = runner.invoke(main, ["inspect", str(path)])
        assert res.exit_code in (0, 2) and "Traceback" not in res.output, (i, kind, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit), \
            (i, kind, repr(res.exception))
    # both outcomes occur: the fuzzer reaches past the parser
    assert outcomes["refused"] > N_TABLE_CASES // 2 and outcomes["loaded"] > 20, outcomes


# ---- command-line options ---------------------------------------------------------------------

@pytest.fixture
def files(tmp_path, tiny_table, monkeypatch, no_heavy_work):
    """Paths of every kind for the option generators, and heavy work replaced."""
    monkeypatch.setattr("halp_trt.latency.inspection.plot_signature",
                        lambda sig, path, *a, **kw: open(path, "wb").close())
    monkeypatch.setenv("HALP_TRT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "garbage.bin").write_bytes(b"\x00\xffgarbage")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "dir").mkdir()
    d = json.loads(open(tiny_table).read())
    d["complete"] = False
    (tmp_path / "partial.json").write_text(json.dumps(d))
    d["identity"]["device"] = "cuda:0"
    (tmp_path / "other.json").write_text(json.dumps(d))
    x = torch.randn(1, 3, 16, 16)
    (tmp_path / "m.onnx").write_bytes(export_onnx(tiny_resnet(), x))
    torch.save(tiny_resnet().state_dict(), tmp_path / "w.pt")
    torch.save(tiny_resnet(num_classes=3).state_dict(), tmp_path / "w3.pt")
    t = str(tmp_path)
    return {
        "table": [tiny_table, f"{t}/missing.json", f"{t}/garbage.bin", f"{t}/dir",
                  f"{t}/partial.json", f"{t}/other.json", f"{t}/m.onnx", ""],
        "onnx": [f"{t}/m.onnx", f"{t}/missing.onnx", f"{t}/garbage.bin", tiny_table,
                 f"{t}/dir", ""],
        "out_file": [f"{t}/o/t.json", f"{t}/dir", f"{t}/a_file/x.json", f"{t}/partial.json",
                     f"{t}/other.json", f"{t}/garbage.bin", ""],
        "out_dir": [f"{t}/run", f"{t}/a_file", f"{t}/a_file/sub", ""],
        "weights": [f"{t}/w.pt", f"{t}/w3.pt", f"{t}/garbage.bin", f"{t}/missing.pt",
                    tiny_table, f"{t}/dir"],
        "data": ["digits", "digits:x", "imagefolder:", f"imagefolder:{t}/dir",
                 f"imagefolder:{t}/missing", f"cifar10:{t}/dir", "mnist", ""],
    }


NUMS = ["0", "-1", "1", "2", "x", "1.5", "", "1e3", "nan", str(2 ** 63), "-0"]


def command_specs(f):
    """Per command: a valid invocation (first value of each option) and, for each option,
    values to draw from — valid and invalid. None means: leave the option out."""
    return {
        "build-table": [
            ("MODEL", [MODEL, "no_such_model", "nomod:x", "tiny_models:", "tiny_models:nothing",
                       ":", "", "a:b:c"]),
            ("--input-shape", ["1,3,16,16", "1x3x16x16", "0,3,16,16", "-1,3,16,16", "1,3,16",
                               "1,3,16,16,1", "a,b,c,d", "", "1,1,16,16", "2,3,8,8",
                               "1,3,1e3,16", None]),
            ("--out", f["out_file"] + [None]),
            ("--num-classes", [None, "10", "0", "-3", "x", "1", "100"]),
            ("--precision", [None, "fp32", "fp16", "int8", ""]),
            ("--gpu", [False, True]),
            ("--threads", [None, "1", "0", "-1", "x", "64"]),
            ("--optimization", [None, "all", "basic", "none", ""]),
            ("--rounds", ["3"] + NUMS), ("--max-points", ["3"] + NUMS),
            ("--validate", [None] + NUMS),
            ("--exclude", [None, "stem", "fc", "nope", ""]),
            ("--timing-cache", [None, f["out_file"][0] + ".cache", f["out_file"][1]]),
        ],
        "inspect": [
            ("TABLE", f["table"] + [None]),
            ("--layer", [None, "stem", "block.conv*", "[", "(", "*", "**", "\\", "", "zzz",
                         "conv_k3.*hw16", "linear_x1"]),
            ("--out", [None] + f["out_dir"]),
        ],
        "prune-and-deploy": [
            ("--out", f["out_dir"] + [None]),
            ("--model", [MODEL, "no_such_model", "nomod:x", ""]),
            ("--table", f["table"] + ["auto"]),
            ("--weights", [None] + f["weights"]),
            ("--data", ["digits"] + f["data"]),
            ("--input-size", ["16", "8", "0", "-16", "7", "x", ""]),
            ("--batch-size", [None, "1", "2", "0", "-1", "x"]),
            ("--target", ["0.85", "0.5", "50%", "0", "1", "-1", "12ms", "0ms", "1e400ms",
                          "fast", "", "nan", "0.001ms"]),
            ("--steps", ["2"] + NUMS), ("--interval", ["2"] + NUMS),
            ("--epochs", ["1"] + NUMS), ("--pretrain-epochs", ["0"] + NUMS),
            ("--train-batch-size", ["32"] + NUMS), ("--rounds", ["3"] + NUMS),
            ("--seed", ["0"] + NUMS), ("--max-batches", ["1"] + NUMS),
            ("--lr", [None, "0.01", "0", "-1", "nan", "inf", "x"]),
            ("--contribution", [None, "two_sided", "one_sided", "both"]),
            ("--importance", [None, "taylor", "magnitude", "random"]),
            ("--calibration", [None, "affine", "additive", "ratio", "linear"]),
            ("--precision", [None, "fp32", "fp16", "int8"]),
            ("--gpu", [False, True]),
            ("--allow-table-mismatch", [False, True]),
            ("--exclude", [None, "stem", "nope", ""]),
        ],
        "validate": [
            ("ORIGINAL", f["onnx"] + [None]),
            ("PRUNED", f["onnx"] + [None]),
            ("--table", [None] + f["table"]),
            ("--gpu", [False, True]),
            ("--precision", [None, "fp32", "fp16", "bf16"]),
            ("--rounds", ["3", "30", "2", "0", "-1", "x"]),
            ("--json", [None] + f["out_file"]),
        ],
    }


def random_invocation(rng, command, spec):
    """The valid invocation with 0-3 options replaced by random values."""
    values = {name: choices[0] for name, choices in spec}
    for name, choices in rng.sample(spec, rng.choice([0, 1, 1, 1, 2, 2, 3])):
        values[name] = rng.choice(choices)
    args = [command]
    for name, v in values.items():
        if v is None or v is False:
            continue
        if not name.startswith("--"):
            args.append(v)  # positional
        elif v is True:
            args.append(name)
        else:
            args += [name, v]
    return args


def test_fuzz_cli_options(files):
    rng = random.Random(0)
    runner = CliRunner()
    outcomes = collections.Counter()
    specs = command_specs(files)
    commands = list(specs)
    for i in range(N_CLI_CASES):
        command = commands[i % len(commands)]
        args = random_invocation(rng, command, specs[command])
        res = runner.invoke(main, args)
        what = f"case {i}: halp-trt {' '.join(map(repr, args))}\n{res.output}"
        assert "Traceback" not in res.output, what
        if isinstance(res.exception, ReachedHeavyWork):
            outcomes[command, "accepted"] += 1
            continue
        assert res.exception is None or isinstance(res.exception, SystemExit), \
            f"{what}\n{res.exception!r}"
        assert res.exit_code in (0, 2), what
        if res.exit_code == 2:
            assert "error: " in res.output or "Error: " in res.output, what
        outcomes[command, {0: "ok", 2: "refused"}[res.exit_code]] += 1
    # every command both refuses and accepts some of the random cases
    for command in commands:
        assert outcomes[command, "refused"] > 5, outcomes
        assert outcomes[command, "accepted"] + outcomes[command, "ok"] > 5, outcomes
