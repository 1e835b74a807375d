import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from colbert_retriever import (
    IncompatibleModelError,
    Index,
    IndexFormatError,
    IndexNotFoundError,
    InvalidArgument,
    InvalidType,
)

from .conftest import REAL_PATH_QUERIES, assert_real_path, make_corpus


def ids_of(hits):
    return [h.id for h in hits]


@pytest.mark.parametrize("n", [1, 2, 10])
def test_tiny_collections(tmp_path, tiny_model, n):
    texts = make_corpus(n, seed=n)
    idx = Index.build(tmp_path / "i", texts, model=tiny_model, show_progress=False)
    for kwargs in ({}, {"exhaustive": True}):
        hits = idx.search(texts[0], k=50, **kwargs)
        assert len(hits) == n  # k larger than the collection returns all documents
        assert len(set(ids_of(hits))) == n
        assert [h.rank for h in hits] == list(range(1, n + 1))
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    top = idx.search(texts[0], k=1)
    assert len(top) == 1 and top[0].score == pytest.approx(idx.search(texts[0], k=1, exhaustive=True)[0].score)
    if n == 1:
        assert top[0].id == "0"


def test_fifty_tokens_in_all(tmp_path, tiny_model):
    texts = ["alpha beta", "gamma delta river", "ocean", "forest python java rust", "kernel memory network"] * 2
    idx = Index.build(tmp_path / "i", texts, model=tiny_model, show_progress=False)
    assert idx.metadata["counts"]["embeddings"] < 60
    assert len(idx.search("ocean", k=3)) == 3


def test_roundtrip_open_same_results(large_index_path, tiny_model):
    first, reopened = Index.open(large_index_path, model=tiny_model), Index.open(large_index_path, model=tiny_model)
    trace = []
    for q in REAL_PATH_QUERIES[:5]:
        a, b = first.search(q, k=10, trace=trace), reopened.search(q, k=10, trace=trace)
        assert ids_of(a) == ids_of(b)
        assert [h.score for h in a] == pytest.approx([h.score for h in b])
    assert_real_path(trace, 3000)


def test_metadata_json_contents(built_index):
    meta = json.loads((built_index.path / "metadata.json").read_text())
    assert meta["format_version"] == 2 and meta["library_version"]
    assert meta["model"]["identity"] and meta["model"]["encoder_config"]["dim"] == 32
    assert meta["codec"]["config"]["nbits"] == 2 and meta["codec"]["num_centroids"] == 64
    doclens = np.load(built_index.path / f"{meta['segments'][0]['name']}.doclens.npy")
    assert meta["counts"] == {"documents": 200, "deleted": 0, "live": 200, "embeddings": int(doclens.sum())}
    stages = {"encode_s", "kmeans_s", "compress_s", "write_s"}
    assert stages <= set(meta["provenance"]["stages"]) <= stages | {"segment_s"}  # segment_s: finishing the segment
    codes = np.load(built_index.path / f"{meta['segments'][0]['name']}.codes.npy", mmap_mode="r")
    assert codes.dtype == np.uint8  # 64 centroids fit a byte


def test_duplicate_ids_rejected(tmp_path, tiny_model, built_index):
    with pytest.raises(InvalidArgument, match="duplicate ids"):
        Index.build(tmp_path / "x", ["a b", "c d"], ids=["x", "x"], model=tiny_model, show_progress=False)
    with pytest.raises(InvalidArgument, match="already in the index.*d3"):
        built_index.add(["new text"], ids=["d3"])


def test_build_over_an_existing_index(built_index, tiny_model):
    """One rule for an existing index: upsert by id by default (the same ids give the same index), refuse with
    if_exists="error", replace atomically with "overwrite"."""
    path, before = built_index.path, built_index.generation
    with pytest.raises(InvalidArgument, match="if_exists"):
        Index.build(path, ["x y"], model=tiny_model, show_progress=False, if_exists="error")
    again = Index.build(path, ["x y"], ids=["d0"], model=tiny_model, show_progress=False)
    assert len(again) == 200 and again.get(["d0"])[0].text == "x y" and again.generation == before + 1
    same = Index.build(path, ["x y"], ids=["d0"], model=tiny_model, show_progress=False)
    assert same.generation == before + 1  # unchanged: nothing written
    fresh = Index.build(path, ["x y"], model=tiny_model, show_progress=False, if_exists="overwrite")
    assert len(fresh) == 1
    with pytest.raises(InvalidArgument, match="if_exists must be one of"):
        Index.build(path, ["x y"], model=tiny_model, if_exists="append")
    with pytest.warns(DeprecationWarning, match="if_exists"):
        Index.build(path, ["x y"], model=tiny_model, show_progress=False, overwrite=True)


def test_bad_metadata(tmp_path, tiny_model):
    with pytest.raises(InvalidType, match=r"metadatas\[1\]\['when'\].*JSON"):
        Index.build(tmp_path / "i", ["a b", "c d"], metadatas=[{}, {"when": object()}], model=tiny_model)


def test_missing_and_corrupt_files(built_index, tiny_model, tmp_path):
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        Index.open(tmp_path / "nothing", model=tiny_model)
    meta = json.loads((built_index.path / "metadata.json").read_text())
    seg = meta["segments"][0]["name"]
    res = built_index.path / f"{seg}.residuals.npy"
    data = res.read_bytes()
    res.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match="residuals.npy is corrupt"):
        Index.open(built_index.path, model=tiny_model)
    res.unlink()
    with pytest.raises(IndexNotFoundError, match="missing"):
        Index.open(built_index.path, model=tiny_model)
    (built_index.path / "metadata.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        Index.open(built_index.path, model=tiny_model)


def test_format_version_and_model_mismatch(built_index, tiny_model, pylate_ckpt):
    from colbert_retriever import ColBERT

    meta = json.loads((built_index.path / "metadata.json").read_text())
    other = ColBERT.from_pretrained(pylate_ckpt, dtype="float32")
    with pytest.raises(IncompatibleModelError, match="was built with model"):
        Index.open(built_index.path, model=other)
    meta["format_version"] = 99
    (built_index.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="format version 99"):
        Index.open(built_index.path, model=tiny_model)


def test_add_delete_compact(built_index, tiny_model):
    q = "zebra xylophone quartz"
    new_ids = built_index.add(["zebra xylophone quartz", "zebra"], ids=["n1", "n2"],
                              metadatas=[{"group": 9}, {"group": 9}])
    assert new_ids == ["n1", "n2"] and len(built_index) == 202
    assert {"n1", "n2"} <= set(ids_of(built_index.search(q, k=202)))
    assert sorted(ids_of(built_index.search(q, k=5, filter={"group": 9}))) == ["n1", "n2"]
    assert built_index.delete(["n1", "d0", "unknown"]) == 2
    assert len(built_index) == 200
    hits = built_index.search(q, k=300)
    assert len(hits) == 200 and "n1" not in ids_of(hits) and "d0" not in ids_of(hits)
    before = {h.id: h.score for h in built_index.search(q, k=300, exhaustive=True)}
    built_index.compact()
    assert built_index.metadata["counts"] == {"documents": 200, "deleted": 0, "live": 200,
                                              "embeddings": built_index.metadata["counts"]["embeddings"]}
    after = {h.id: h.score for h in built_index.search(q, k=300, exhaustive=True)}
    assert after.keys() == before.keys()
    for k_ in before:
        assert after[k_] == pytest.approx(before[k_], abs=1e-5)
    assert ids_of(built_index.search(q, k=10)) == ids_of(Index.open(built_index.path, model=tiny_model).search(q, k=10))
    # a deleted id can be added again
    built_index.add(["again"], ids=["d0"])
    assert "d0" in ids_of(built_index.search("again", k=201))


def test_compact_recluster(built_index, tiny_model):
    built_index.add(make_corpus(150, seed=99), ids=[f"x{i}" for i in range(150)])
    assert built_index.metadata["codec"]["embeddings_added"] > 0
    built_index.compact(recluster=True)
    meta = built_index.metadata
    assert meta["codec"]["embeddings_added"] == 0 and meta["counts"]["live"] == 350
    agree, trace = 0, []
    queries = make_corpus(60, seed=98, min_words=8, max_words=12)
    for q in queries:  # knobs that run PLAID's stages on a subset of the 350 documents
        hits = built_index.search(q, k=10, ncells=4, ndocs=160, trace=trace)
        exh = built_index.search(q, k=10, exhaustive=True)
        assert len(hits) == 10
        agree += len(set(ids_of(hits)) & set(ids_of(exh)))
    assert_real_path(trace, 350)
    assert agree / (10 * len(queries)) >= 0.75  # measured 0.83 natively and capped to AVX2


def test_reader_keeps_working_during_updates(built_index, tiny_model):
    reader = Index.open(built_index.path, model=tiny_model)
    q = "ocean forest"
    before = ids_of(reader.search(q, k=5))
    built_index.add(["ocean forest ocean forest"], ids=["fresh"])
    built_index.compact()
    hits = reader.search(q, k=201)  # picks up the new generation
    assert "fresh" in ids_of(hits) and len(hits) == 201 and len(before) == 5


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from colbert_retriever import ColBERT, Index
    from tests.conftest import make_corpus
    import os
    real_replace = os.replace
    def slow_replace(src, dst, *a, **k):  # a segment file is in place: the write is under way
        real_replace(src, dst, *a, **k)
        if str(dst).endswith(".codes.npy"):
            print("WRITING", flush=True)
            time.sleep(30)
    os.replace = slow_replace
    model = ColBERT.from_pretrained({ckpt!r}, dtype="float32")
    if {mode!r} == "build":
        Index.build({path!r}, make_corpus(300, seed=5), model=model, if_exists="overwrite",
                    show_progress=False)
    else:
        Index.open({path!r}, model=model).add(make_corpus(300, seed=5), ids=[f"k{{i}}" for i in range(300)])
""")


@pytest.mark.parametrize("mode", ["build", "add"])
def test_sigkill_leaves_previous_index(built_index, tiny_model, colbert_ai_ckpt, mode, tmp_path):
    root = str(Path(__file__).resolve().parents[1])
    q = "music guitar piano"
    before = [(h.id, round(h.score, 5)) for h in built_index.search(q, k=10)]
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(root=root, ckpt=str(colbert_ai_ckpt), mode=mode, path=str(built_index.path)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "WRITING" in line, proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    idx = Index.open(built_index.path, model=tiny_model)
    assert [(h.id, round(h.score, 5)) for h in idx.search(q, k=10)] == before
    assert len(idx) == 200
    # the next writer cleans up and works
    idx.add(["after the crash"], ids=["ok"])
    assert len(idx) == 201 and idx.search("after the crash", k=1, ids=["ok"])[0].id == "ok"


def test_build_progress_names_each_phase_and_counts_documents(tmp_path, tiny_model, capsys):
    """The build's progress bar (stderr, plain text: no terminal control sequences) says which phase runs and
    counts the documents encoded."""
    Index.build(tmp_path / "i", make_corpus(40, seed=2), model=tiny_model, batch_size=8, show_progress=True)
    err = capsys.readouterr().err
    for phase in ("encoding a sample for the centroids", "training centroids (k-means)", "encoding + compressing"):
        assert phase in err, err
    assert "40/40" in err and "\x1b[" not in err
