"""``colbert-retriever serve``: its flags, and a mistake caught before any server starts (exit 2, one line)."""

import subprocess
import sys


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "colbert_retriever.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_names_the_flags():
    out = _cli("serve", "--help")
    assert out.returncode == 0
    for flag in ("--host", "--port", "--replicas", "--max-batch-size", "--batch-wait-ms"):
        assert flag in out.stdout


def test_a_missing_index_exits_2_with_one_line(tmp_path):
    out = _cli("serve", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "nowhere" in out.stderr
    (tmp_path / "empty").mkdir()
    out = _cli("serve", str(tmp_path / "empty"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "metadata.json" in out.stderr
    out = _cli("serve", str(tmp_path), "--port", "0")
    assert out.returncode == 2 and "must be 1 or more" in out.stderr
