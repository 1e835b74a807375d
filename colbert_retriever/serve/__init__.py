"""Serving an index over HTTP with Ray Serve (extra ``[serve]``), and its client.

Rooms: ``client`` (``RemoteIndex``: the ``Index`` surface over HTTP, standard library only), ``backend`` (what a
replica holds: an ``Index`` or a ``ShardedIndex``, and the batched search), ``app`` (the FastAPI routes and the Ray
Serve deployment), ``server`` (``start``/``stop``, and the CLI's ``serve``). Floor 9: may import ``index`` and
everything below it, and ``distributed`` (a door: a sharded index is served through it); Ray, Serve and FastAPI
are imported by ``app`` and ``server`` only, never by importing this package or the client.
"""

from .client import RemoteIndex, ServerError, is_index, is_url, open_index

__all__ = ["RemoteIndex", "ServerError", "is_index", "is_url", "open_index", "start", "stop"]


def start(path, **kwargs) -> str:
    """See ``server.start``."""
    from .server import start as _start

    return _start(path, **kwargs)


def stop(name="colbert-retriever") -> None:
    """See ``server.stop``."""
    from .server import stop as _stop

    _stop(name)
