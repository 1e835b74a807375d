"""Ray worker setup hook for tests: once armed (a file ``armed`` in the folder, listing what to kill), the first
matching event of each kind in any Ray worker kills its process, as a crash would: "replace" — an index write
(an ``os.replace``, the standard library's, of any worker); "encode" — an encoder worker parsing a batch's
metadata (``json.loads`` called from ``chunks.encode``). Later events run normally; ``died-<kind>`` records each
death. The hook wraps standard library functions, never the library under test."""

import json
import os
import sys


def installer(folder: str):
    def install():
        def dies(kind: str) -> bool:
            try:
                with open(os.path.join(folder, "armed")) as f:
                    if kind not in f.read().split():
                        return False
                fd = os.open(os.path.join(folder, f"died-{kind}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except OSError:
                return False
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            return True

        replace, loads = os.replace, json.loads

        def replace_once(src, dst, *args, **kwargs):
            if dies("replace"):
                os._exit(1)
            return replace(src, dst, *args, **kwargs)

        def loads_once(*args, **kwargs):
            callers = [sys._getframe(1), sys._getframe(1).f_back]
            if any(c is not None and c.f_code.co_name == "encode" and c.f_globals.get("__name__", "").endswith(
                    ".chunks") for c in callers) and dies("encode"):
                os._exit(1)
            return loads(*args, **kwargs)

        os.replace = replace_once
        json.loads = loads_once

    return install
