"""Index format v2: ownership of the folder, the v1 fixture (read and upgrade), memory-mapped segments after adds,
stale writer handles, corruption of every file kind, bad input that must not poison the index, read-only folders."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from colbert_retriever import (
    CodecConfig,
    ColbertRetrieverError,
    IncompatibleModelError,
    Index,
    IndexClosedError,
    IndexFormatError,
    IndexNotFoundError,
    InvalidArgument,
    InvalidType,
)
from colbert_retriever.store import layout
from colbert_retriever.indexing.writer import MERGE_FACTOR

from .conftest import assert_ranked_alike, assert_real_path, make_corpus, read_only_command

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def ids_of(hits):
    return [h.id for h in hits]


def answers(index, queries=("music guitar piano", "ocean forest", "kernel memory"), k=10):
    return [[(h.id, round(h.score, 4)) for h in index.search(q, k=k, exhaustive=True)] for q in queries]


def files_in(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# ============================================================================ ownership
def test_build_refuses_a_folder_with_foreign_files(tmp_path, tiny_model):
    folder = tmp_path / "my_project"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "data.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for if_exists in ("upsert", "overwrite", "error"):
        with pytest.raises(InvalidArgument, match="not empty.*data.json, notes.txt.*no colbert-retriever index"):
            Index.build(folder, ["hello world", "another doc"], model=tiny_model, if_exists=if_exists,
                        show_progress=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # not even a .lock


def test_build_refuses_another_tools_metadata_json(tmp_path, tiny_model):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "metadata.json").write_text('{"format": "something-else"}')
    with pytest.raises(InvalidArgument, match="not a colbert-retriever index"):
        Index.build(folder, ["hello world"], model=tiny_model, if_exists="overwrite", show_progress=False)
    assert files_in(folder) == ["metadata.json"]


def test_our_index_with_foreign_files_keeps_them_through_every_write(tmp_path, tiny_model):
    folder = tmp_path / "idx"
    idx = Index.build(folder, make_corpus(30, seed=1), model=tiny_model, show_progress=False)
    foreign = {"README.md": b"mine", "seg-notes.txt": b"not a segment", ".notes.txt.deadbeef.tmp": b"x",
               "docs-backup.sqlite": b"y", "codec.npy": b"z"}
    for name, data in foreign.items():
        (folder / name).write_bytes(data)
    idx.add(["zebra quartz"], ids=["z"])
    idx.delete(["0"])
    idx.compact(recluster=True)
    idx = Index.build(folder, make_corpus(20, seed=2), model=tiny_model, if_exists="overwrite",
                      show_progress=False)
    assert len(idx) == 20
    for name, data in foreign.items():
        assert (folder / name).read_bytes() == data
    own = [n for n in files_in(folder) if n not in foreign]
    assert all(layout.is_own_file(n) for n in own)
    meta = idx.snapshot().meta
    side = {f"{meta.docstore}-wal", f"{meta.docstore}-shm"}  # SQLite's, while a connection is open
    assert meta.referenced_files() | {"metadata.json", ".lock"} <= set(own)
    assert set(own) <= meta.referenced_files() | {"metadata.json", ".lock"} | side


def test_orphans_of_killed_writers_are_removed_by_the_next_writer(built_index):
    folder = built_index.path
    orphans = [".seg-0123456789ab.codes.raw", ".seg-0123456789ab.residuals.npy.tmp", ".metadata.json.0badf00d.tmp",
               "seg-0123456789ab.codes.npy", "codec-0123456789ab.centroids.npy", "docs-0123456789ab.sqlite",
               ".codec-0123456789ab.centroids.npy.12345678.tmp"]
    for name in orphans:
        (folder / name).write_bytes(b"left by a killed writer")
    (folder / "keep-me.txt").write_text("user file")
    built_index.delete(["d1"])
    names = set(files_in(folder))
    assert not names & set(orphans)
    assert "keep-me.txt" in names


def test_failed_first_build_leaves_no_folder(tmp_path, tiny_model, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(tiny_model, "encode_documents_packed", boom)  # this test's own copy of the model
    with pytest.raises(RuntimeError, match="encoder crashed"):
        Index.build(tmp_path / "new", make_corpus(10), model=tiny_model, show_progress=False)
    assert not (tmp_path / "new").exists()


# ============================================================================ format v1 fixture
@pytest.fixture
def v1_index(tmp_path):
    dst = tmp_path / "v1"
    shutil.copytree(FIXTURES / "index_v1", dst)
    return dst


def test_v1_fixture_opens_and_answers_as_built(v1_index, tiny_model):
    expected = json.loads((FIXTURES / "index_v1_expected.json").read_text())
    assert tiny_model.identity == expected["identity"]
    before = {p.name: p.read_bytes() for p in v1_index.iterdir()}
    idx = Index.open(v1_index, model=tiny_model)
    assert len(idx) == expected["live"] and idx.metadata["format_version"] == 1
    for q, want in expected["queries"].items():  # recorded when the fixture was built (another machine's bits)
        want = [tuple(w) for w in want]
        assert_ranked_alike(idx.search(q, k=5, exhaustive=True), want, 2e-3)
        assert_ranked_alike(idx.search(q, k=5), want, 2e-3)  # PLAID on the derived inverted files
    idx.close()
    after = {p.name: p.read_bytes() for p in v1_index.iterdir() if not p.name.endswith(("-wal", "-shm"))}
    assert after == before  # opening wrote nothing (SQLite may keep side files while connected)


def test_v1_fixture_is_upgraded_by_the_first_write(v1_index, tiny_model):
    expected = json.loads((FIXTURES / "index_v1_expected.json").read_text())
    idx = Index.open(v1_index, model=tiny_model)
    assert idx.delete(["v39"]) == 1
    meta = json.loads((v1_index / "metadata.json").read_text())
    assert meta["format_version"] == 2 and "ivf" not in meta
    assert not [n for n in files_in(v1_index) if n.startswith("ivf-")]
    for seg in meta["segments"]:
        assert set(seg["checksums"]) == {f"{seg['name']}.{p}.npy" for p in layout.SEGMENT_PARTS}
    fresh = Index.open(v1_index, model=tiny_model, verify=True)
    assert len(fresh) == expected["live"] - 1
    want = [tuple(w) for w in expected["queries"]["ocean forest"]]
    assert_ranked_alike(fresh.search("ocean forest", k=5, exhaustive=True), want, 2e-3)
    fresh.add(["zebra quartz xylophone"], ids=["new"])
    assert fresh.search("zebra quartz xylophone", k=1, ids=["new"])[0].id == "new" and len(fresh) == expected["live"]


# ============================================================================ segments stay memory-mapped
def _mapped_files() -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for line in open("/proc/self/maps"):
        parts = line.split()
        if len(parts) >= 6:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.setdefault(parts[5], []).append((lo, hi))
    return out


def test_segments_stay_memory_mapped_and_adds_touch_only_new_data(built_index, tiny_model):
    first = built_index.snapshot()  # the public read-only view benchmarks use
    assert first.meta.generation == built_index.generation
    base = first.meta.segments[0].name
    new = make_corpus(40, seed=3)
    for i, t in enumerate(new):
        built_index.add([t], ids=[f"n{i}"])
    meta = built_index.snapshot().meta
    assert meta.generation == built_index.generation > first.meta.generation  # refreshed after the commits
    assert meta.segments[0].name == base  # the build's segment was never rewritten
    added = sum(s.num_embeddings for s in meta.segments[1:])
    # geometric sizes: O(log n) segments
    assert len(meta.segments) <= 2 + math.ceil(math.log(max(added, 2), MERGE_FACTOR))
    sizes = [s.num_embeddings for s in meta.segments[1:]]
    assert all(b * MERGE_FACTOR < a for a, b in zip(sizes, sizes[1:]))
    # every residual part is a view into its own segment file, not a copy in RAM
    arrays = built_index.snapshot().arrays
    maps = _mapped_files()
    assert len(arrays.residuals.parts) == len(meta.segments)
    for seg, part in zip(meta.segments, arrays.residuals.parts):
        ranges = maps.get(str(built_index.path / f"{seg.name}.residuals.npy"), [])
        assert any(lo <= part.data_ptr() < hi for lo, hi in ranges), seg.name
    # stored inverse norms: reopening computes none (they are views into their files too)
    reopened = Index.open(built_index.path, model=tiny_model)
    maps = _mapped_files()
    for seg, part in zip(meta.segments, reopened.snapshot().arrays.inv_norms.parts):
        ranges = maps.get(str(built_index.path / f"{seg.name}.invnorms.npy"), [])
        assert any(lo <= part.data_ptr() < hi for lo, hi in ranges), seg.name
    assert answers(reopened) == answers(built_index)
    assert reopened.search(new[-1], k=1, ids=[f"n{len(new) - 1}"])[0].id == f"n{len(new) - 1}"


def test_search_over_many_segments_equals_one_segment(built_index, tiny_model):
    for i, t in enumerate(make_corpus(12, seed=4)):
        built_index.add([t], ids=[f"s{i}"])
    assert len(built_index.metadata["segments"]) > 1
    many = answers(built_index, k=30)
    queries = make_corpus(6, seed=41, min_words=6, max_words=10)
    trace = []
    plaid_many = [ids_of(built_index.search(q, k=10, ncells=4, ndocs=80, trace=trace)) for q in queries]
    built_index.compact(recluster=False)
    assert len(built_index.metadata["segments"]) == 1
    assert answers(built_index, k=30) == many
    assert [ids_of(built_index.search(q, k=10, ncells=4, ndocs=80, trace=trace)) for q in queries] == plaid_many
    assert_real_path(trace, 212)  # PLAID's stages ran (20 documents scored exactly of 212)


# ============================================================================ stale writer handles
@pytest.mark.parametrize("grow_first", [False, True])
def test_stale_handle_writes_from_the_committed_codec(built_index, tiny_model, grow_first):
    a = built_index
    b = Index.open(a.path, model=tiny_model)
    k_before = a.snapshot().arrays.codec.num_centroids
    if grow_first:
        b.add(make_corpus(300, seed=8), ids=[f"g{i}" for i in range(300)])
    b.delete([f"d{i}" for i in range(5)])
    b.compact(recluster=True)
    a.add(["zebra xylophone quartz"], ids=["late"])  # a's last view had the old codec
    fresh = Index.open(a.path, model=tiny_model)
    assert fresh.snapshot().arrays.codec.num_centroids == fresh.metadata["codec"]["num_centroids"]
    fresh.add(["zebra xylophone quartz"], ids=["late2"])  # compressed with the committed codec for sure
    q = "zebra xylophone quartz"
    s1, s2 = (fresh.search(q, k=1, ids=[i], exhaustive=True)[0].score for i in ("late", "late2"))
    assert s1 == pytest.approx(s2, abs=1e-5)
    fresh.delete(["late2"])
    assert answers(fresh) == answers(a) == answers(b)
    assert len(fresh) == 200 - 5 + 1 + (300 if grow_first else 0)
    assert len(Index.open(a.path, model=tiny_model)) == len(fresh)
    assert k_before > 0


# ============================================================================ corruption
def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "delete":
        path.unlink()
        return
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "append":
        data += b"\x00junk"
    else:
        header = 128 if path.suffix == ".npy" else 0
        lo = header + (len(data) - header) // 3
        hi = min(len(data), lo + 64)
        for i in range(lo, hi):
            data[i] = (data[i] ^ 0xFF) if how == "flip" else 0
        if how == "zero" and hi <= lo:
            return
    path.write_bytes(bytes(data))


FILE_KINDS = ["codes", "residuals", "doclens", "invnorms", "ivfpids", "ivfoffsets", "centroids", "bucket_cutoffs",
              "bucket_weights", "docstore"]


def _file_of(meta: dict, kind: str) -> str:
    if kind in layout.CODEC_PARTS:
        return meta["codec"]["files"][kind]
    if kind == "docstore":
        return meta["docstore"]
    return f"{meta['segments'][0]['name']}.{kind}.npy"


@pytest.mark.parametrize("how", ["flip", "zero", "truncate", "append", "delete"])
@pytest.mark.parametrize("kind", FILE_KINDS)
def test_corrupt_files_give_clear_errors_never_wrong_results(_built_index, tmp_path, tiny_model, kind, how):
    folder = tmp_path / "idx"
    shutil.copytree(_built_index, folder)
    reference = answers(Index.open(folder, model=tiny_model))
    meta = json.loads((folder / "metadata.json").read_text())
    _corrupt(folder / _file_of(meta, kind), how)
    try:
        idx = Index.open(folder, model=tiny_model)
        got = answers(idx)
        filtered = idx.search("ocean", k=5, filter={"group": 1})
    except (IndexFormatError, IndexNotFoundError) as e:
        assert _file_of(meta, kind) in str(e) or "document store" in str(e)
        return
    # the SQLite store has no checksum: it may open, but then it must answer exactly as before
    assert kind == "docstore", f"{kind}/{how} was accepted"
    assert got == reference and all(h.metadata["group"] == 1 for h in filtered)


@pytest.mark.parametrize("part,value,match", [
    ("doclens", -5, "document lengths"), ("codes", 250, "out of range"), ("ivfpids", 10**6, "document ids"),
])
def test_hand_edited_arrays_with_matching_checksums_are_refused(_built_index, tmp_path, tiny_model, part, value,
                                                                match):
    """Structure checks hold even when the checksums were 'fixed' (and with verify=False): no segfault, no
    silently wrong answer."""
    from colbert_retriever.store import storage

    folder = tmp_path / "idx"
    shutil.copytree(_built_index, folder)
    meta = json.loads((folder / "metadata.json").read_text())
    seg = meta["segments"][0]
    name = f"{seg['name']}.{part}.npy"
    arr = np.load(folder / name).copy()
    if part == "codes":
        arr = arr.astype(np.uint8)
    arr[len(arr) // 2] = value
    if part == "doclens":
        arr[0] -= value  # keep the sum, make one length negative
    seg["checksums"][name] = storage.save_array(folder, name, arr)
    (folder / "metadata.json").write_text(json.dumps(meta))
    for verify in (True, False):
        with pytest.raises(IndexFormatError, match=match):
            Index.open(folder, model=tiny_model, verify=verify)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("model"), "lacks the entry 'model'"),
    (lambda m: m.pop("counts"), "lacks the entry 'counts'"),
    (lambda m: m.pop("generation"), "lacks the entry 'generation'"),
    (lambda m: m["counts"].update(documents=5), "counts.documents"),
    (lambda m: m.update(docstore="../elsewhere.sqlite"), "not a document store name"),
    (lambda m: m["segments"][0].update(name="../../etc/seg"), "not a segment name"),
    (lambda m: m["codec"]["files"].update(centroids="/tmp/x.centroids.npy"), "not a codec file"),
    (lambda m: m["codec"].update(num_centroids="many"), "expected an integer"),
    (lambda m: m.update(format_version=7), "format version 7.*reads versions 1, 2"),
    (lambda m: m["segments"][0]["checksums"].clear(), "checksums"),
])
def test_edited_metadata_gives_index_format_error(_built_index, tmp_path, tiny_model, edit, match):
    folder = tmp_path / "idx"
    shutil.copytree(_built_index, folder)
    meta = json.loads((folder / "metadata.json").read_text())
    edit(meta)
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match=match):
        Index.open(folder, model=tiny_model)


# ============================================================================ bad input
def test_bad_input_is_refused_and_never_poisons_the_index(built_index, tiny_model):
    idx = built_index
    before = answers(idx)
    cases = [
        (lambda: idx.add(["x y"], metadatas=[{"score": float("nan")}]), InvalidArgument, r"metadatas\[0\]\['score'\]"),
        (lambda: idx.add(["x y"], metadatas=[{"v": float("inf")}]), InvalidArgument, "NaN and infinity"),
        (lambda: idx.add(["x y"], metadatas=[{"a": {1: "b"}}]), InvalidType, "non-string key 1"),
        (lambda: idx.add(["x y"], metadatas=[{"n": 10**30}]), InvalidArgument, "64-bit"),
        (lambda: idx.add(["x y"], metadatas=[{"s": "bad \ud800"}]), InvalidArgument, "lone surrogate"),
        (lambda: idx.add(["bad \udcff text"]), InvalidArgument, r"texts\[0\] holds a lone surrogate"),
        (lambda: idx.add(["x y"], ids=["\ud800"]), InvalidArgument, "lone surrogate"),
        (lambda: idx.add(["x y"], metadatas={"a": 1}), InvalidType, "list of dicts"),
        (lambda: idx.search("q \ud800"), InvalidArgument, "lone surrogate"),
        (lambda: idx.search("q", filter={1: "a"}), InvalidType, "filter keys"),
        (lambda: idx.search("q", filter={None: "a"}), InvalidType, "filter keys"),
        (lambda: idx.search("q", filter={"group": 10**30}), InvalidArgument, "64-bit"),
        (lambda: idx.search("q", filter={"group": float("nan")}), InvalidArgument, "NaN"),
        (lambda: idx.search("q", filter={"name": {"$exists": "no"}}), InvalidType, r"\$exists takes True or False"),
        (lambda: idx.search("q", filter={"$or": [{"group": i} for i in range(2000)]}), InvalidArgument,
         "more than 256 conditions"),
        (lambda: idx.search("q", filter=_deep_filter(2000)), InvalidArgument, "nested deeper"),
        (lambda: idx.search("q", ids=123), InvalidType, "ids must be"),
        (lambda: idx.search("q", centroid_score_threshold="x"), InvalidType, "centroid_score_threshold"),
        (lambda: idx.search("q", exhaustive="yes"), InvalidType, "exhaustive"),
        (lambda: idx.search("q", k=0), InvalidArgument, "k must be > 0"),
        (lambda: idx.delete(None), InvalidArgument, "delete needs ids or a filter"),
        (lambda: idx.delete(filter=[1]), InvalidType, "filter must be a dict"),
        (lambda: idx.delete(123), InvalidType, "ids must be"),
        (lambda: idx.delete([None]), InvalidType, r"ids\[0\] is NoneType"),
        (lambda: Index.open(None), InvalidType, "path must be"),
        (lambda: Index.open(idx.path, model=3.5), InvalidType, "model must be a ColBERT"),
        (lambda: Index.open(idx.path, model="/no/such/checkpoint"), IncompatibleModelError,
         "model '/no/such/checkpoint' cannot be loaded"),
        (lambda: Index.build(idx.path.parent / "z", ["a b"], model=tiny_model, nbits=4,
                             codec_config=CodecConfig(nbits=2)), InvalidArgument, "contradicts"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    assert answers(idx) == before
    assert len(idx.search("ocean", k=5, filter={"group": 1})) == 5  # filters still work on every row
    assert idx.delete(["None"]) == 0
    idx.add(["a fine document"], ids=["fine"], metadatas=[{"score": 1.5, "n": 2**62, "nested": {"k": [1, "x"]}}])
    hit = idx.search("a fine document", k=1, filter={"n": 2**62})[0]
    assert hit.id == "fine" and hit.metadata["nested"] == {"k": [1, "x"]}


def _deep_filter(depth):
    f = {"group": 1}
    for _ in range(depth):
        f = {"$not": f}
    return f


def test_closed_index_raises_clearly(built_index):
    built_index.close()
    built_index.close()  # idempotent
    for call in (lambda: built_index.search("q"), lambda: built_index.add(["x y"]), lambda: len(built_index),
                 lambda: built_index.delete(["d1"]), lambda: built_index.compact()):
        with pytest.raises(IndexClosedError, match="closed"):
            call()
    assert "closed" in repr(built_index)


def test_device_argument_is_honoured(built_index, tiny_model):
    idx = Index.open(built_index.path, model=tiny_model, device="cpu")
    assert idx.device == torch.device("cpu") and idx.snapshot().arrays.doc_offsets.device.type == "cpu"


# ============================================================================ read-only folder
READONLY_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    from colbert_retriever import ColBERT, Index, IndexLockedError, kernel_backend
    model = ColBERT.from_pretrained({ckpt!r}, dtype="float32")
    idx = Index.open({path!r}, model=model)
    with kernel_backend({kernels!r}):  # the parent's kernels: same code path, same rounding
        out = [[(h.id, round(h.score, 4)) for h in idx.search(q, k=10, exhaustive=True)]
               for q in ("music guitar piano", "ocean forest", "kernel memory")]
        filtered = [h.id for h in idx.search("ocean", k=3, filter={{"group": 1}})]
    try:
        idx.add(["x y"])
        err = None
    except IndexLockedError as e:
        err = str(e)
    print(json.dumps({{"answers": out, "filtered": filtered, "write_error": err,
                      "writable": os.access({path!r}, os.W_OK)}}))
""")


def test_read_only_folder_opens_and_searches(built_index, tiny_model, colbert_ai_ckpt, tmp_path, request):
    built_index.delete(["d3"])  # a WAL-mode store with a committed write
    expected = answers(built_index)
    root = str(Path(__file__).resolve().parents[1])
    idx_dir = tmp_path / "ro" / "index"
    shutil.copytree(built_index.path, idx_dir)
    before = files_in(idx_dir)
    script = tmp_path / "ro.py"
    script.write_text(READONLY_SCRIPT.format(root=root, ckpt=str(colbert_ai_ckpt), path=str(idx_dir),
                                             kernels=request.config.getoption("--kernels")))
    cmd = read_only_command(idx_dir, [sys.executable, str(script)])
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert not out["writable"]
        assert len(out["answers"]) == len(expected)
        for got, want in zip(out["answers"], expected):  # the child's first searches may run the torch twins
            assert_ranked_alike([tuple(h) for h in got], want, 2e-4)
        assert len(out["filtered"]) == 3
        assert "read-only" in out["write_error"]
        assert files_in(idx_dir) == before
    finally:
        for p in [idx_dir, *idx_dir.iterdir()]:
            os.chmod(p, 0o755)


def test_errors_are_library_errors():
    assert issubclass(IndexClosedError, ColbertRetrieverError)
