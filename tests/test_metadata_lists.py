"""List-valued metadata fields match element-wise (the rule of ``store.filters``); scalar fields, missing fields and
nested objects keep their meaning."""

import pytest

from colbert_retriever import Index, InvalidType

METAS = [{"tags": ["a", "b"], "n": [1, 5]}, {"tags": ["c"], "n": 3}, {"tags": "a", "n": [10]}, {"other": 1},
         {"tags": {"a": 1}, "n": None}]


@pytest.fixture(scope="module")
def index(tmp_path_factory, _tiny_model):
    path = tmp_path_factory.mktemp("lists") / "idx"
    return Index.build(path, [f"document number {i} about rivers" for i in range(len(METAS))],
                       ids=[f"d{i}" for i in range(len(METAS))], metadatas=METAS, model=_tiny_model)


@pytest.mark.parametrize("flt,expected", [
    ({"tags": "a"}, ["d0", "d2"]),  # a list holding "a", or the scalar "a"; an object's keys are not elements
    ({"tags": {"$contains": "a"}}, ["d0"]),  # lists only
    ({"tags": {"$in": ["b", "c"]}}, ["d0", "d1"]),
    ({"tags": {"$ne": "a"}}, ["d1", "d3", "d4"]),  # no element is "a" (a missing field satisfies $ne)
    ({"tags": {"$nin": ["a", "c"]}}, ["d3", "d4"]),
    ({"n": {"$gt": 4}}, ["d0", "d2"]),  # some element > 4
    ({"n": {"$lte": 1}}, ["d0"]),
    ({"n": None}, ["d3", "d4"]),  # missing or null, as before
    ({"tags": {"$exists": False}}, ["d3"]),
    ({"$and": [{"tags": {"$contains": "a"}}, {"tags": {"$contains": "b"}}]}, ["d0"]),
])
def test_list_fields_match_element_wise(index, flt, expected):
    assert sorted(index.ids(filter=flt)) == expected
    assert sorted(h.id for h in index.search("rivers", k=10, filter=flt)) == expected


def test_contains_takes_a_scalar(index):
    with pytest.raises(InvalidType, match=r"\$contains takes a scalar"):
        index.ids(filter={"tags": {"$contains": ["a"]}})
    with pytest.raises(InvalidType, match=r"\$contains takes a str"):
        index.ids(filter={"tags": {"$contains": None}})
