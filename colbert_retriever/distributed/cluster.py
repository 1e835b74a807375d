"""Ray, imported only here and only when a sharded index is built or opened (extra ``[distributed]``), and its
failures turned into the library's errors: a shard that cannot answer is named (``ShardError``), a mistake in the
caller's arguments found by a shard is raised as the shard raised it."""

from __future__ import annotations

import os

from ..errors import ColbertRetrieverError, IndexLockedError, InvalidArgument, InvalidType


class ShardError(ColbertRetrieverError, RuntimeError):
    """A shard could not be built, searched or written (its name is in the message)."""


def ray_module():
    """The ``ray`` module, connected to a cluster: the caller's (``ray.init`` before), the one ``RAY_ADDRESS``
    names, else a new local one (never a cluster some other process left running on this machine)."""
    try:
        import ray
    except ImportError:
        raise ImportError("sharded indexes need Ray: pip install 'colbert-retriever[distributed]'") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", ignore_reinit_error=True, include_dashboard=False,
                 log_to_driver=False)
    return ray


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


def user_error(e: BaseException):
    """The library error (or missing file) somewhere in the chain of a Ray failure, if one caused it: raised in
    a Ray Data task or an actor, it is raised to the caller as it was."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, (ColbertRetrieverError, FileNotFoundError)) and x is not e:
            return x
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def translate(e: BaseException, what: str) -> BaseException:
    """The error to raise for a Ray failure of ``what`` (e.g. "shard shard-00001"): the caller's mistake as the
    shard raised it; anything else as a ``ShardError`` naming ``what``."""
    import ray

    if isinstance(e, ray.exceptions.RayTaskError):
        cause = getattr(e, "cause", None)
        if isinstance(cause, (InvalidArgument, InvalidType, IndexLockedError)):
            return cause
        if cause is not None:
            return ShardError(f"{what} failed: {type(cause).__name__}: {_first_line(cause)}")
    if isinstance(e, ray.exceptions.GetTimeoutError):
        return ShardError(f"{what} did not answer in time ({_first_line(e)})")
    if isinstance(e, ray.exceptions.RayActorError):
        return ShardError(f"{what} is unavailable: its actor died and could not be restarted "
                          f"({_first_line(e)})")
    return ShardError(f"{what} failed: {type(e).__name__}: {_first_line(e)}")
