"""Using what a run produced: load-and-predict, `fedmtl predict` / `fedmtl evaluate`, and the
TensorBoard and MLflow logs, all on one real 2-round federation of the tiny suite."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fedmtl
from client.folder import prepare_client_dirs, read_client_dir
from fedmtl.runs import RunFormatError
from tasks.registry import load_suite
from tests.runfolders import tiny_run

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, history, client data folders): the coordinator's clients' own data as folders."""
    out = tmp_path_factory.mktemp("tiny-run")
    history = tiny_run(out, clients=CLIENTS, tracking="tensorboard,mlflow")
    # InProcessGrid gives node i partition i of CLIENTS with the run's data seed: the same data.
    folders = prepare_client_dirs(load_suite("tiny"), CLIENTS, out.parent / f"{out.name}-data", seed=0)
    return out, history, folders


def _fedmtl(*args, cwd=ROOT):
    proc = subprocess.run([sys.executable, "-m", "fedmtl.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=180, check=False)
    return proc


def _metrics_of(history, r):
    return next(e for e in history["rounds"] if e["round"] == r)["metrics"]


@pytest.mark.parametrize("which", ["latest", "best"])
def test_loaded_models_reproduce_the_coordinators_evaluation(run, which):
    out, history, folders = run
    if which == "best" and not _has_best(out):  # a run from before best-round models (format 1)
        with pytest.warns(UserWarning, match="no 'best'"):
            loaded = fedmtl.load_run(out, which=which)
        assert loaded.which == "latest"
    else:
        loaded = fedmtl.load_run(out, which=which)
    assert loaded.suite_name == "tiny"
    if loaded.which == "latest":
        assert loaded.round == history["rounds"][-1]["round"]
    else:  # the round of highest mean accuracy
        means = {e["round"]: np.nanmean([m["accuracy"] for m in e["metrics"].values()]) for e in history["rounds"]}
        assert means[loaded.round] == max(means.values())
    expected = _metrics_of(history, loaded.round)
    got = loaded.evaluate_folders(folders)
    assert set(got) == set(expected)
    for task, m in expected.items():
        assert got[task]["examples"] == m["examples"]
        assert got[task]["accuracy"] == pytest.approx(m["accuracy"], abs=1e-12), task
        assert got[task]["loss"] == pytest.approx(m["loss"], rel=1e-5), task
    # and predict() itself: pooled accuracy of its class ids over the same test splits
    for task, m in expected.items():
        model = loaded[task]
        assert model.task == task and model.round == loaded.round and model.suite_name == "tiny"
        assert task in model.group_tasks and loaded.groups[model.group] == model.group_tasks
        correct = total = 0
        for folder in folders:
            _, data = read_client_dir(folder)
            if task in data:
                correct += int((model.predict(data[task].x_test) == data[task].y_test).sum())
                total += len(data[task].y_test)
        assert total == m["examples"] and correct / total == pytest.approx(m["accuracy"], abs=1e-12)
    assert max(m["accuracy"] for m in expected.values()) > 0.6  # a trained model, not chance


def _has_best(out):
    return "best" in json.loads((out / "models" / "index.json").read_text())


def test_predict_command_matches_the_api_on_raw_images(run, tmp_path):
    out, _, folders = run
    _, data = read_client_dir(folders[0])
    task = "mnist_class"
    x = data[task].x_test[:7]
    raw = np.round(x[:, 0] * 255).astype(np.uint8)  # (N, 28, 28) 0..255, as people hold images
    np.save(tmp_path / "images.npy", raw)
    proc = _fedmtl("predict", out, tmp_path / "images.npy", "--task", task, "--which", "latest", "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    preds = [e for e in events if e["event"] == "prediction"]
    assert [e["index"] for e in preds] == list(range(7)) and all(e["task"] == task for e in preds)
    api = fedmtl.load_run(out, "latest")[task].predict(raw)
    assert [e["class"] for e in preds] == api.tolist()
    assert (api == fedmtl.load_run(out, "latest")[task].predict(x)).mean() >= 6 / 7  # 8-bit rounding only
    assert events[-1]["event"] == "result" and events[-1]["inputs"] == 7
    np.savez(tmp_path / "images.npz", x=x)
    plain = _fedmtl("predict", out, tmp_path / "images.npz", "--which", "latest")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines()[1].split("\t") == ["input", *fedmtl.load_run(out, "latest").tasks]


def test_evaluate_command_json(run):
    out, history, folders = run
    proc = _fedmtl("evaluate", out, "--data", *folders, "--which", "latest", "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
    tasks = {e["task"]: e for e in events if e["event"] == "task"}
    expected = _metrics_of(history, history["rounds"][-1]["round"])
    assert {t: e["accuracy"] for t, e in tasks.items()} == pytest.approx({t: m["accuracy"] for t, m in expected.items()})
    assert [e["event"] for e in events].count("progress") == len(folders)
    assert events[-1]["event"] == "result" and events[-1]["round"] == history["rounds"][-1]["round"]


def test_clear_errors_for_other_suites_and_formats(run, tmp_path):
    out, _, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoints", "mlartifacts", "tensorboard", "mlflow.db"))
    # a data folder of another suite
    other = prepare_client_dirs(load_suite("planted"), 9, tmp_path / "planted")[0]
    with pytest.raises(Exception, match="not in suite 'tiny'|is for suite 'planted'"):
        fedmtl.load_run(copy, "latest").evaluate_folders([other])
    proc = _fedmtl("evaluate", copy, "--data", other, "--which", "latest")
    assert proc.returncode == 2 and "planted" in proc.stderr
    # models of another suite: the index says planted, the files hold tiny's CNN
    index = json.loads((copy / "models" / "index.json").read_text())
    (copy / "models" / "index.json").write_text(json.dumps(index | {"suite": "planted"}))
    with pytest.raises(RunFormatError, match="suite"):
        fedmtl.load_run(copy, "latest")
    # a newer format
    (copy / "models" / "index.json").write_text(json.dumps({"format": 3, "suite": "tiny"}))
    with pytest.raises(RunFormatError, match="format 3.*newer fedmtl"):
        fedmtl.load_run(copy)
    # not a run folder at all
    proc = _fedmtl("predict", tmp_path, tmp_path / "x.npy")
    assert proc.returncode == 2 and "not a fedmtl run folder" in proc.stderr
    # text for an image suite
    (tmp_path / "lines.txt").write_text("hello\n")
    proc = _fedmtl("predict", out, tmp_path / "lines.txt", "--which", "latest")
    assert proc.returncode == 2 and "takes no text inputs" in proc.stderr


def test_tensorboard_log_reads_back(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, history, _ = run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for task in history["tasks"]:
        events = acc.Scalars(f"accuracy/{task}")
        assert [e.step for e in events] == [e["round"] for e in history["rounds"]]
        assert [e.value for e in events] == pytest.approx([r["metrics"][task]["accuracy"] for r in history["rounds"]], abs=1e-6)
    assert [e.value for e in acc.Scalars("groups/count")] == [float(len(r["groups"])) for r in history["rounds"]]
    train = [e.value for e in acc.Scalars("compute/train_seconds")]
    assert train == pytest.approx([r["compute"]["train_seconds"] for r in history["rounds"] if r["compute"]], rel=1e-5)
    assert {"config/text_summary", "groups/text_summary"} <= set(tags["tensors"])
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"suite": "tiny"' in config_text


def test_mlflow_log_reads_back(run):
    from mlflow.tracking import MlflowClient

    from coordinator.tracking import mlflow_uri

    out, history, _ = run
    client = MlflowClient(tracking_uri=mlflow_uri(out))
    exp = client.get_experiment_by_name("fedmtl")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    assert r.data.params["suite"] == "tiny" and r.data.params["rounds"] == "2" and r.data.params["tracking"] == "tensorboard,mlflow"
    assert r.data.tags["fedmtl.tasks"] == ",".join(history["tasks"])
    for task in history["tasks"]:
        metric = client.get_metric_history(r.info.run_id, f"accuracy/{task}")
        logged = dict(sorted((m.step, m.value) for m in metric))
        assert list(logged) == [e["round"] for e in history["rounds"]]
        assert list(logged.values()) == pytest.approx([e["metrics"][task]["accuracy"] for e in history["rounds"]])
    mean = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "accuracy/mean")}
    for e in history["rounds"]:
        accs = [m["accuracy"] for m in e["metrics"].values() if not math.isnan(m["accuracy"])]
        assert mean[e["round"]] == pytest.approx(sum(accs) / len(accs))
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "groups")}
    assert artifacts == {f"groups/round_{e['round']}.json" for e in history["rounds"]}
    local = client.download_artifacts(r.info.run_id, "groups/round_1.json", str(out.parent / "dl"))
    assert json.loads(Path(local).read_text())["groups"] == history["rounds"][1]["groups"]


def test_missing_tracking_library_names_the_extra(monkeypatch):
    import importlib.util

    from coordinator import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(tracking.TrackingError, match=r"fedmtl\[tracking\]"):
        tracking.open_trackers("mlflow", Path("/nonexistent"), {}, [])
    with pytest.raises(tracking.TrackingError, match="unknown backend"):
        tracking.parse_spec("tensorboard,wandb")


def test_format2_index_with_best_models(run):
    """The coordinator's index: latest and best snapshots, best files under models/best/, each
    reproducing the metrics of the round it names."""
    out, history, folders = run
    index = json.loads((out / "models" / "index.json").read_text())
    assert index["format"] == 2 and index["suite"] == "tiny"
    assert all(g["file"].startswith("best/") for g in index["best"]["groups"].values())
    for which in ("best", "latest"):
        loaded = fedmtl.load_run(out, which)
        assert loaded.which == which and loaded.round == index[which]["round"]
        got = loaded.evaluate_folders(folders)
        expected = _metrics_of(history, index[which]["round"])
        assert {t: m["accuracy"] for t, m in got.items()} == pytest.approx({t: m["accuracy"] for t, m in expected.items()})


def test_replay_a_finished_run_into_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from coordinator.tracking import replay
    from tests.runfolders import synthetic_history, write_format2

    history = synthetic_history(3)
    write_format2(history, tmp_path, final=True)
    replay(tmp_path, "tensorboard")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("accuracy/gamma")] == pytest.approx(
        [r["metrics"]["gamma"]["accuracy"] for r in history["rounds"]])
    assert [e.step for e in acc.Scalars("clients/dropped")] == [0, 1, 2, 3]
    assert "affinity/text_summary" in acc.Tags()["tensors"]
