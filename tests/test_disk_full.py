"""A full disk is one clear error from every stage of a write (segment files, the document store, metadata.json),
the index keeps its last committed generation, and the failed write leaves none of its files behind.

The disk is really full: a child process runs in its own mount namespace (``unshare -rm``) on a 2 MiB tmpfs, fills
it, then frees 12 KiB at a time and tries an add (and a first build) with each amount left, so that the
write runs out of space at a different stage each time. The kernel answers ENOSPC; SQLite answers "database or disk
is full". Skipped where the system does not allow an unprivileged mount namespace."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(r'''
    import json, os, shutil, sys
    from pathlib import Path
    from colbert_retriever import CodecConfig, ColBERT, Index
    from colbert_retriever.store import layout

    mnt, ckpt = Path(sys.argv[1]), sys.argv[2]
    words = "alpha beta gamma delta river mountain ocean forest python java rust compiler kernel memory".split()
    def texts(n, seed):
        return [" ".join(words[(seed + i * 7 + j * 3) % len(words)] for j in range(8 + (i + seed) % 9))
                for i in range(n)]
    model = ColBERT.from_pretrained(ckpt, dtype="float32")
    base = mnt / "idx"
    Index.build(base, texts(80, 0), model=model, codec_config=CodecConfig(nbits=2, num_centroids=16), lexical=True)
    filler = mnt / "filler"

    def fill(leave):
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        size = filler.stat().st_size
        os.truncate(filler, max(0, size - leave))

    def leftovers(folder):
        if not (folder / layout.METADATA).exists():
            return sorted(os.listdir(folder))
        keep = layout.read_metadata_file(folder).referenced_files() | {layout.METADATA, layout.LOCK}
        keep |= {k + s for k in list(keep) for s in ("-wal", "-shm", "-journal")}
        return sorted(n for n in os.listdir(folder) if n not in keep)

    out = []
    for step, leave in enumerate(range(0, 192 * 1024, 12 * 1024)):
        before = Index.open(base, model=model).generation
        fill(leave)
        row = {"leave": leave}
        try:
            Index.open(base, model=model).add(texts(12, step + 1), ids=[f"s{step}-{i}" for i in range(12)])
            row["error"] = None
        except Exception as e:
            row["error"], row["message"] = type(e).__name__, str(e)
        try:  # a first build that runs out of space leaves no folder
            Index.build(mnt / f"new{step}", texts(30, step), model=model, codec_config=CodecConfig(nbits=2,
                        num_centroids=8), lexical=True)
            row["build_error"] = None
        except Exception as e:
            row["build_error"], row["build_message"] = type(e).__name__, str(e)
        row["new_folder_left"] = (mnt / f"new{step}").exists() and row["build_error"] is not None
        for p in [p for p in mnt.iterdir() if p.name.startswith("new")]:
            shutil.rmtree(p)
        filler.unlink()
        fresh = Index.open(base, model=model, verify=True)
        row["generation"] = [before, fresh.generation]
        row["leftovers"] = leftovers(base)
        row["searchable"] = len(fresh.search("river ocean", k=3)) == 3 and len(fresh.search("river", k=3,
                                                                                           mode="bm25")) > 0
        out.append(row)
    print(json.dumps(out))
''')


def _tmpfs_child(tmp_path, ckpt):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare: cannot mount a small tmpfs to fill")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cmd = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=2m none "$1" || exit 77; exec "$2" "$3" "$1" "$4"',
           "sh", str(mnt), sys.executable, str(script), str(ckpt)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if res.returncode == 77 or (res.returncode != 0 and not res.stdout.strip() and "unshare" in res.stderr[:300]):
        pytest.skip(f"this system does not allow a private tmpfs mount: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_disk_full_is_one_clear_error_from_every_stage(tmp_path, colbert_ai_ckpt):
    rows = _tmpfs_child(tmp_path, colbert_ai_ckpt)
    failed = [r for r in rows if r["error"]]
    assert failed and any(r["error"] is None for r in rows), rows  # the sweep reaches both sides
    for r in rows:
        before, after = r["generation"]
        if r["error"] is None:
            assert after == before + 1, r
        else:
            assert r["error"] == "DiskFullError", r
            msg = r["message"]
            assert msg.startswith("the disk is full") and "\n" not in msg, r
            assert after == before, r  # nothing committed
        assert r["leftovers"] == [], r  # no temporaries left until the next write
        assert r["searchable"], r
        if r["build_error"] is not None:
            assert r["build_error"] == "DiskFullError" and r["build_message"].startswith("the disk is full"), r
            assert not r["new_folder_left"], r
    stages = {"document store" if "document store" in r["message"] else "files" for r in failed}
    assert stages == {"document store", "files"}, [r["message"] for r in failed]  # both mappings were exercised
