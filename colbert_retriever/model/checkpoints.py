"""Read and write ColBERT checkpoints.

Layouts read:

* **colbert-ai** (``colbert-ir/colbertv2.0``, answerai-colbert-small): a Hugging Face folder with ``config.json``,
  ``model.safetensors`` or ``pytorch_model.bin`` holding the backbone under its base-model prefix (``bert.``) and the
  projection as ``linear.weight``, and ``artifact.metadata`` (JSON) with query/doc lengths, dim, markers.
* **PyLate / sentence-transformers**: ``modules.json`` naming a Transformer module (backbone folder) and a Dense
  module (``1_Dense/``), plus ``config_sentence_transformers.json`` with prefixes, lengths and skiplist.

Layout written: colbert-ai, with safetensors weights. Weights are read with safetensors or
``torch.load(weights_only=True)``; nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..config import EncoderConfig
from ..errors import CheckpointError

logger = logging.getLogger(__name__)

ARTIFACT = "artifact.metadata"
OUR_KEY = "colbert_retriever"


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, ready to build a ``ColBERT``."""

    layout: str  # "colbert-ai" or "pylate"
    backbone_dir: Path  # folder with config.json (+ tokenizer files)
    backbone_state: Optional[dict]  # None: load backbone weights from backbone_dir with from_pretrained
    linear_weight: torch.Tensor  # (dim, hidden)
    linear_bias: Optional[torch.Tensor]
    config: EncoderConfig
    tokenizer_dir: Path


def load_weights(folder: Path, stem: str = "model") -> dict[str, torch.Tensor]:
    """``{stem}.safetensors`` or ``pytorch_model.bin`` (weights_only) from ``folder``."""
    st = folder / f"{stem}.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    for name in ("pytorch_model.bin", f"{stem}.bin", f"{stem}.pt"):
        p = folder / name
        if p.exists():
            try:
                return torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:  # weights_only refuses pickled objects
                raise CheckpointError(f"cannot load {p} safely (weights_only=True): {e}") from None
    raise CheckpointError(
        f"no weights in {folder}: expected {stem}.safetensors or pytorch_model.bin; found {sorted(os.listdir(folder))}"
    )


def resolve_path(name_or_path: str) -> Path:
    """A local folder, or a hub id fetched through huggingface_hub (cache first, so offline works when cached)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointError(f"{name_or_path} is a file; a checkpoint is a folder")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise FileNotFoundError(f"checkpoint folder {name_or_path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path))
    except Exception as e:
        raise CheckpointError(
            f"{name_or_path!r} is not a local folder and could not be fetched from the hub ({type(e).__name__}: {e})"
        ) from None


def detect_layout(folder: Path) -> str:
    if (folder / "modules.json").exists():
        return "pylate"
    if (folder / ARTIFACT).exists() or (folder / "config.json").exists() and _has_linear(folder):
        return "colbert-ai"
    found = sorted(os.listdir(folder))
    raise CheckpointError(
        f"unknown checkpoint layout in {folder}: expected artifact.metadata + config.json (colbert-ai) or "
        f"modules.json (PyLate / sentence-transformers); found {found}"
    )


def _has_linear(folder: Path) -> bool:
    try:
        return "linear.weight" in load_weights(folder)
    except CheckpointError:
        return False


def read_checkpoint(name_or_path: str) -> Checkpoint:
    folder = resolve_path(name_or_path)
    layout = detect_layout(folder)
    return _read_colbert_ai(folder) if layout == "colbert-ai" else _read_pylate(folder)


def _read_colbert_ai(folder: Path) -> Checkpoint:
    if not (folder / "config.json").exists():
        raise CheckpointError(f"colbert-ai checkpoint {folder} has no config.json")
    meta = {}
    if (folder / ARTIFACT).exists():
        try:
            meta = json.loads((folder / ARTIFACT).read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{folder / ARTIFACT} is not valid JSON: {e}") from None
    state = load_weights(folder)
    if "linear.weight" not in state:
        raise CheckpointError(f"{folder}: weights have no 'linear.weight' (the ColBERT projection)")
    linear = state.pop("linear.weight")
    ours = meta.get(OUR_KEY, {})
    cfg = EncoderConfig(
        dim=int(meta.get("dim", linear.shape[0])),
        query_maxlen=int(meta.get("query_maxlen", 32)),
        doc_maxlen=int(meta.get("doc_maxlen", 180)),
        query_marker=ours.get("query_marker", meta.get("query_token_id", "[unused0]")),
        doc_marker=ours.get("doc_marker", meta.get("doc_token_id", "[unused1]")),
        mask_augmentation=bool(ours.get("mask_augmentation", True)),
        attend_to_mask_tokens=bool(meta.get("attend_to_mask_tokens", False)),
        mask_punctuation=bool(meta.get("mask_punctuation", True)),
        skiplist=tuple(ours.get("skiplist", string.punctuation)),
    )
    if linear.shape[0] != cfg.dim:
        raise CheckpointError(f"{folder}: linear.weight has {linear.shape[0]} rows but artifact says dim={cfg.dim}")
    return Checkpoint("colbert-ai", folder, state, linear, None, cfg, folder)


def _read_pylate(folder: Path) -> Checkpoint:
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / 'modules.json'} is not valid JSON: {e}") from None
    tr = [m for m in modules if m.get("type", "").endswith("Transformer")]
    dense = [m for m in modules if m.get("type", "").endswith("Dense")]
    if not tr or not dense:
        raise CheckpointError(
            f"{folder}: modules.json must list a Transformer and a Dense module; found "
            f"{[m.get('type') for m in modules]}"
        )
    backbone_dir = folder / tr[0].get("path", "")
    dense_dir = folder / dense[0]["path"]
    dense_cfg = json.loads((dense_dir / "config.json").read_text()) if (dense_dir / "config.json").exists() else {}
    act = dense_cfg.get("activation_function", "torch.nn.modules.linear.Identity")
    if not act.endswith("Identity"):
        raise CheckpointError(f"{dense_dir}: Dense activation {act} is not supported (only Identity)")
    dstate = load_weights(dense_dir)
    if "linear.weight" not in dstate:
        raise CheckpointError(f"{dense_dir}: weights have no 'linear.weight'; found {sorted(dstate)}")
    st_cfg_path = folder / "config_sentence_transformers.json"
    st = json.loads(st_cfg_path.read_text()) if st_cfg_path.exists() else {}
    linear = dstate["linear.weight"]
    cfg = EncoderConfig(
        dim=int(linear.shape[0]),
        query_maxlen=int(st.get("query_length", 32)),
        doc_maxlen=int(st.get("document_length", 180)),
        query_marker=st.get("query_prefix", "[Q] "),
        doc_marker=st.get("document_prefix", "[D] "),
        mask_augmentation=bool(st.get("do_query_expansion", True)),
        attend_to_mask_tokens=bool(st.get("attend_to_expansion_tokens", False)),
        mask_punctuation=True,
        skiplist=tuple(st.get("skiplist_words", list(string.punctuation))),
    )
    return Checkpoint("pylate", backbone_dir, None, linear, dstate.get("linear.bias"), cfg, backbone_dir)


def warn_missing_markers(folder: Path, config: EncoderConfig) -> bool:
    """Warn (once, naming ``folder``) when a checkpoint saved there in colbert-ai layout has no query or document
    marker; returns whether it warned."""
    missing = [name for name, m in (("query", config.query_marker), ("document", config.doc_marker)) if m is None]
    if missing:
        logger.warning("%s: saved in colbert-ai layout without a %s marker. colbert-retriever loads it back as it "
                       "is, but colbert-ai always inserts its markers ([unused0] / [unused1]) and would encode "
                       "differently; set query_marker / doc_marker in the encoder config to share the checkpoint "
                       "with colbert-ai", folder, " or ".join(missing))
    return bool(missing)


def write_colbert_ai(folder: Path, backbone, tokenizer, linear: torch.nn.Linear, config: EncoderConfig,
                     extra: Optional[dict] = None, warn: bool = True) -> None:
    """Save in colbert-ai layout: config.json, model.safetensors (``{prefix}.*`` + ``linear.weight``),
    artifact.metadata, tokenizer files. colbert-ai has no "no marker" setting: a config without markers is saved
    as it is (this library loads it back unchanged) with a warning that colbert-ai would insert its own
    (``warn_missing_markers``; ``warn=False`` leaves it to the caller, e.g. a trainer saving into a temporary
    folder that it renames)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if warn:
        warn_missing_markers(folder, config)
    folder.mkdir(parents=True, exist_ok=True)
    backbone.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prefix = getattr(backbone, "base_model_prefix", "bert") or "bert"
    state = {f"{prefix}.{k}": v.detach().to("cpu", torch.float32).contiguous()
             for k, v in backbone.state_dict().items()}
    state["linear.weight"] = linear.weight.detach().to("cpu", torch.float32).contiguous()
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / "model.safetensors")
    meta = {
        "query_maxlen": config.query_maxlen,
        "doc_maxlen": config.doc_maxlen,
        "dim": config.dim,
        "similarity": config.similarity,
        "mask_punctuation": config.mask_punctuation,
        "attend_to_mask_tokens": config.attend_to_mask_tokens,
        "query_token_id": config.query_marker,
        "doc_token_id": config.doc_marker,
        OUR_KEY: {
            "query_marker": config.query_marker,
            "doc_marker": config.doc_marker,
            "mask_augmentation": config.mask_augmentation,
            "skiplist": list(config.skiplist),
            **(extra or {}),
        },
    }
    (folder / ARTIFACT).write_text(json.dumps(meta, indent=2))
