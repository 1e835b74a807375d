"""Starting and stopping the server: Ray Serve's HTTP proxy on ``host:port`` (127.0.0.1 by default) in front of
``replicas`` replicas of the index's deployment (``app.IndexServer``)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional, Union

from .. import _validate
from ..errors import InvalidArgument

APP_NAME = "colbert-retriever"


def start(path: Union[str, Path], *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
          max_batch_size: int = 32, batch_wait_ms: float = 5.0, threads: Optional[int] = None,
          model: Optional[str] = None, name: str = APP_NAME) -> str:
    """Serve the index (or sharded index) at ``path`` over HTTP on Ray Serve (on the cluster ``ray.init``
    connected to, else a local one) and return its URL once the replicas are ready. max_batch_size: searches
    encoded in one forward pass (1: no batching); batch_wait_ms: how long a batch waits to fill; threads: each
    replica's search threads; model: the query encoder (default the index's). Stop with ``stop``."""
    from ..distributed.cluster import ray_module

    path = _validate.path_arg(path)
    if not path.is_dir():
        raise InvalidArgument(f"no index folder at {path}")
    from ..distributed import manifest as mf
    from ..store import storage

    mf.read(path) if (path / mf.MANIFEST).exists() else storage.read_metadata(path)  # a clear error before Ray
    port = _validate.positive_int(port, "port")
    replicas = _validate.positive_int(replicas, "replicas")
    max_batch_size = _validate.positive_int(max_batch_size, "max_batch_size")
    if _validate.number(batch_wait_ms, "batch_wait_ms") < 0:
        raise InvalidArgument(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
    ray_module()
    from ray import serve

    from .app import application

    serve.start(http_options={"host": host, "port": port})
    serve.run(application(path, replicas=replicas, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                          threads=threads, model=model), name=name, route_prefix="/")
    return f"http://{host}:{port}"


def stop(name: Optional[str] = APP_NAME) -> None:
    """Remove the application ``name`` (None: shut Serve down, proxy included)."""
    from ray import serve

    if name is None:
        serve.shutdown()
    else:
        serve.delete(name)


def run_forever(path: Union[str, Path], **kwargs) -> None:
    """``start``, print the URL, serve until SIGINT or SIGTERM, then shut Serve down (the CLI's ``serve``)."""
    import json

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    url = start(path, **kwargs)
    print(json.dumps({"url": url, "openapi": f"{url}/openapi.json", "index": str(path)}), flush=True)
    try:
        done.wait()
    finally:
        stop(None)
