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

from ..config import EncoderConfig
from ..errors import CheckpointError

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
        """[CLS] (marker) tokens... [SEP], truncated to max_len; returns id lists, how many texts were truncated
        and how many tokens were dropped in all."""
        room = self.room(max_len, marker_id)
        pieces = self.hf(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        long = [len(p) - room for p in pieces if len(p) > room]
        rows = []
        for p in pieces:
            ids = [self.cls_id] + p[:room] + [self.sep_id]
            if marker_id is not None:
                ids = ids[:1] + [marker_id] + ids[1:]
            rows.append(ids)
        return rows, len(long), sum(long)

    @staticmethod
    def room(max_len: int, marker_id) -> int:
        """Text tokens that fit in ``max_len`` after [CLS], the marker and [SEP]."""
        return max_len - 2 - (1 if marker_id is not None else 0)

    def doc_room(self) -> int:
        """How many of a document's own tokens the model keeps (``doc_maxlen`` less the special tokens)."""
        return self.room(self.config.doc_maxlen, self.doc_marker_id)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's token count (no special tokens)."""
        return [len(p) for p in self.hf(list(texts), add_special_tokens=False, verbose=False)["input_ids"]]

    def split(self, text: str, max_tokens: int, overlap: int) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of consecutive windows of at most ``max_tokens`` tokens that overlap by
        about ``overlap`` tokens and together cover ``text`` with no gap (each next start <= the previous end);
        one span when the text fits. Windows start and end between words, preferring the end of a sentence or a
        line in their last quarter."""
        if max_tokens <= 0 or not 0 <= overlap < max_tokens:
            raise ValueError(f"need 0 <= overlap ({overlap}) < max_tokens ({max_tokens})")
        spans = self.hf(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
        if len(spans) <= max_tokens:
            return [(0, len(text))]

        def inside_word(j: int) -> bool:  # token j continues the word of token j - 1 (a word piece)
            return (0 < j < len(spans) and spans[j][0] == spans[j - 1][1] and text[spans[j][0]].isalnum()
                    and text[spans[j - 1][1] - 1].isalnum())

        out, a = [], 0
        while True:
            b = min(a + max_tokens, len(spans))
            if b < len(spans):  # prefer to stop after a sentence end or a line break in the window's last quarter
                for j in range(b - 1, a + (3 * max_tokens) // 4 - 1, -1):
                    piece = text[spans[j][0] : spans[j][1]]
                    gap = text[spans[j][1] : spans[j + 1][0]]
                    if piece in (".", "!", "?", ";", ":") or "\n" in gap:
                        b = j + 1
                        break
                while b > a + 1 and inside_word(b):  # never cut a word in two
                    b -= 1
            start = 0 if a == 0 else spans[a][0]
            end = len(text) if b == len(spans) else spans[b][0]  # up to the next token: passages leave no gap
            out.append((start, end))
            if b == len(spans):
                return out
            nxt = max(b - overlap, a + 1)
            while nxt > a + 1 and inside_word(nxt):
                nxt -= 1
            a = nxt

    def _pad(self, rows, length: int, pad_value: int):
        ids = torch.full((len(rows), length), pad_value, dtype=torch.long)
        att = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            att[i, : len(r)] = 1
        return ids, att

    def queries(self, texts: Sequence[str]) -> Batch:
        cfg = self.config
        rows, _, _ = self._build(texts, cfg.query_maxlen, self.query_marker_id)
        if cfg.mask_augmentation:
            ids, att = self._pad(rows, cfg.query_maxlen, self.mask_id)
            keep = torch.ones_like(ids, dtype=torch.bool)
            if cfg.attend_to_mask_tokens:
                att = torch.ones_like(att)
        else:
            ids, att = self._pad(rows, cfg.query_maxlen, self.pad_id)
            keep = att.bool()
        return Batch(ids, att, keep)

    def documents(self, texts: Sequence[str]) -> tuple[Batch, int, int]:
        """Returns the batch, the number of documents that were truncated to ``doc_maxlen`` and the number of
        tokens dropped."""
        cfg = self.config
        rows, truncated, dropped = self._build(texts, cfg.doc_maxlen, self.doc_marker_id)
        ids, att = self._pad(rows, max(len(r) for r in rows), self.pad_id)
        keep = att.bool()
        if cfg.mask_punctuation and len(self.skip_ids):
            keep &= ~torch.isin(ids, self.skip_ids)
        return Batch(ids, att, keep), truncated, dropped
