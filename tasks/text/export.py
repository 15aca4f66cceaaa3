"""Export a fused MiniLM body as a model folder `transformers` and `sentence-transformers` load.

    OUT/config.json, model.safetensors      the BERT body (AutoModel.from_pretrained(OUT)); the
                                            checkpoint's original pooler is kept so nothing loads
                                            randomly initialised (mean pooling does not use it)
    OUT/tokenizer*, vocab.txt ...           the packaged tokenizer
    OUT/modules.json, sentence_bert_config.json, 1_Pooling/config.json
                                            sentence-transformers: Transformer + mean pooling.
                                            No Normalize module: `encode()` returns exactly the
                                            features the heads were trained on (cosine similarity
                                            is unaffected; normalise yourself for dot products)
    OUT/heads.safetensors                   one linear head per task: `<task>.weight`, `<task>.bias`
    OUT/heads.json                          {"format": "fedmtl-text-heads/1", "features": ..., "tasks":
                                            {task: {"num_classes", "classes", "weight", "bias"}}, ...}

To classify: `logits = features @ W.T + b` with features = mean-pooled last hidden states over
non-padding tokens (= `SentenceTransformer(OUT).encode(texts)`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tasks.models import split_state
from tasks.text.minilm import bert_config, model_dir, pooler_state, tokenizer

HEADS_FORMAT = "fedmtl-text-heads/1"
ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "1_Pooling/config.json")


def _body_weights(body: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fedmtl body keys (`bert.<param>`) -> BertModel keys (`<param>`)."""
    out = {}
    for key, value in body.items():
        if not key.startswith("bert."):
            raise KeyError(f"body key {key!r} is not a MiniLM body parameter (expected 'bert.*')")
        out[key[len("bert."):]] = value.detach().cpu().contiguous()
    return out


def export_text_model(
    state: dict[str, torch.Tensor],
    out: str | Path,
    classes: dict[str, list[str]] | None = None,
    metadata: dict | None = None,
    max_seq_length: int = 256,
) -> Path:
    """Write `state` (a fedmtl model state: `body.*` and `heads.<task>.*`) as a loadable model folder."""
    from safetensors.torch import save_file  # noqa: PLC0415
    from transformers import BertModel  # noqa: PLC0415

    out = Path(out)
    body, heads = split_state(state)
    model = BertModel(bert_config(), add_pooling_layer=True)
    weights = {**_body_weights(body), **{k: v.clone() for k, v in pooler_state().items()}}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k != "embeddings.position_ids"]
    if missing or unexpected:
        raise ValueError(f"the body does not fit all-MiniLM-L6-v2: missing {missing[:3]}, unexpected {unexpected[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer().save_pretrained(str(out))
    src = model_dir()
    for name in ST_FILES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, out / name)
    modules = [m for m in json.loads((out / "modules.json").read_text()) if not m["type"].endswith("Normalize")]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    st_config = json.loads((out / "sentence_bert_config.json").read_text())
    st_config["max_seq_length"] = int(max_seq_length)
    (out / "sentence_bert_config.json").write_text(json.dumps(st_config, indent=2) + "\n")

    tensors, tasks = {}, {}
    for task, params in heads.items():
        w, b = params["weight"].detach().cpu().contiguous(), params["bias"].detach().cpu().contiguous()
        tensors[f"{task}.weight"], tensors[f"{task}.bias"] = w, b
        tasks[task] = {"num_classes": int(w.shape[0]), "classes": list((classes or {}).get(task, [])),
                       "weight": f"{task}.weight", "bias": f"{task}.bias"}
    if tensors:
        save_file(tensors, str(out / "heads.safetensors"), metadata={"format": HEADS_FORMAT})
    (out / "heads.json").write_text(json.dumps({
        "format": HEADS_FORMAT,
        "features": "mean of the last hidden states over non-padding tokens (not normalised) = SentenceTransformer.encode",
        "file": "heads.safetensors" if tensors else None,
        "tasks": tasks,
        **({"metadata": metadata} if metadata else {}),
    }, indent=2) + "\n")
    return out


def load_heads(folder: str | Path) -> dict[str, torch.nn.Linear]:
    """The exported heads as torch Linear layers, by task."""
    from safetensors.torch import load_file  # noqa: PLC0415

    folder = Path(folder)
    meta = json.loads((folder / "heads.json").read_text())
    if meta.get("format") != HEADS_FORMAT:
        raise ValueError(f"{folder / 'heads.json'}: format {meta.get('format')!r}, expected {HEADS_FORMAT!r}")
    if not meta["tasks"]:
        return {}
    tensors = load_file(str(folder / meta["file"]))
    heads = {}
    for task, info in meta["tasks"].items():
        w, b = tensors[info["weight"]], tensors[info["bias"]]
        layer = torch.nn.Linear(w.shape[1], w.shape[0])
        layer.load_state_dict({"weight": w, "bias": b})
        heads[task] = layer
    return heads
