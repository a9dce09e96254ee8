"""Tests of sscild.data.folds: patient-wise, extent-stratified K-fold splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sscild.data.folds import fold_of, make_splits, read_splits, validate_splits, write_splits


def _ids(n):
    return [f"case_{i:03d}" for i in range(n)]


def _check_partition(splits, ids, k):
    assert len(splits) == k
    seen = [c for f in splits for c in f["val"]]
    assert sorted(seen) == sorted(ids)  # every case in exactly one val fold
    for f in splits:
        assert not set(f["train"]) & set(f["val"])  # patient-wise: never on both sides
        assert sorted(f["train"] + f["val"]) == sorted(ids)
        assert f["train"] == sorted(f["train"]) and f["val"] == sorted(f["val"])
    sizes = [len(f["val"]) for f in splits]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,k", [(40, 8), (41, 8), (10, 3), (5, 5), (2, 2)])
def test_partition_with_and_without_strata(n, k):
    ids = _ids(n)
    _check_partition(make_splits(ids, k=k, seed=1), ids, k)
    strata = {c: float(i % 7) for i, c in enumerate(ids)}
    _check_partition(make_splits(ids, strata=strata, k=k, seed=1), ids, k)


def test_leave_one_out_when_k_equals_n():
    ids = _ids(6)
    splits = make_splits(ids, k=6, seed=0)
    assert sorted(len(f["val"]) for f in splits) == [1] * 6
    assert all(len(f["train"]) == 5 for f in splits)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    ids = _ids(40)
    strata = {c: float(v) for c, v in zip(ids, np.random.default_rng(3).gamma(1.5, 8.0, 40))}
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    write_splits(a, make_splits(ids, strata=strata, k=8, seed=0))
    # same inputs in another order and another dict order: same file
    write_splits(b, make_splits(ids[::-1], strata=dict(reversed(list(strata.items()))), k=8, seed=0))
    write_splits(c, make_splits(ids, strata=strata, k=8, seed=1))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert fold_of(read_splits(a)) != fold_of(read_splits(c))


@pytest.mark.parametrize("n,k", [(40, 8), (24, 8), (27, 8), (43, 8), (9, 3)])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_strata_balanced_across_folds(n, k, seed):
    ids = _ids(n)
    # a skewed extent distribution (most mild, a few severe), in scrambled order
    values = np.random.default_rng(100 + seed).gamma(0.8, 10.0, n)
    strata = dict(zip(ids, values))
    splits = make_splits(ids, strata=strata, k=k, seed=seed)
    _check_partition(splits, ids, k)
    ranked = sorted(ids, key=lambda c: strata[c])
    bottom, top = set(ranked[: n // 3]), set(ranked[n - n // 3:])
    lowest_k, highest_k = set(ranked[:k]), set(ranked[-k:])
    for f in splits:
        val = set(f["val"])
        assert val & bottom and val & top  # each fold spans mild and severe disease
        assert len(val & lowest_k) == 1 and len(val & highest_k) == 1


def test_stratification_beats_chance_on_fold_means():
    # with strata the folds' mean extents are much closer to each other than the raw spread
    ids = _ids(40)
    strata = dict(zip(ids, np.linspace(0.0, 78.0, 40)))
    splits = make_splits(ids, strata=strata, k=8, seed=0)
    means = [np.mean([strata[c] for c in f["val"]]) for f in splits]
    # each fold holds one case per group of 8 consecutive ranks (values 2.0 apart), so the fold
    # means can differ by at most the width of one group: 7 steps of 2.0 = 14.0 (random: up to ~40)
    assert max(means) - min(means) <= 14.0 + 1e-9


def test_fold_of_hand_case():
    splits = [{"train": ["b", "c"], "val": ["a"]}, {"train": ["a"], "val": ["b", "c"]}]
    assert fold_of(splits) == {"a": 0, "b": 1, "c": 1}


def test_write_read_round_trip_shape_and_sorting(tmp_path):
    path = tmp_path / "sub" / "splits.json"
    splits = [{"train": ["d", "c"], "val": ["b", "a"]}, {"train": ["b", "a"], "val": ["d", "c"]}]
    write_splits(path, splits)
    data = json.loads(path.read_text())
    assert data == [{"train": ["c", "d"], "val": ["a", "b"]}, {"train": ["a", "b"], "val": ["c", "d"]}]
    assert read_splits(path) == data
    assert read_splits(path, case_ids=["a", "b", "c", "d"]) == data
    with pytest.raises(ValueError, match="only in the cohort"):
        read_splits(path, case_ids=["a", "b", "c", "d", "e"])
    assert not list(path.parent.glob("*.tmp*"))  # atomic write leaves no temporary file


def test_invalid_splits_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="both train and val"):
        validate_splits([{"train": ["a", "b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}])
    with pytest.raises(ValueError, match="held out by folds 0 and 1"):
        validate_splits([{"train": ["b"], "val": ["a"]}, {"train": ["b"], "val": ["a"]}])
    with pytest.raises(ValueError, match="does not cover"):
        validate_splits([{"train": [], "val": ["a"]}, {"train": ["a"], "val": ["b"]}])
    bad = tmp_path / "splits.json"
    bad.write_text('[{"train": ["a"], "val": ["a"]}]')
    with pytest.raises(ValueError, match=str(bad)):
        read_splits(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_splits(bad)
    with pytest.raises(FileNotFoundError, match="make data"):
        read_splits(tmp_path / "missing.json")


def test_argument_errors():
    with pytest.raises(ValueError, match="need at least 8 cases"):
        make_splits(_ids(5), k=8)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        make_splits(_ids(5), k=1)
    with pytest.raises(ValueError, match="duplicate case ids"):
        make_splits(["a", "b", "a"], k=2)
    with pytest.raises(ValueError, match="no value for cases"):
        make_splits(_ids(4), strata={"case_000": 1.0}, k=2)
    with pytest.raises(ValueError, match="NaN"):
        make_splits(_ids(4), strata={c: (float("nan") if i == 2 else 1.0) for i, c in enumerate(_ids(4))}, k=2)
    with pytest.raises(ValueError, match="non-empty strings"):
        make_splits(["a", 3], k=2)
