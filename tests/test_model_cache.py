"""``load_model``'s cache locks per key: a load in progress blocks only the threads asking for the same model
(which then share its instance), never the load of another model (issue 38)."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from colbert_retriever import load_model
from colbert_retriever.model.checkpoints import ARTIFACT

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe (POSIX)")


def test_a_slow_load_does_not_block_another_model(tmp_path, colbert_ai_ckpt):
    slow, fast = tmp_path / "slow", tmp_path / "fast"
    shutil.copytree(colbert_ai_ckpt, slow)
    shutil.copytree(colbert_ai_ckpt, fast)
    # the slow checkpoint's metadata is a named pipe: its load blocks reading it until this test writes it
    text = (slow / ARTIFACT).read_bytes()
    (slow / ARTIFACT).unlink()
    os.mkfifo(slow / ARTIFACT)
    got: dict = {}

    def load(tag, path):
        try:
            got[tag] = load_model(str(path))
        except BaseException as e:  # reported by the asserts below
            got[tag] = e

    first = threading.Thread(target=load, args=("slow", slow))
    second = threading.Thread(target=load, args=("slow again", slow))  # the same key: waits for the first load
    other = threading.Thread(target=load, args=("fast", fast))
    released = False
    try:
        first.start()
        second.start()
        other.start()
        other.join(timeout=120)
        assert not other.is_alive(), "another model's load waited for the slow one"
        assert first.is_alive() and second.is_alive()  # still blocked on the pipe: the loads overlapped
        assert "slow" not in got and "slow again" not in got
        with open(slow / ARTIFACT, "wb") as pipe:
            pipe.write(text)
        released = True
    finally:
        if not released and first.is_alive():
            with open(slow / ARTIFACT, "wb") as pipe:  # unblock the reader whatever failed
                pipe.write(text)
        first.join(timeout=120)
        second.join(timeout=120)
    assert not isinstance(got["fast"], BaseException), got["fast"]
    assert not isinstance(got["slow"], BaseException), got["slow"]
    assert got["slow again"] is got["slow"]  # one load per key, one shared instance
    assert got["fast"] is not got["slow"] and load_model(str(fast)) is got["fast"]
