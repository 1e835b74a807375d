"""Beyond one machine, on Ray (extra ``[distributed]``): a sharded index built and searched by Ray actors.

Floor 9: may import ``index`` and everything below it; never imported by the rest of the package (single-machine
users never import Ray).
"""

from .sharded import ShardedIndex, build_sharded

__all__ = ["ShardedIndex", "build_sharded"]
