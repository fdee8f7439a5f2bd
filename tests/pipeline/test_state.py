"""The resumable state of a run (halp_trt.pipeline.state): saved weights-only, loaded back with
the same tensors and metadata, and anything else refused with what to do."""
import os

import pytest
import torch

from halp_trt.errors import HalpError
from halp_trt.pipeline.state import RunState
from tiny_models import versioned_tiny_resnet


def test_a_state_round_trips_with_the_same_tensors_and_state_dict_metadata(tmp_path):
    """Resuming must continue from exactly what was saved: weights, optimizer momentum, RNG,
    counters — and the state dicts' version metadata that some models (MNASNet) demand."""
    torch.manual_seed(0)
    model = versioned_tiny_resnet()
    # an optimizer's state dict: nested containers of tensors (torch.optim takes 4 s to import)
    optimizer = {"state": {i: {"momentum_buffer": torch.randn_like(p)}
                           for i, p in enumerate(model.parameters())},
                 "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]}
    rng = torch.get_rng_state()
    state = RunState(run={"model": "m", "input_size": 8}, phase="pruning",
                     original=model.state_dict(), original_ms=1.25, model=model.state_dict(),
                     optimizer=optimizer, rng=rng, prune_epochs_done=2)
    path = str(tmp_path / "checkpoint.pt")
    state.save(path)
    back = RunState.load(path)
    assert (back.run, back.phase, back.original_ms, back.prune_epochs_done) == \
        ({"model": "m", "input_size": 8}, "pruning", 1.25, 2)
    assert back.pruned is None and back.result is None and back.finetune_epochs_done == 0
    for k, v in model.state_dict().items():
        assert torch.equal(back.model[k], v) and torch.equal(back.original[k], v), k
    assert back.optimizer["param_groups"] == optimizer["param_groups"]
    assert all(torch.equal(back.optimizer["state"][i]["momentum_buffer"], s["momentum_buffer"])
               for i, s in optimizer["state"].items())
    assert torch.equal(back.rng, rng)
    versioned_tiny_resnet().load_state_dict(back.original)  # refuses a dict without versions


@pytest.mark.parametrize("content", [
    {"phase": "pruning"},  # no run
    {"run": {}, "phase": "distilling"},  # a phase this version does not have
    {"run": {}, "phase": "start", "teacher": {}},  # a field this version does not have
    [1, 2, 3],
])
def test_checkpoints_of_another_kind_or_version_are_refused(tmp_path, content):
    """Resuming from something that is not this version's state would misread it: one error
    saying to delete it."""
    path = tmp_path / "checkpoint.pt"
    torch.save(content, path)
    with pytest.raises(HalpError, match="not a halp-trt checkpoint of this version.*Delete it"):
        RunState.load(str(path))


def test_a_checkpoint_that_would_run_code_on_load_is_refused(tmp_path):
    """Checkpoints load weights-only: a pickled object is refused, never executed."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"run": {}, "phase": "start", "result": Evil()}, path)
    with pytest.raises(HalpError, match="(?s)cannot resume from .*Delete it to start over"):
        RunState.load(str(path))
    assert not marker.exists()


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from halp_trt.pipeline import state as state_mod

    path = str(tmp_path / "checkpoint.pt")
    state_mod.RunState(run={}, phase="finetune", finetune_epochs_done=1).save(path)

    def save_half_then_die(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(state_mod.torch, "save", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        state_mod.RunState(run={}, phase="finetune", finetune_epochs_done=2).save(path)
    monkeypatch.undo()
    assert state_mod.RunState.load(path).finetune_epochs_done == 1
