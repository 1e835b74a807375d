import json

import pytest

from colbert_retriever.cli import main


@pytest.fixture
def beir(tmp_path):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    docs = [("a", "Paris", "Paris is the capital of France."), ("b", "Berlin", "Berlin is the capital of Germany."),
            ("c", "", "Pianos and guitars are musical instruments."), ("d", "JSON", "json.loads parses a JSON string.")]
    with open(d / "corpus.jsonl", "w") as f:
        for i, t, x in docs:
            f.write(json.dumps({"_id": i, "title": t, "text": x}) + "\n")
    with open(d / "queries.jsonl", "w") as f:
        f.write(json.dumps({"_id": "q1", "text": "capital of france"}) + "\n")
        f.write(json.dumps({"_id": "q2", "text": "parse json"}) + "\n")
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq2\td\t1\n")
    return d


def test_index_search_eval(beir, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert main(["index", str(beir), str(idx), "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["documents"] == 4
    meta = json.loads((idx / "metadata.json").read_text())
    assert meta["provenance"]["title_join"] == "title. text"
    assert main(["search", str(idx), "capital of france", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and hits[0]["id"] == "a" and hits[0]["rank"] == 1
    assert hits[0]["text"] == "Paris. Paris is the capital of France."
    assert main(["eval", str(beir), str(idx), "--json"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("ndcg@10", "mrr@10", "recall@10", "recall@100", "latency_ms_p50", "latency_ms_p95", "num_queries"):
        assert key in m
    assert m["num_queries"] == 2 and m["ndcg@10"] == pytest.approx(1.0)
    assert main(["eval", str(beir), str(idx), "--json", "--exhaustive"]) == 0


def test_bad_input_exit_2(tmp_path, capsys, beir):
    assert main(["search", str(tmp_path / "missing"), "q"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "1", "text": "ok"}\n{broken\n')
    assert main(["index", str(bad), str(tmp_path / "i2"), "--quiet"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    idx = tmp_path / "idx"
    assert main(["index", str(beir), str(idx), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "   "]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["search", str(idx), "q", "-k", "0"]) == 2


def test_doc_maxlen_is_restored_on_open(beir, tmp_path, capsys):
    idx = tmp_path / "short"
    assert main(["index", str(beir), str(idx), "--quiet", "--doc-maxlen", "8", "--dtype", "float32"]) == 0
    meta = json.loads((idx / "metadata.json").read_text())
    assert meta["model"]["encoder_config"]["doc_maxlen"] == 8
    capsys.readouterr()
    assert main(["search", str(idx), "capital of france", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "a"
