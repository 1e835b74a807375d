"""Training API: ColBERTv2-style contrastive training (in-batch + hard negatives) and KL distillation from teacher
scores, resumable, with checkpoints in colbert-ai layout.

    from colbert_retriever.training import TrainConfig, train
    train("default", "triples.jsonl", "runs/my-model", TrainConfig(steps=1000))
"""

from .data import Example, load_examples
from .losses import colbert_scores, contrastive_loss, distillation_loss
from .trainer import TrainConfig, train

__all__ = ["Example", "load_examples", "colbert_scores", "contrastive_loss", "distillation_loss", "TrainConfig",
           "train"]
