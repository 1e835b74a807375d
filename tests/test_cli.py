import json
from pathlib import Path

import pytest

from colbert_retriever.cli.main import main


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


def test_version_and_help(capsys):
    from colbert_retriever import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"colbert-retriever {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("index", "search", "eval", "add", "delete", "info", "compact", "lexical"):
        assert f"  {cmd}" in out
    import argparse

    from colbert_retriever.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"index", "search", "eval", "add", "delete", "info", "train", "bench", "compact",
                                "lexical", "serve"}
    for cmd, parser in sub.choices.items():  # every subcommand, argument and flag has a help text
        assert any(c.dest == cmd and c.help for c in sub._choices_actions), cmd
        for action in parser._actions:
            assert action.help, (cmd, action.dest)


def test_text_folder_add_delete_info_exhaustive(tmp_path, capsys):
    docs = tmp_path / "notes"
    (docs / "sub").mkdir(parents=True)
    (docs / "paris.txt").write_text("Paris is the capital of France.")
    (docs / "sub" / "piano.md").write_text("# Piano\n\nA piano has 88 keys.")
    (docs / ".hidden.txt").write_text("secret")
    (docs / "image.png").write_bytes(b"\x89PNG")
    long = " ".join(f"Sentence {i} talks about the river near town {i}." for i in range(300)) + " Ends with marzipan."
    (docs / "long.txt").write_text(long)
    idx = tmp_path / "idx"
    assert main(["index", str(docs), str(idx), "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["documents"] == 3 and out["rows"] > 3  # the long file is passages (chunk is the CLI default)
    assert main(["search", str(idx), "how many keys does a piano have", "--json", "-k", "1"]) == 0
    hit = json.loads(capsys.readouterr().out)[0]
    assert hit["id"] == "sub/piano.md" and hit["metadata"] == {"path": "sub/piano.md"}
    assert main(["search", str(idx), "marzipan", "--json", "--exhaustive", "-k", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["id"] == "long.txt" and "marzipan" in hits[0]["text"] and hits[0]["passage"] > 0
    assert len({h["id"] for h in hits}) == 3
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "paris.txt", "text": "Paris hosts the Louvre."}) + "\n")
    assert main(["add", str(idx), str(more), "--quiet", "--on-conflict", "error"]) == 2
    err = capsys.readouterr().err
    assert "already in the index" in err and "--on-conflict replace" in err  # the remedy names the CLI flag
    for _ in range(2):  # the default replaces (upsert): a re-run changes nothing
        assert main(["add", str(idx), str(more), "--quiet"]) == 0
        assert json.loads(capsys.readouterr().out)["documents"] == 3
    assert main(["delete", str(idx), "--filter", '{"path": "sub/piano.md"}']) == 0
    assert json.loads(capsys.readouterr().out) == {"index": str(idx), "deleted": 1, "documents": 2}
    assert main(["delete", str(idx)]) == 2
    assert main(["delete", str(idx), "--filter", "{bad"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["info", str(idx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == 2 and info["model"]["name"] and info["codec"]["nbits"] == 2
    assert info["size_bytes"] > 0 and info["provenance"]["layout"] == "text"
    assert info["precision"]["documents"] in ("float32", "bfloat16")  # the policy it was built with
    assert main(["info", str(idx)]) == 0
    out = capsys.readouterr().out
    assert "documents    2 live" in out and f"precision    documents {info['precision']['documents']}" in out


def test_user_errors_are_one_line_exit_2(tmp_path, capsys, beir):
    idx = tmp_path / "idx"
    assert main(["index", str(beir), str(idx), "--quiet"]) == 0
    capsys.readouterr()
    cases = [
        (["eval", str(beir / "corpus.jsonl"), str(idx)], "needs a judged folder"),
        (["index", str(beir), str(idx), "--quiet", "--if-exists", "error"], "--if-exists overwrite"),
        (["index", str(tmp_path / "nothing"), str(tmp_path / "x")], "does not exist"),
        (["index", str(tmp_path / "idx" / "metadata.json"), str(tmp_path / "y")], "expected a .jsonl"),
        (["search", str(idx), "q", "--filter", '{"a": {"$like": 1}}'], "unknown filter operator"),
        (["info", str(tmp_path / "missing")], "missing"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)


FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("layout,extra", [("colbert_tsv", []), ("lotte", []), ("lotte", ["--split", "forum"])])
def test_colbert_tsv_and_lotte_layouts(tmp_path, capsys, layout, extra):
    data = FIXTURES / layout
    idx = tmp_path / "idx"
    assert main(["index", str(data), str(idx), "--quiet", "--lexical"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["documents"] == len((data / "collection.tsv").read_text().splitlines())
    meta = json.loads((idx / "metadata.json").read_text())
    assert meta["provenance"]["layout"] == ("colbert" if layout == "colbert_tsv" else "lotte")
    for mode in ("colbert", "hybrid"):
        assert main(["eval", str(data), str(idx), "--json", "--mode", mode, *extra]) == 0
        m = json.loads(capsys.readouterr().out)
        assert m["layout"] == ("colbert" if layout == "colbert_tsv" else "lotte")
        assert m["num_queries"] == (1 if extra else 3) and m["success@5"] == pytest.approx(1.0)
        assert m["drop_query_id"] is False
    if layout == "colbert_tsv":  # the title column is joined and kept
        assert main(["search", str(idx), "capital of France", "--json", "-k", "1"]) == 0
        hit = json.loads(capsys.readouterr().out)[0]
        assert hit["id"] == "0" and hit["text"].startswith("Paris. ") and hit["metadata"] == {"title": "Paris"}
    # a single collection.tsv file indexes too
    assert main(["index", str(data / "collection.tsv"), str(tmp_path / "file"), "--quiet"]) == 0


def test_format_errors(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "collection.tsv").write_text("only-one-field\n")
    assert main(["index", str(bad), str(tmp_path / "i"), "--quiet"]) == 2
    assert "expected pid<TAB>passage" in capsys.readouterr().err
    (bad / "collection.tsv").write_text("0\tsome text here\n")
    assert main(["index", str(bad), str(tmp_path / "i"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(bad), str(tmp_path / "i")]) == 2
    assert "no queries at" in capsys.readouterr().err
    (bad / "queries.tsv").write_text("1\tsome text\n")
    (bad / "qrels.tsv").write_text("1 0 0 x\n")
    assert main(["eval", str(bad), str(tmp_path / "i")]) == 2
    assert "is not a number" in capsys.readouterr().err


def test_internal_errors_keep_their_traceback(monkeypatch, beir, tmp_path):
    """A bug is not a user mistake: it propagates (traceback, exit status 1), never a one-line exit 2. (The
    failure is planted in the standard library's ``open`` for the corpus file.)"""
    import builtins

    real_open = builtins.open

    def broken(file, *a, **k):
        if str(file).endswith("corpus.jsonl"):
            raise RuntimeError("internal bug")
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", broken)
    with pytest.raises(RuntimeError, match="internal bug"):
        main(["index", str(beir), str(tmp_path / "i"), "--quiet"])


def test_rerunning_index_and_add_is_idempotent(tmp_path, capsys, beir):
    """The CLI's index and add over the same data again leave the index as one run left it: same ids, count,
    generation (nothing written) and top hits; compact, lexical and 'no results' work from the command line."""
    idx = tmp_path / "idx"
    states = []
    for _ in range(2):
        assert main(["index", str(beir), str(idx), "--quiet"]) == 0
        assert main(["add", str(idx), str(beir), "--quiet"]) == 0
        assert main(["search", str(idx), "capital of France", "--json", "-k", "2"]) == 0
        capsys.readouterr()
        meta = json.loads((idx / "metadata.json").read_text())
        assert main(["search", str(idx), "capital of France", "--json", "-k", "2"]) == 0
        states.append((meta["counts"], meta["generation"], [h["id"] for h in json.loads(capsys.readouterr().out)]))
    assert states[0] == states[1]
    assert main(["delete", str(idx), "a"]) == 0 and main(["compact", str(idx), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compact", str(idx), "--quiet", "--recluster", "no"]) == 0
    assert json.loads(capsys.readouterr().out)["segments"] == 1
    assert main(["search", str(idx), "zzz", "--mode", "bm25"]) == 2
    assert "colbert-retriever lexical INDEX" in capsys.readouterr().err
    assert main(["lexical", str(idx)]) == 0 and json.loads(capsys.readouterr().out)["added"] is True
    assert main(["search", str(idx), "zzzqqq", "--mode", "bm25"]) == 0
    assert capsys.readouterr().out.startswith("no results")


def test_reindexing_a_changed_folder_reports_what_it_did(tmp_path, capsys):
    """A folder of text files: a document is known by its relative path; a re-run is a no-op that says so, an
    edited file is replaced, a new one added, and with --prune a removed one deleted. Tiny builds print no bars."""
    docs = tmp_path / "notes"
    docs.mkdir()
    (docs / "paris.md").write_text("# Paris\n\nParis is the capital of France.")
    (docs / "piano.md").write_text("# Piano\n\nA piano has 88 keys.")
    (docs / "json.txt").write_text("json.loads parses a JSON string.")
    idx = str(tmp_path / "idx")

    def run(*argv):
        assert main(list(argv)) == 0
        out, err = capsys.readouterr()
        return json.loads(out), err

    first, err = run("index", str(docs), idx)
    assert (first["added"], first["replaced"], first["unchanged"], first["removed"]) == (3, 0, 0, 0)
    assert "it/s" not in err and "doc/s" not in err and "passage/s" not in err  # no progress bar for 3 files
    again, _ = run("index", str(docs), idx)
    assert (again["added"], again["replaced"], again["unchanged"], again["removed"]) == (0, 0, 3, 0)
    assert again["generation"] == first["generation"] and "build_seconds" not in again
    (docs / "piano.md").write_text("# Harpsichord\n\nA harpsichord plucks its strings.")
    (docs / "json.txt").unlink()
    (docs / "violin.md").write_text("# Violin\n\nThe violin is played with a bow.")
    synced, _ = run("index", str(docs), idx, "--prune")
    assert (synced["added"], synced["replaced"], synced["unchanged"], synced["removed"]) == (1, 1, 1, 1)
    assert synced["documents"] == 3
    hits, _ = run("search", idx, "harpsichord strings", "-k", "5", "--json")
    assert hits[0]["id"] == "piano.md" and "Harpsichord" in hits[0]["text"]
    assert not [h for h in hits if "88 keys" in h["text"] or h["id"] == "json.txt"]
    added, _ = run("add", idx, str(docs))  # unchanged: nothing added, nothing written
    assert (added["added"], added["replaced"], added["unchanged"]) == (0, 0, 3)
    assert added["generation"] == synced["generation"] and added["documents"] == added["documents_before"]


def test_demo_runs_and_passes_no_deprecated_argument(tmp_path, capsys):
    """``make demo`` on a slice of the shipped collection (its gzip docstrings and 20 others): it builds, reopens
    and answers every query, filter included. The library's own DeprecationWarnings are errors in the tests
    (pyproject's filterwarnings), so a deprecated argument passed by the demo fails here."""
    from colbert_retriever.cli import demo

    lines = (Path(__file__).resolve().parents[1] / "examples" / "stdlib_docs.jsonl").read_text().splitlines()
    sample = [x for x in lines if '"module": "gzip"' in x] + lines[:20]
    (tmp_path / "docs.jsonl").write_text("\n".join(sample) + "\n")
    demo.main(["--data", str(tmp_path / "docs.jsonl"), "--index", str(tmp_path / "idx"), "-k", "2"])
    out = capsys.readouterr().out
    assert f"{len(sample)} docs" in out and out.count("\nQ: ") == len(demo.QUERIES) + 1
    assert "(pool_factor 2)" in out  # the demo runs the default: pooled
    assert "gzip." in out.split("filter=")[1]
