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


def test_query_id_rule_is_off_unless_asked():
    # cisi/cranfield-style collisions: query "3" and document "3" are unrelated, and "3" is relevant
    qrels = {"3": {"3": 1, "9": 1}, "4": {"7": 1}}
    run = {"3": ["3", "9", "1"], "4": ["4", "7"]}
    kept = metrics(run, qrels)
    dropped = metrics(run, qrels, drop_query_id=True)
    assert kept["recall@10"] == 1.0
    assert dropped["recall@10"] == pytest.approx(0.75)  # the relevant "3" of query "3" can never be found
    assert kept["success@5"] == 1.0 and kept["mrr@10"] == pytest.approx(0.75)
    assert dropped["mrr@10"] == pytest.approx(1.0)  # query "4": its own id "4" was ranked first, then "7"


def test_evaluate_turns_the_rule_on_for_arguana_only(tmp_path, tiny_model):
    from colbert_retriever import Index
    from colbert_retriever.evaluation import evaluate

    for name, expected in (("arguana", True), ("cisi", False)):
        d = tmp_path / name
        (d / "qrels").mkdir(parents=True)
        (d / "corpus.jsonl").write_text('{"_id": "q1", "text": "the query itself as a document"}\n'
                                        '{"_id": "d2", "text": "a counter argument document"}\n')
        (d / "queries.jsonl").write_text('{"_id": "q1", "text": "the query itself as a document"}\n')
        (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n")
        idx = Index.build(tmp_path / f"{name}.idx", ["the query itself as a document", "a counter argument document"],
                          ids=["q1", "d2"], model=tiny_model, show_progress=False)
        m = evaluate(idx, d, k=10)
        assert m["drop_query_id"] is expected
        assert m["mrr@10"] == pytest.approx(1.0 if expected else 0.5)  # d2 ranks 2nd behind q1 itself
        assert evaluate(idx, d, k=10, drop_query_id=False)["mrr@10"] == pytest.approx(0.5)
