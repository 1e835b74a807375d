"""Regenerate examples/stdlib_docs.jsonl: the first paragraph of the docstring of public functions, classes and
methods of a fixed list of Python standard-library modules (the demo collection). Deterministic for a given Python.

    python scripts/make_stdlib_corpus.py [--out examples/stdlib_docs.jsonl]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re

MODULES = """argparse base64 bisect calendar collections colorsys configparser contextlib copy csv dataclasses datetime
decimal difflib enum filecmp fnmatch fractions functools glob gzip hashlib heapq hmac html http.client http.server
imaplib inspect io ipaddress itertools json logging math mimetypes operator os os.path pathlib pickle platform
pprint queue random re secrets shlex shutil smtplib socket sqlite3 statistics string struct subprocess sys tarfile
tempfile textwrap threading time timeit tokenize traceback typing unicodedata unittest urllib.parse urllib.request
uuid warnings weakref xml.etree.ElementTree zipfile zlib""".split()


def first_paragraph(doc: str) -> str:
    para = inspect.cleandoc(doc).split("\n\n")[0]
    return re.sub(r"\s+", " ", para).strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="examples/stdlib_docs.jsonl")
    args = ap.parse_args()
    seen, rows = set(), []
    for modname in MODULES:
        mod = importlib.import_module(modname)
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            members = [(f"{modname}.{name}", obj)]
            if inspect.isclass(obj):
                members += [(f"{modname}.{name}.{m}", v) for m, v in sorted(vars(obj).items())
                            if not m.startswith("_") and callable(v)]
            for qual, o in members:
                doc = getattr(o, "__doc__", None)
                if not isinstance(doc, str) or qual in seen:
                    continue
                text = first_paragraph(doc)
                if len(text) < 20:
                    continue
                seen.add(qual)
                rows.append({"_id": qual, "title": qual, "text": text[:1000], "module": modname})
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} passages to {args.out}")


if __name__ == "__main__":
    main()
