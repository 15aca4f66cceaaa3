"""Checkpoints: bitwise round trip, fallback past damaged ones, kill mid-write, pruning, RNG restore."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.checkpoint import (
    LATEST,
    MANIFEST,
    CheckpointError,
    capture_rng_state,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def tensors(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        0: {"body.w": torch.randn(8, 4, generator=g), "heads.a.b": torch.randn(3, generator=g).to(torch.bfloat16)},
        "g1": {"body.w": torch.randn(8, 4, generator=g).to(torch.float64), "body.n": torch.tensor(seed)},
    }


def state(r: int) -> dict:
    return {"round": r, "groups": [["a", "b"], ["c"]], "loss": float("nan"), "history": [{"r": i} for i in range(r)]}


def save(root: Path, r: int, keep: int = 5) -> Path:
    return save_checkpoint(root, r, state(r), tensors(r), keep=keep)


def test_round_trip_is_bitwise(tmp_path: Path) -> None:
    path = save(tmp_path, 3)
    assert path == tmp_path / "round_00003"
    assert (tmp_path / LATEST).read_text().strip() == "round_00003"
    ckpt = load_latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.round == 3 and ckpt.path == path
    assert json.dumps(ckpt.state) == json.dumps(state(3))  # NaN survives too
    want = tensors(3)
    assert list(ckpt.tensors) == [0, "g1"]  # group id types come back as given
    for gid, group in want.items():
        for key, value in group.items():
            got = ckpt.tensors[gid][key]
            assert got.dtype == value.dtype and got.shape == value.shape
            assert got.reshape(-1).view(torch.uint8).tolist() == value.reshape(-1).view(torch.uint8).tolist()
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"state.json", "group_0.safetensors", "group_g1.safetensors"}


def test_no_checkpoints_gives_none(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path / "absent") is None
    assert load_latest_checkpoint(tmp_path) is None


def test_truncated_safetensors_falls_back_and_names_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    bad = newest / "group_g1.safetensors"
    bad.write_bytes(bad.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING, logger="coordinator.checkpoint"):
        ckpt = load_latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.round == 1
    assert any("group_g1.safetensors" in r.getMessage() and "round_00002" in r.getMessage() for r in caplog.records)


def test_corrupt_state_json_is_detected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    text = (newest / "state.json").read_text()
    (newest / "state.json").write_text(text.replace('"round": 2', '"round": 9'))  # same size, different hash
    with caplog.at_level(logging.WARNING, logger="coordinator.checkpoint"):
        assert load_latest_checkpoint(tmp_path).round == 1
    assert any("state.json" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)


def test_unparsable_state_json_with_matching_manifest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Even a manifest that vouches for the bytes does not make broken JSON loadable."""
    import hashlib

    newest = save(tmp_path, 1)
    data = b"{not json"
    (newest / "state.json").write_bytes(data)
    manifest = json.loads((newest / MANIFEST).read_text())
    manifest["files"]["state.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (newest / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="state.json"):
        load_latest_checkpoint(tmp_path)


def test_missing_file_and_bad_manifest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save(tmp_path, 1)
    save(tmp_path, 2)
    third = save(tmp_path, 3)
    (third / "group_0.safetensors").unlink()
    (tmp_path / "round_00002" / MANIFEST).write_text("{")
    with caplog.at_level(logging.WARNING, logger="coordinator.checkpoint"):
        assert load_latest_checkpoint(tmp_path).round == 1
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "group_0.safetensors: missing" in messages and "MANIFEST.json" in messages


def test_partial_checkpoint_without_manifest_is_ignored(tmp_path: Path) -> None:
    save(tmp_path, 1)
    # A kill mid-write leaves a hidden temp dir: never a checkpoint.
    partial = tmp_path / ".tmp-round_00002-xyz"
    partial.mkdir()
    (partial / "state.json").write_text("{}")
    # A round dir with no manifest (copied by hand, say) is skipped with a warning.
    stray = tmp_path / "round_00003"
    stray.mkdir()
    (stray / "state.json").write_text("{}")
    assert load_latest_checkpoint(tmp_path).round == 1
    # The next save clears the leftovers.
    save(tmp_path, 2)
    assert not partial.exists()
    assert load_latest_checkpoint(tmp_path).round == 2


def test_only_temp_dir_means_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / ".tmp-round_00001-abc").mkdir()
    assert load_latest_checkpoint(tmp_path) is None


def test_all_invalid_raises(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    (path / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="MANIFEST.json"):
        load_latest_checkpoint(tmp_path)


def test_keep_prunes_old_checkpoints(tmp_path: Path) -> None:
    for r in range(1, 6):
        save(tmp_path, r, keep=2)
    assert sorted(p.name for p in tmp_path.glob("round_*")) == ["round_00004", "round_00005"]
    save(tmp_path, 6, keep=1)
    assert [p.name for p in tmp_path.glob("round_*")] == ["round_00006"]


def test_pruning_never_drops_the_last_good_for_a_damaged_newer_one(tmp_path: Path) -> None:
    save(tmp_path, 1, keep=2)
    second = save(tmp_path, 2, keep=2)
    (second / "state.json").write_text("garbage")
    third = save(tmp_path, 3, keep=2)
    assert sorted(p.name for p in tmp_path.glob("round_*")) == ["round_00001", "round_00003"]
    # if round 3 is now damaged too, round 1 is still there to resume from
    (third / "group_0.safetensors").write_bytes(b"")
    assert load_latest_checkpoint(tmp_path).round == 1


def test_redoing_a_round_after_resume_replaces_it(tmp_path: Path) -> None:
    save(tmp_path, 1)
    bad = save(tmp_path, 2)
    (bad / "state.json").write_text("garbage")
    bad3 = save(tmp_path, 3)
    (bad3 / MANIFEST).unlink()
    assert load_latest_checkpoint(tmp_path).round == 1  # resume from 1, redo round 2
    save_checkpoint(tmp_path, 2, {"redone": True}, tensors(2))
    assert not (tmp_path / "round_00003").exists()  # abandoned timeline removed
    ckpt = load_latest_checkpoint(tmp_path)
    assert ckpt.round == 2 and ckpt.state == {"redone": True}
    assert not list(tmp_path.glob(".*-round_*"))


def test_save_rejects_bad_input_without_leaving_files(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, {"x": object()}, {})
    with pytest.raises(ValueError, match="file name"):
        save_checkpoint(tmp_path, 1, {}, {"../evil": {}})
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, 1, {}, {}, keep=0)
    assert list(tmp_path.iterdir()) == []


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    save_checkpoint(tmp_path, 0, {}, {"g": {"a": base, "tied": base, "t": base.t()}})
    got = load_latest_checkpoint(tmp_path).tensors["g"]
    assert torch.equal(got["tied"], base) and torch.equal(got["t"], base.t())


def _draws() -> tuple:
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4).tolist()


def test_rng_capture_restore_reproduces_draws() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in python's state
    np.random.randn()  # and in numpy's (Box-Muller pair)
    saved = json.loads(json.dumps(capture_rng_state()))  # must survive JSON
    first = _draws()
    _draws()
    restore_rng_state(saved)
    assert _draws() == first
