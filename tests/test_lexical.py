"""The lexical side's robustness: a store in the pre-0.2 layout (one trigger-fed FTS5 table) is read and moved to
the two slots by the next writer; the deep check finds tampering that keeps SQLite consistent; symbolic links in
an index folder are never written through; the last raw errors are library errors or CLI one-liners."""

import json
import sqlite3

import pytest

from colbert_retriever import (
    IncompatibleModelError,
    Index,
    IndexFormatError,
    IndexLockedError,
    InvalidArgument,
    InvalidType,
)
from colbert_retriever.store import lexical
from colbert_retriever.cli.main import main


QUERIES = ("music guitar piano", "ocean forest", "kernel memory network")


def bm25_answers(idx):
    return [[(h.id, round(h.score, 4)) for h in idx.search(q, k=10, mode="bm25")] for q in QUERIES]


@pytest.fixture
def lexical_index(built_index):
    built_index.add_lexical()
    return built_index


def _docstore(idx) -> str:
    return str(idx.path / idx.metadata["docstore"])


def _to_legacy(path: str) -> None:
    """Rewrite a store's lexical side the way colbert-retriever 0.1 kept it: one FTS5 table over docs, fed by
    triggers."""
    conn = sqlite3.connect(path, isolation_level=None)
    for s in lexical.SLOTS:
        conn.execute(f"DROP TABLE {lexical.table(s)}")
        conn.execute(f"DROP VIEW {lexical.table(s)}_rows")
    conn.execute("DROP TABLE lexical_state")
    conn.executescript(f"""
CREATE VIRTUAL TABLE lexical USING fts5(text, content='docs', content_rowid='pid', tokenize='{lexical.TOKENIZER}');
CREATE TRIGGER lexical_insert AFTER INSERT ON docs BEGIN
    INSERT INTO lexical(rowid, text) VALUES (new.pid, new.text);
END;
CREATE TRIGGER lexical_delete AFTER DELETE ON docs BEGIN
    INSERT INTO lexical(lexical, rowid, text) VALUES ('delete', old.pid, old.text);
END;
INSERT INTO lexical(lexical) VALUES ('rebuild');""")
    conn.close()


def test_legacy_lexical_store_is_read_then_moved_to_slots(lexical_index, tiny_model):
    expected = bm25_answers(lexical_index)
    path = lexical_index.path
    _to_legacy(_docstore(lexical_index))
    idx = Index.open(path, model=tiny_model)
    assert idx.has_lexical and bm25_answers(idx) == expected
    assert Index.open(path, model=tiny_model, verify="deep").has_lexical  # the legacy layout checks sound
    idx.delete(["no-such-id"])  # any write moves the store to the two slots
    conn = sqlite3.connect(_docstore(idx))
    assert lexical.kind(conn) == "slots" and not conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    conn.close()
    assert bm25_answers(idx) == expected
    idx.add(["zebra quartz music"], ids=["z"])
    assert idx.search("zebra quartz", k=1, mode="bm25")[0].id == "z"
    assert Index.open(path, model=tiny_model, verify="deep").generation == idx.generation


@pytest.mark.parametrize("tamper,needle", [
    ("DELETE FROM lexical_0_idx", "lexical_0"),
    ("DELETE FROM lexical_1_docsize WHERE id < 50", "lexical_1"),
    ("DROP TABLE lexical_0_config", "shadow tables"),
    ("UPDATE lexical_state SET n = n + 7", "committed rows"),
])
def test_deep_check_finds_tampering_sqlite_accepts(lexical_index, tiny_model, tamper, needle, capsys):
    path = lexical_index.path
    assert Index.open(path, model=tiny_model, verify="deep").generation > 0
    conn = sqlite3.connect(_docstore(lexical_index), isolation_level=None)
    conn.execute(tamper)
    conn.close()
    with pytest.raises(IndexFormatError, match=needle):
        Index.open(path, model=tiny_model, verify="deep")
    Index.open(path, model=tiny_model)  # the quick open does not read everything


def test_deep_check_of_a_legacy_store_misses_no_trigger(lexical_index, tiny_model):
    _to_legacy(_docstore(lexical_index))
    conn = sqlite3.connect(_docstore(lexical_index), isolation_level=None)
    conn.execute("DROP TRIGGER lexical_insert")
    conn.close()
    with pytest.raises(IndexFormatError, match="lexical_insert"):
        Index.open(lexical_index.path, model=tiny_model, verify="deep")


def test_info_check_on_the_cli(lexical_index, capsys):
    path = str(lexical_index.path)
    assert main(["info", path, "--check", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["check"] == "ok" and info["lexical"] is True
    assert info["precision"]["documents"] in ("float32", "bfloat16")
    conn = sqlite3.connect(_docstore(lexical_index), isolation_level=None)
    conn.execute("DELETE FROM lexical_0_idx")
    conn.close()
    assert main(["info", path]) == 0  # without --check: the quick look
    capsys.readouterr()
    assert main(["info", path, "--check"]) == 2
    err = capsys.readouterr().err
    assert "fails the deep check" in err and len(err.strip().splitlines()) == 1


# ============================================================================ symbolic links
def test_symlinked_document_store_is_refused_not_written_through(lexical_index, tiny_model, tmp_path):
    store = lexical_index.path / lexical_index.metadata["docstore"]
    outside = tmp_path / "outside.sqlite"
    store.rename(outside)
    store.symlink_to(outside)
    before = outside.read_bytes()
    with pytest.raises(IndexFormatError, match="symbolic link"):
        Index.open(lexical_index.path, model=tiny_model)
    with pytest.raises(IndexFormatError, match="symbolic link"):
        lexical_index.add(["new text"], ids=["n1"])
    assert outside.read_bytes() == before
    assert not (tmp_path / "outside.sqlite-wal").exists() and not (tmp_path / "outside.sqlite-shm").exists()


def test_symlinked_lock_and_arrays_are_refused(built_index, tiny_model, tmp_path):
    lock = built_index.path / ".lock"
    target = tmp_path / "elsewhere.lock"
    lock.unlink()
    lock.symlink_to(target)
    with pytest.raises(IndexLockedError, match="symbolic link"):
        built_index.delete(["d1"])
    assert not target.exists()
    lock.unlink()
    seg = built_index.metadata["segments"][0]["name"]
    arr = built_index.path / f"{seg}.codes.npy"
    real = tmp_path / "codes.npy"
    arr.rename(real)
    arr.symlink_to(real)
    with pytest.raises(IndexFormatError, match="symbolic link"):
        Index.open(built_index.path, model=tiny_model)


def test_build_on_a_dangling_symlink_is_a_clear_error(tmp_path, tiny_model):
    link = tmp_path / "idx"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidArgument, match="does not exist"):
        Index.build(link, ["a b c"], model=tiny_model, show_progress=False)
    assert not (tmp_path / "nowhere").exists() and link.is_symlink()


# ============================================================================ raw errors
@pytest.mark.parametrize("mode", ["bm25", "hybrid", "bm25_rerank", "colbert"])
def test_huge_k_and_depth_clamp(lexical_index, mode):
    hits = lexical_index.search("music guitar", k=2**63, mode=mode, depth=2**63)
    assert 0 < len(hits) <= 200 and len({h.id for h in hits}) == len(hits)


def test_deeply_nested_metadata_json_is_a_format_error(built_index, tiny_model):
    (built_index.path / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(IndexFormatError, match="nested too deeply"):
        Index.open(built_index.path, model=tiny_model)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"verify": 1}, InvalidArgument, "verify"),
    ({"verify": "yes"}, InvalidArgument, "verify"),
    ({"lock_timeout": -1}, InvalidArgument, "lock_timeout"),
    ({"lock_timeout": "5"}, InvalidType, "lock_timeout"),
])
def test_open_arguments_take_only_documented_values(built_index, tiny_model, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Index.open(built_index.path, model=tiny_model, **kwargs)


def test_model_that_cannot_load_is_named(built_index):
    with pytest.raises(IncompatibleModelError, match="cannot be loaded"):
        Index.open(built_index.path, model=str(built_index.path / "no-such-model"))


@pytest.mark.parametrize("argv_tail,needle", [
    (["--limit", "-1"], "--limit: must be 1 or more"),
    (["--limit", "0"], "--limit: must be 1 or more"),
    (["--doc-maxlen", "0"], "--doc-maxlen: must be 1 or more"),
    (["--limit", "ten"], "--limit: must be a whole number"),
])
def test_cli_refuses_silent_coercions(tmp_path, capsys, argv_tail, needle):
    data = tmp_path / "d.jsonl"
    data.write_text('{"_id": "1", "text": "one"}\n{"_id": "2", "text": "two"}\n')
    assert main(["index", str(data), str(tmp_path / "i"), "--quiet", *argv_tail]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "i").exists()


def test_cli_bad_gzip_is_one_line(tmp_path, capsys):
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(b"this is not gzip data at all")
    assert main(["index", str(fake), str(tmp_path / "i"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a readable gzip file" in err and len(err.strip().splitlines()) == 1
