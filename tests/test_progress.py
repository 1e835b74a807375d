"""Progress bars stay quiet for small writes and count what they say (documents, or passages once a document was
split)."""

from colbert_retriever import Index

from .conftest import make_corpus


def test_a_tiny_build_prints_no_bar(tmp_path, tiny_model, capsys):
    Index.build(tmp_path / "i", make_corpus(3), model=tiny_model)
    assert capsys.readouterr().err == ""


def test_bars_count_passages_when_documents_are_split(tmp_path, tiny_model, capsys):
    long_text = " ".join(make_corpus(40, seed=3))  # far over doc_maxlen=24: several passages
    Index.build(tmp_path / "p", [long_text, "a short one."], model=tiny_model, show_progress=True)
    err = capsys.readouterr().err
    assert "passage" in err and "doc/s" not in err
    Index.build(tmp_path / "d", make_corpus(5), model=tiny_model, show_progress=True)
    err = capsys.readouterr().err
    assert "doc" in err and "passage" not in err
