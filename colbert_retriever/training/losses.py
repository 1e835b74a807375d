"""Losses with a pluggable scorer (default: ColBERT MaxSim)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..kernels.scoring import maxsim_padded


def colbert_scores(model, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
    """Differentiable MaxSim of every query against every passage: (n_queries, n_passages)."""
    Q = model.forward_queries(queries)
    D, mask = model.forward_documents(passages)
    return maxsim_padded(Q, D, mask)


def contrastive_loss(scores: torch.Tensor, n_per_query: int, in_batch: bool = True) -> torch.Tensor:
    """Cross-entropy over [positive, hard negatives] (+ the other queries' passages when ``in_batch``).

    scores: (B, B * n_per_query), passages grouped per query with the positive first."""
    B = scores.shape[0]
    target = torch.arange(B, device=scores.device) * n_per_query
    if in_batch:
        return F.cross_entropy(scores, target)
    own = scores.view(B, B, n_per_query)[torch.arange(B), torch.arange(B)]
    return F.cross_entropy(own, torch.zeros(B, dtype=torch.long, device=scores.device))


def distillation_loss(scores: torch.Tensor, teacher: torch.Tensor, n_per_query: int,
                      temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) over each query's own passages (ColBERTv2's denoised supervision)."""
    B = scores.shape[0]
    own = scores.view(B, B, n_per_query)[torch.arange(B), torch.arange(B)]
    return F.kl_div(F.log_softmax(own, dim=-1), F.log_softmax(teacher / temperature, dim=-1), log_target=True,
                    reduction="batchmean")


ScoreFn = Callable[[object, Sequence[str], Sequence[str]], torch.Tensor]


def batch_loss(model, examples, ce_weight: float, kl_weight: float, in_batch: bool, temperature: float,
               score_fn: Optional[ScoreFn] = None) -> tuple[torch.Tensor, dict]:
    score_fn = score_fn or colbert_scores
    n = len(examples[0].passages)
    scores = score_fn(model, [e.query for e in examples], [p for e in examples for p in e.passages])
    parts = {}
    loss = torch.zeros((), device=scores.device)
    if ce_weight:
        parts["ce"] = contrastive_loss(scores, n, in_batch)
        loss = loss + ce_weight * parts["ce"]
    if kl_weight and all(e.scores is not None for e in examples):
        teacher = torch.tensor([e.scores for e in examples], dtype=torch.float32, device=scores.device)
        parts["kl"] = distillation_loss(scores, teacher, n, temperature)
        loss = loss + kl_weight * parts["kl"]
    return loss, {k: float(v.detach()) for k, v in parts.items()}
