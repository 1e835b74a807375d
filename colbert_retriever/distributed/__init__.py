"""Beyond one machine, on Ray (extra ``[distributed]``): a sharded index built by streaming a dataset through Ray
Data (``build_sharded``) and used through the ``Index`` surface with one Ray actor per shard (``ShardedIndex``).

Rooms: ``routing`` (which shard holds an id), ``manifest`` (the folder and its commit point), ``source`` and
``chunks`` (what the build reads and what the encoders send the shards), ``shard`` (one shard's actor),
``local`` (one index's part of a search), ``modes`` (the merges), ``cluster`` (Ray and its errors), ``build``,
``sharded``. Floor 9: may import ``index`` and everything below it; imports Ray only when a sharded index is
built or opened, and nothing below imports this package (single-machine users never import Ray).
"""

from .build import build_sharded
from .cluster import ShardError
from .sharded import ShardedIndex

__all__ = ["ShardedIndex", "build_sharded", "ShardError"]
