import random

import pytest

from colbert_retriever.evaluation import metrics


def test_metrics_match_ranx():
    ranx = pytest.importorskip("ranx")
    rng = random.Random(0)
    qrels, run = {}, {}
    for q in range(30):
        qid = f"q{q}"
        qrels[qid] = {f"d{rng.randrange(200)}": rng.choice([1, 2, 3]) for _ in range(rng.randint(1, 6))}
        ranked = rng.sample([f"d{i}" for i in range(200)], 120)
        run[qid] = ranked
    ours = metrics(run, qrels)
    r_qrels = ranx.Qrels(qrels)
    r_run = ranx.Run({q: {d: float(len(ds) - i) for i, d in enumerate(ds)} for q, ds in run.items()})
    ref = ranx.evaluate(r_qrels, r_run, ["ndcg@10", "mrr@10", "recall@10", "recall@100"])
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
