"""Routing by id is part of the folder format: the same id goes to the same shard in every process and release."""

from colbert_retriever.distributed.routing import ROUTING, shard_name, shard_of, split


def test_stable_values():
    # fixed here: a change would send later writes of existing ids to other shards (duplicates)
    assert ROUTING == "blake2b-64"
    assert [shard_of(x, 7) for x in ["d0", "d1", "doc-42", "é", ""]] == VALUES
    assert shard_of("d0", 1) == 0 and shard_name(12) == "shard-00012"


def test_split_keeps_order_and_covers_every_id():
    ids = [f"id{i}" for i in range(100)]
    groups = split(ids, 4)
    assert sorted(p for pos in groups.values() for p in pos) == list(range(100))
    assert all(pos == sorted(pos) and all(shard_of(ids[p], 4) == s for p in pos) for s, pos in groups.items())
    assert len(groups) == 4  # 100 ids reach every shard


VALUES = [3, 2, 5, 2, 0]
