"""Checkpoints of another run are never deleted silently; a checkpoint that does not fit is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    checkpoint_compatibility,
    checkpoint_state_problems,
    clear_checkpoints,
    fresh_run_problem,
    load_compatible_checkpoint,
    save_checkpoint,
)
from coordinator.commands.common import check_output_folder
from coordinator.config import RunConfig
from fedmtl import cli
from tasks.registry import load_suite

TINY = load_suite("tiny")


def _config(**changes: Any) -> dict[str, Any]:
    return RunConfig.from_dict({"suite": "tiny", "mode": "mas", "rounds": 4, "split-round": 2, "max-groups": 2,
                                **changes}).to_dict()


def _save(out: Path, rnd: int, config: dict[str, Any], groups: list[list[str]] | None = None,
          broken: bool = False) -> None:
    groups = groups or [TINY.task_names]
    tensors = {}
    for gid, tasks in enumerate(groups):
        state = TINY.build_model(tasks).state_dict()
        if broken:
            state = {k: v for k, v in state.items() if not k.startswith("heads.")}
        tensors[f"group_{gid}"] = state
    state = {"round": rnd, "groups": [{"gid": gid, "tasks": t, "rounds_trained": rnd} for gid, t in enumerate(groups)],
             "history": {"config": config, "rounds": []}}
    save_checkpoint(out / CHECKPOINT_DIR, rnd, state, tensors, keep=5)


def test_a_fresh_run_is_refused_where_another_run_has_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert fresh_run_problem(out) is None
    _save(out, 0, _config())
    _save(out, 3, _config())
    problem = fresh_run_problem(out)
    assert problem is not None
    for part in ("already holds the checkpoints of another run", "suite 'tiny', mode 'mas'", "up to round 3",
                 "--resume", "--out", "--overwrite"):
        assert part in problem, part
    with pytest.raises(ValueError, match="already holds the checkpoints"):
        check_output_folder(out, _config(), overwrite=False)
    assert (out / CHECKPOINT_DIR / "round_00003").is_dir()  # nothing deleted
    said: list[str] = []
    check_output_folder(out, _config(), overwrite=True, say=said.append)
    assert said == [f"--overwrite: removed 2 checkpoint(s) of the previous run in {out}"]
    assert fresh_run_problem(out) is None and clear_checkpoints(out) == 0


def test_checkpoint_compatibility_names_the_keys() -> None:
    base = _config()
    assert checkpoint_compatibility(base, dict(base)) == []
    assert checkpoint_compatibility(base, {**base, "rounds": 9, "lr": 0.1, "round-timeout": 5.0}) == []
    got = checkpoint_compatibility(base, {**base, "mode": "dynamic", "split-round": 1, "seed": 4})
    assert [p.split(":")[0] for p in got] == ["seed", "mode", "split-round"], got
    assert got[1] == "mode: 'mas' in the checkpoint, 'dynamic' now"
    assert [p.split(":")[0] for p in checkpoint_compatibility(base, {**base, "max-groups": 3,
                                                                     "affinity-signal": "lookahead"})] == \
        ["max-groups", "affinity-signal"]
    # settings a mode does not use may change
    aio = _config(mode="all-in-one")
    assert checkpoint_compatibility(aio, {**aio, "max-groups": 1, "regroup-every": 9}) == []
    dyn = _config(mode="dynamic")
    assert [p.split(":")[0] for p in checkpoint_compatibility(dyn, {**dyn, "regroup-margin": 0.5})] == \
        ["regroup-margin"]
    win = _config(**{"affinity-average": "window"})
    assert [p.split(":")[0] for p in checkpoint_compatibility(win, {**win, "affinity-window": 2,
                                                                    "affinity-ema": 0.1})] == ["affinity-window"]
    # an older checkpoint without a key: its default
    old = {k: v for k, v in base.items() if k != "affinity-average"}
    assert checkpoint_compatibility(old, base) == []


def test_intact_checkpoints_that_do_not_fit_the_suite(tmp_path: Path) -> None:
    a, b, c, d = TINY.task_names
    good_state = {"groups": [{"gid": 0, "tasks": [a, b]}, {"gid": 1, "tasks": [c, d]}]}
    tensors = {"group_0": TINY.build_model([a, b]).state_dict(), "group_1": TINY.build_model([c, d]).state_dict()}
    assert checkpoint_state_problems(good_state, tensors, TINY) == []
    assert "no model" in checkpoint_state_problems(good_state, {"group_0": tensors["group_0"]}, TINY)[0]
    swapped = {"group_0": tensors["group_1"], "group_1": tensors["group_0"]}
    assert "does not fit suite 'tiny'" in checkpoint_state_problems(good_state, swapped, TINY)[0]
    twice = {"groups": [{"gid": 0, "tasks": [a, b]}, {"gid": 1, "tasks": [b, c, d]}]}
    assert any("in groups 0 and 1" in p for p in checkpoint_state_problems(
        twice, {"group_0": tensors["group_0"], "group_1": TINY.build_model([b, c, d]).state_dict()}, TINY))
    assert "not in suite" in checkpoint_state_problems({"groups": [{"gid": 0, "tasks": ["zzz"]}]}, {}, TINY)[0]
    assert checkpoint_state_problems({}, {}, TINY) == ["the checkpoint lists no task groups"]


def test_load_compatible_checkpoint_falls_back_or_fails_clearly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    root = out / CHECKPOINT_DIR
    assert load_compatible_checkpoint(root, _config(), TINY) is None
    _save(out, 1, _config())
    _save(out, 2, _config(), broken=True)  # intact files, but no heads: does not fit the suite
    ckpt = load_compatible_checkpoint(root, _config(), TINY)
    assert ckpt is not None and ckpt.round == 1
    with pytest.raises(CheckpointError, match="max-groups: 2 in the checkpoint, 3 now"):
        load_compatible_checkpoint(root, _config(**{"max-groups": 3}), TINY)
    clear_checkpoints(out)
    _save(out, 1, _config(), broken=True)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_compatible_checkpoint(root, _config(), TINY)


def test_commands_refuse_before_starting_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    _save(out, 2, _config())
    args = ["--suite", "tiny", "--mode", "mas", "--rounds", "4", "--split-round", "2", "--max-groups", "2"]
    assert cli.main(["simulate", "--out", str(out), *args]) == 2
    assert "already holds the checkpoints of another run" in capsys.readouterr().err
    assert cli.main(["simulate", "--out", str(out), *args[:-2], "--max-groups", "3", "--resume"]) == 2
    assert "max-groups: 2 in the checkpoint, 3 now" in capsys.readouterr().err
    assert cli.main(["simulate", "--out", str(out), *args, "--resume", "--overwrite"]) == 2
    assert "pick one" in capsys.readouterr().err

    run = tmp_path / "run"
    assert cli.main(["certs", "--out", str(run / "tls"), "--host", "127.0.0.1"]) == 0
    _save(run, 1, _config())
    assert cli.main(["coordinator", str(run), "--host", "127.0.0.1", *args]) == 2
    err = capsys.readouterr().err
    assert "already holds the checkpoints of another run" in err and "--overwrite" in err
    assert (run / CHECKPOINT_DIR / "round_00001").is_dir()
