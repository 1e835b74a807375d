"""Ray worker setup hook for tests: the first index write (an ``os.replace`` of a file of ours) run by any worker
kills its process. The hook wraps the standard library's ``os.replace``, never the library under test."""

import os


def installer(marker: str):
    def install():
        original = os.replace

        def replace(src, dst, *args, **kwargs):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only the first write anywhere dies
            except FileExistsError:
                return original(src, dst, *args, **kwargs)
            os.close(fd)
            os._exit(1)

        os.replace = replace

    return install
