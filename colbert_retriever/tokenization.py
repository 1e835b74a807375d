"""Query and document tokenisation in the ColBERT format.

Both layouts this library reads (colbert-ai and PyLate) put a marker token right after [CLS]; queries are padded to
``query_maxlen`` (with [MASK] under query augmentation), documents are truncated to ``doc_maxlen`` and padded to the
longest in the batch. Punctuation tokens are dropped from documents through a keep-mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from .config import EncoderConfig
from .errors import CheckpointError

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Token ids ready for the backbone. ``keep``: which output rows are embeddings (others are dropped/zeroed)."""

    input_ids: torch.Tensor  # (n, L) int64
    attention_mask: torch.Tensor  # (n, L) int64
    keep: torch.Tensor  # (n, L) bool


class ColBERTTokenizer:
    """Wraps a Hugging Face tokenizer with the ColBERT query/document formatting of ``config``."""

    def __init__(self, hf_tokenizer, config: EncoderConfig):
        self.hf = hf_tokenizer
        self.config = config
        self.pad_id = hf_tokenizer.pad_token_id
        self.mask_id = hf_tokenizer.mask_token_id
        if self.pad_id is None:
            raise CheckpointError("the tokenizer has no pad token; ColBERT needs one")
        if config.mask_augmentation and self.mask_id is None:
            raise CheckpointError("query augmentation is on but the tokenizer has no [MASK] token")
        self.cls_id = hf_tokenizer.cls_token_id if hf_tokenizer.cls_token_id is not None else hf_tokenizer.bos_token_id
        self.sep_id = hf_tokenizer.sep_token_id if hf_tokenizer.sep_token_id is not None else hf_tokenizer.eos_token_id
        if self.cls_id is None or self.sep_id is None:
            raise CheckpointError("the tokenizer has no [CLS]/[SEP] (or BOS/EOS) tokens; ColBERT needs them")
        self.query_marker_id = self._marker_id(config.query_marker)
        self.doc_marker_id = self._marker_id(config.doc_marker)
        self.skip_ids = torch.tensor(sorted(self._skip_ids(config.skiplist)), dtype=torch.long)

    def _marker_id(self, marker):
        if marker is None:
            return None
        tid = self.hf.convert_tokens_to_ids(marker)
        if tid is None or tid == self.hf.unk_token_id:
            raise CheckpointError(f"marker token {marker!r} is not in the tokenizer's vocabulary")
        return int(tid)

    def _skip_ids(self, words) -> set[int]:
        ids = set()
        for w in words:
            tid = self.hf.convert_tokens_to_ids(w)
            if tid is None or tid == self.hf.unk_token_id:
                pieces = self.hf.encode(w, add_special_tokens=False)
                if not pieces:
                    continue
                tid = pieces[0]
            ids.add(int(tid))
        return ids

    def _build(self, texts: Sequence[str], max_len: int, marker_id):
        """[CLS] (marker) tokens... [SEP], truncated to max_len; returns id lists and how many were truncated."""
        room = max_len - 2 - (1 if marker_id is not None else 0)
        pieces = self.hf(list(texts), add_special_tokens=False, truncation=True, max_length=room + 1)["input_ids"]
        truncated = sum(1 for p in pieces if len(p) > room)
        rows = []
        for p in pieces:
            ids = [self.cls_id] + p[:room] + [self.sep_id]
            if marker_id is not None:
                ids = ids[:1] + [marker_id] + ids[1:]
            rows.append(ids)
        return rows, truncated

    def _pad(self, rows, length: int, pad_value: int):
        ids = torch.full((len(rows), length), pad_value, dtype=torch.long)
        att = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            att[i, : len(r)] = 1
        return ids, att

    def queries(self, texts: Sequence[str]) -> Batch:
        cfg = self.config
        rows, _ = self._build(texts, cfg.query_maxlen, self.query_marker_id)
        if cfg.mask_augmentation:
            ids, att = self._pad(rows, cfg.query_maxlen, self.mask_id)
            keep = torch.ones_like(ids, dtype=torch.bool)
            if cfg.attend_to_mask_tokens:
                att = torch.ones_like(att)
        else:
            ids, att = self._pad(rows, cfg.query_maxlen, self.pad_id)
            keep = att.bool()
        return Batch(ids, att, keep)

    def documents(self, texts: Sequence[str]) -> tuple[Batch, int]:
        """Returns the batch and the number of documents that were truncated to ``doc_maxlen``."""
        cfg = self.config
        rows, truncated = self._build(texts, cfg.doc_maxlen, self.doc_marker_id)
        ids, att = self._pad(rows, max(len(r) for r in rows), self.pad_id)
        keep = att.bool()
        if cfg.mask_punctuation and len(self.skip_ids):
            keep &= ~torch.isin(ids, self.skip_ids)
        return Batch(ids, att, keep), truncated
