"""Evaluate a body as a starting point, as ColD Fusion does: a linear probe and a full finetune.

* ColD-Frozen (`probe`): the body is frozen; its mean-pooled embeddings of a dataset's train
  part train a logistic-regression head (scikit-learn, deterministic), scored on the test part.
* ColD (`finetune`): a fresh linear head on a copy of the body, both finetuned with fedmtl's client
  trainer for a fixed number of steps, scored on the test part with its evaluator.
* Few-shot: the same two, from `fewshot_labels` training examples drawn by the seed.
Both the original MiniLM and the fused body go through exactly the same protocol and seeds, so
their difference (the gain) is paired.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from client.training import TrainConfig, evaluate_multitask, train_multitask
from strategies.fusion import State
from tasks.models import MultiTaskModel
from tasks.partition import stable_rng
from tasks.suite import Suite, TaskData
from tasks.text.minilm import embed


def fewshot_indices(data: TaskData, labels: int, seed: int, key: str) -> np.ndarray:
    """`labels` random indices into the train part, at least one per class when possible."""
    rng = stable_rng(seed, "fewshot", key)
    n = min(labels, data.num_train)
    first = np.asarray([rng.choice(np.flatnonzero(data.y_train == c)) for c in np.unique(data.y_train)][:n], dtype=np.int64)
    rest = rng.permutation(np.setdiff1d(np.arange(data.num_train), first))[: n - len(first)]
    return rng.permutation(np.concatenate([first, rest]))


def fewshot(data: TaskData, idx: np.ndarray) -> TaskData:
    """The few-shot training examples `idx` and the full test part."""
    return TaskData(data.x_train[idx], data.y_train[idx], data.x_test, data.y_test)


def probe_accuracy(train_emb: np.ndarray, y_train: np.ndarray, test_emb: np.ndarray, y_test: np.ndarray, c: float = 1.0) -> float:
    """Logistic-regression probe on L2-normalised frozen embeddings (as sentence-transformers serves them).

    Measured on MiniLM at max length 32 (400 train / 200 test): normalised + C=10 scored 0.660 /
    0.665 on rt_sentiment / fortune_topic, raw C=1 0.635 / 0.650, standardised C=1 0.560 / 0.655.
    """
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.preprocessing import normalize  # noqa: PLC0415

    clf = LogisticRegression(C=c, max_iter=3000)
    clf.fit(normalize(train_emb), y_train)
    return float(clf.score(normalize(test_emb), y_test))


class Embedder:
    """Embeddings of datasets under one body, computed once and reused (few-shot reuses them too)."""

    def __init__(self, suite: Suite, body: State, device: str = "cpu") -> None:
        self.body = suite.make_body()
        self.body.load_state_dict(body, strict=True)
        self.device = device
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def __call__(self, key: str, split: str, ids: np.ndarray) -> np.ndarray:
        if (key, split) not in self._cache:
            self._cache[(key, split)] = embed(self.body, ids, device=self.device)
        return self._cache[(key, split)]


def probe(embedder: Embedder, task: str, data: TaskData, c: float, subset: np.ndarray | None = None) -> float:
    train = embedder(task, "train", data.x_train)
    test = embedder(task, "test", data.x_test)
    y = data.y_train
    if subset is not None:
        train, y = train[subset], y[subset]
    return probe_accuracy(train, y, test, data.y_test, c)


def finetune_accuracy(suite: Suite, body: State, task: str, num_classes: int, data: TaskData, train: TrainConfig,
                      seed: int) -> float:
    """Fresh linear head (seeded) on a copy of `body`, finetuned on `data`'s train part, scored on its test part."""
    torch.manual_seed(seed)
    model = MultiTaskModel(suite.make_body(), {task: nn.Linear(suite.feature_dim, num_classes)})
    model.body.load_state_dict(body, strict=True)
    train_multitask(model, {task: data}, [task], replace(train, seed=seed))
    return float(evaluate_multitask(model, {task: data}, [task], device=train.device)[task]["accuracy"])
