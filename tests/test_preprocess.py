"""Tests of sscild.data.preprocess and sscild.data.cache: orientation, resampling, body crop, normalisation, restore, cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from sscild.data import cache as cache_mod
from sscild.paths import RunPaths
from sscild.data.cache import build_cache, cache_key, load_cached
from sscild.data.preprocess import PAD_MULTIPLE, denormalise, normalise_hu, preprocess_volume, restore_label
from sscild.profiles import get_profile

try:
    from sscild.data.image import Volume
except ImportError:  # pragma: no cover - image is written alongside this module
    @dataclass
    class Volume:
        array: np.ndarray
        affine: np.ndarray

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-ct"

KEEP = get_profile("smoke").with_overrides(target_spacing=(None, None, None))
_SAVEZ = np.savez


def _phantom(shape=(56, 44, 8), seed=0):
    """Air around a body block (soft tissue with two 'lungs') and a separate thin 'table'."""
    rng = np.random.default_rng(seed)
    a = np.full(shape, -1000, np.int16)
    a[12:40, 5:27, 1:7] = 40
    a[15:24, 8:24, 2:6] = -850
    a[27:37, 8:24, 2:6] = -850
    a[2:54, 40:42, :] = 300  # table, separated from the body by air
    a += rng.integers(-5, 6, size=shape, dtype=np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[15:24, 8:24, 2:6] = 1
    lab[27:37, 8:24, 2:6] = 1
    lab[16:20, 10:16, 3:5] = 2
    lab[30:35, 15:22, 2:5] = 3
    return a, lab


def _flip_permute(array, affine, perm, flips):
    """The same voxels stored with permuted/flipped axes, and the affine that keeps them in place."""
    out = array
    for ax in flips:
        out = np.flip(out, ax)
    out = np.transpose(out, perm)
    # new index m -> old index i: i[perm[j]] = m[j] (then un-flip)
    m = np.zeros((4, 4))
    m[3, 3] = 1
    for j, p in enumerate(perm):
        m[p, j] = 1
    f = np.eye(4)
    for ax in flips:
        f[ax, ax] = -1
        f[ax, 3] = array.shape[ax] - 1
    return np.ascontiguousarray(out), affine @ f @ m


# ------------------------------------------------------------------------------------------------
# normalisation


def test_normalise_fixed_map_monotone_and_clipped():
    prof = get_profile("cpu")  # hu_clip (-1024, 600)
    hu = np.linspace(-3000.0, 3000.0, 2001)
    x = normalise_hu(hu, prof)
    assert x.dtype == np.float32
    assert np.all(np.diff(x) >= 0)
    assert x.min() == -1.0 and x.max() == 1.0
    assert np.all(x[hu <= -1024] == -1.0) and np.all(x[hu >= 600] == 1.0)
    # hand value: water 0 HU -> 2 * 1024 / 1624 - 1
    assert normalise_hu(np.array([0.0]), prof)[0] == pytest.approx(2 * 1024 / 1624 - 1, abs=1e-6)
    inside = np.array([-1024.0, -850.0, -500.0, 0.0, 600.0])
    np.testing.assert_allclose(denormalise(normalise_hu(inside, prof), prof), inside, atol=0.05)
    # the map does not depend on the scan: the same HU give the same value in any array
    assert normalise_hu(np.array([-600.0, 5000.0]), prof)[0] == normalise_hu(np.array([-600.0]), prof)[0]


# ------------------------------------------------------------------------------------------------
# orientation, resampling, crop


@pytest.mark.parametrize("target", [(None, None, None), (1.0, 1.0, None)])
def test_reorientation_gives_the_same_canonical_array(target):
    prof = get_profile("smoke").with_overrides(target_spacing=target)
    a, lab = _phantom()
    ras = np.diag([0.8, 0.8, 2.5, 1.0])
    ras[:3, 3] = [-20.0, 5.0, 100.0]
    ref = preprocess_volume(Volume(a, ras), lab, profile=prof)
    # LPS storage (x and y flipped), and a permuted + flipped storage with a 4 degree oblique tilt
    lps_a, lps_aff = _flip_permute(a, ras, (0, 1, 2), (0, 1))
    assert nib.aff2axcodes(lps_aff) == ("L", "P", "S")
    perm_a, perm_aff = _flip_permute(a, ras, (2, 0, 1), (1,))
    t = np.deg2rad(4.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    perm_lab = _flip_permute(lab, ras, (2, 0, 1), (1,))[0]
    for arr, aff, lb in ((lps_a, lps_aff, _flip_permute(lab, ras, (0, 1, 2), (0, 1))[0]),
                         (perm_a, rot @ perm_aff, perm_lab)):
        pre = preprocess_volume(Volume(arr, aff), lb, profile=prof)
        np.testing.assert_array_equal(pre.image, ref.image)
        np.testing.assert_array_equal(pre.label, ref.label)
        assert pre.spacing == pytest.approx(ref.spacing)
    # the LPS case has exactly the RAS geometry after reorientation
    lps = preprocess_volume(Volume(lps_a, lps_aff), profile=prof)
    np.testing.assert_allclose(lps.affine, ref.affine, atol=1e-9)


def test_resample_spacing_geometry_and_linear_values():
    # HU ramp along x (in mm): linear interpolation reproduces it exactly at every new voxel
    shape, sp = (80, 64, 10), (0.5, 0.5, 2.0)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = [-30.0, 12.0, 7.0]
    i = np.arange(shape[0])[:, None, None]
    ramp = np.broadcast_to((-400.0 + 5.0 * (i * sp[0])), shape).astype(np.float32)
    prof = get_profile("smoke").with_overrides(target_spacing=(1.0, 1.0, None))
    pre = preprocess_volume(Volume(ramp, aff), profile=prof)
    assert pre.spacing == (1.0, 1.0, 2.0)
    assert pre.info["resampled_shape"] == [40, 32, 10]
    np.testing.assert_allclose(np.linalg.norm(pre.affine[:3, :3], axis=0), [1.0, 1.0, 2.0])
    # the field-of-view centre is kept: (n-1)/2 in the old and the new grid map to the same point
    res_centre = (np.array(pre.info["resampled_shape"]) - 1) / 2
    pre_idx = res_centre - np.array(pre.info["crop_lo"]) + np.array(pre.info["pad_lo"])
    old_centre = (np.array(shape) - 1) / 2
    np.testing.assert_allclose(pre.affine[:3, :3] @ pre_idx + pre.affine[:3, 3],
                               aff[:3, :3] @ old_centre + aff[:3, 3], atol=1e-9)
    # values: HU at each voxel of the box equals the ramp at that voxel's world x
    lo, hi, pad = (np.array(pre.info[k]) for k in ("crop_lo", "crop_hi", "pad_lo"))
    inner = pre.image[tuple(slice(p, p + h - l) for p, l, h in zip(pad, lo, hi))]
    px = np.arange(inner.shape[0]) + pad[0]
    world_x = pre.affine[0, 0] * px + pre.affine[0, 3]
    expect = -400.0 + 5.0 * np.clip(world_x - aff[0, 3], 0, (shape[0] - 1) * sp[0])
    np.testing.assert_allclose(denormalise(inner, prof)[:, 5, 5], expect, atol=0.05)
    # z resampling when asked for
    prof_z = get_profile("smoke").with_overrides(target_spacing=(None, None, 4.0))
    pre_z = preprocess_volume(Volume(ramp, aff), profile=prof_z)
    assert pre_z.spacing == (0.5, 0.5, 4.0) and pre_z.info["resampled_shape"] == [80, 64, 5]


def test_body_crop_excludes_air_and_table_and_ignores_label():
    a, lab = _phantom()
    sp = (1.0, 1.0, 2.0)
    aff = np.diag([*sp, 1.0])
    pre = preprocess_volume(Volume(a, aff), lab, profile=KEEP)
    lo, hi = np.array(pre.info["crop_lo"]), np.array(pre.info["crop_hi"])
    # body occupies x 12..39, y 5..26, z 1..6; margin 5 mm plus at most one sampling step (4 mm)
    body_lo, body_hi = np.array([12, 5, 1]), np.array([40, 27, 7])
    assert np.all(lo <= body_lo) and np.all(hi >= body_hi)
    slack = np.ceil(5.0 / np.array(sp)) + np.maximum(1, 4.0 // np.array(sp))
    assert np.all(body_lo - lo <= slack) and np.all(np.minimum(hi, a.shape) - body_hi <= slack)
    assert hi[1] <= 40  # the table (y 40..41) is not in the box
    assert lo[0] > 0 and hi[0] < a.shape[0]  # air on both sides of x is cut
    # in-plane size padded with air to a multiple of 16; z not padded
    assert pre.image.shape[0] % PAD_MULTIPLE == 0 and pre.image.shape[1] % PAD_MULTIPLE == 0
    assert pre.image.shape[2] == hi[2] - lo[2]
    pad = np.array(pre.info["pad_lo"])
    assert pre.image[: pad[0]].size == 0 or np.all(pre.image[: pad[0]] == -1.0)
    assert np.all(pre.image[pad[0] + hi[0] - lo[0]:] == -1.0)
    # the label plays no part in the crop: no label, an empty one or a full one give the same result
    for other in (None, np.zeros_like(lab), np.full_like(lab, 3)):
        alt = preprocess_volume(Volume(a, aff), other, profile=KEEP)
        assert alt.info["crop_lo"] == pre.info["crop_lo"] and alt.info["crop_hi"] == pre.info["crop_hi"]
        np.testing.assert_array_equal(alt.image, pre.image)


def test_all_air_scan_is_kept_whole():
    a = np.full((20, 20, 3), -1000, np.int16)
    pre = preprocess_volume(Volume(a, np.eye(4)), profile=KEEP)
    assert pre.info["body_found"] is False
    assert pre.info["crop_lo"] == [0, 0, 0] and pre.info["crop_hi"] == [20, 20, 3]
    assert pre.image.shape == (32, 32, 3)


# ------------------------------------------------------------------------------------------------
# restore_label


def test_restore_label_identity_without_resampling():
    a, lab = _phantom()
    ras = np.diag([0.8, 0.8, 2.5, 1.0])
    arr, aff = _flip_permute(a, ras, (1, 2, 0), (0, 2))
    lb = _flip_permute(lab, ras, (1, 2, 0), (0, 2))[0]
    pre = preprocess_volume(Volume(arr, aff), lb, profile=KEEP)
    back = restore_label(pre.label, pre.info)
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, lb)
    # a prediction on the padding / outside the body box maps to nothing
    noisy = pre.label.copy()
    noisy[:2] = 3
    noisy[-2:] = 3
    np.testing.assert_array_equal(restore_label(noisy, pre.info)[lb > 0], lb[lb > 0])


def test_restore_label_after_real_resampling_differs_only_at_boundaries():
    # 0.6 mm in-plane -> 0.7 mm and back, LPS storage
    big = np.zeros((70, 60, 8), np.uint8)
    big[10:40, 12:50, 2:6] = 1
    big[15:25, 20:35, 3:5] = 2
    big[45:60, 12:50, 2:6] = 3
    img = np.full(big.shape, -1000, np.int16)
    img[5:65, 8:55, 1:7] = 30
    aff = np.diag([-0.6, -0.6, 5.0, 1.0])
    prof = get_profile("paper")  # target (0.7, 0.7, None)
    pre = preprocess_volume(Volume(img, aff), big, profile=prof)
    assert pre.spacing == (0.7, 0.7, 5.0)
    back = restore_label(pre.label, pre.info)
    assert back.shape == big.shape and back.dtype == np.uint8
    wrong = back != big
    assert wrong.mean() < 0.03
    # every disagreement lies within one voxel of a class boundary
    edge = np.zeros_like(wrong)
    for ax in (0, 1):
        d = np.diff(big.astype(int), axis=ax) != 0
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[ax], sl_b[ax] = slice(None, -1), slice(1, None)
        edge[tuple(sl_a)] |= d
        edge[tuple(sl_b)] |= d
    assert not np.any(wrong & ~ndi.binary_dilation(edge, np.ones((3, 3, 1), bool)))
    with pytest.raises(ValueError, match="preprocessed grid"):
        restore_label(pre.label[:-1], pre.info)


def test_input_errors_name_the_case():
    a, lab = _phantom()
    with pytest.raises(ValueError, match="case_007.*label shape"):
        preprocess_volume(Volume(a, np.eye(4)), lab[:-1], profile=KEEP, case_id="case_007")
    flat = type("Flat", (), {"array": a[..., 0], "affine": np.eye(4)})()  # Volume itself refuses 2D
    with pytest.raises(ValueError, match="case_007.*3D"):
        preprocess_volume(flat, profile=KEEP, case_id="case_007")
    singular = type("Singular", (), {"array": a, "affine": np.diag([1.0, 0.0, 1.0, 1.0])})()
    with pytest.raises(ValueError, match="case_007.*affine"):
        preprocess_volume(singular, profile=KEEP, case_id="case_007")


@pytest.mark.skipif(not (REAL_CT / "chest-ct-1.nrrd").exists(),
                    reason="real CT samples (../shared/data/real-ct) are not present in this checkout")
def test_real_chest_ct():
    from sscild.data.image import load_volume

    vol = load_volume(REAL_CT / "chest-ct-1.nrrd")  # 512 x 512 x 48, 0.57 mm, LPS
    mask = (np.asarray(vol.array) < -400).astype(np.uint8)  # lungs + outside air
    pre = preprocess_volume(vol, mask, profile=get_profile("paper"))
    assert pre.spacing == (0.7, 0.7, 5.0)
    assert pre.image.shape[0] % 16 == 0 and pre.image.shape[1] % 16 == 0
    assert pre.info["body_found"]
    # the box is smaller than the field of view (air below the patient is cut) yet keeps the lungs
    res = np.array(pre.info["resampled_shape"])
    box = np.array(pre.info["crop_hi"]) - np.array(pre.info["crop_lo"])
    assert box[1] < 0.9 * res[1]
    back = restore_label(pre.label, pre.info)
    assert back.shape == vol.shape
    lungs = ndi.binary_erosion(mask.astype(bool) & (ndi.label(mask)[0] != ndi.label(mask)[0][0, 0, 0]),
                               iterations=2)
    assert back[lungs].mean() > 0.99  # inside the body, the round trip keeps the lung mask


# ------------------------------------------------------------------------------------------------
# cache


@dataclass
class _Case:
    case_id: str
    image: Path
    label: Path | None


def _write_cohort(root: Path, n=3):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    cases = []
    for i in range(n):
        a, lab = _phantom(seed=i)
        aff = np.diag([1.0, 1.0, 2.0, 1.0])
        img_p = root / "imagesTr" / f"c{i}_0000.nii.gz"
        lab_p = root / "labelsTr" / f"c{i}.nii.gz"
        nib.save(nib.Nifti1Image(a, aff), img_p)
        nib.save(nib.Nifti1Image(lab, aff), lab_p)
        cases.append(_Case(f"c{i}", img_p, lab_p))
    return type("Cohort", (), {"root": root, "name": root.name, "cases": cases})()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    cohort = _write_cohort(tmp_path / "toy")
    calls = []
    monkeypatch.setattr(cache_mod, "read_case", _reader_for(calls))
    run = RunPaths(results=tmp_path / "results", cohort="toy", profile="smoke")
    return cohort, run, calls


def _mtimes(folder: Path):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_cache_reuse_and_exact_invalidation(toy):
    cohort, run, calls = toy
    prof = KEEP
    table = build_cache(cohort, run, prof, progress=False)
    assert calls == ["c0", "c1", "c2"] and not table["reused"].any()
    # hand-computed statistics on the original grid (voxel 1 x 1 x 2 mm = 0.002 mL)
    # the two lung blocks; the EF and GGO blocks lie inside them
    n_ef, n_ggo = 4 * 6 * 2, 5 * 7 * 3
    lung = (9 * 16 * 4) + (10 * 16 * 4)
    row = table.set_index("case_id").loc["c0"]
    assert row["n_ef"] == n_ef and row["n_ggo"] == n_ggo and row["n_normal"] == lung - n_ef - n_ggo
    assert row["lung_ml"] == pytest.approx(lung * 0.002)
    assert row["lesion_pct"] == pytest.approx(100.0 * (n_ef + n_ggo) / lung)
    before = _mtimes(run.cache)
    assert sorted(before) == ["c0.json", "c0.npz", "c1.json", "c1.npz", "c2.json", "c2.npz"]

    calls.clear()
    again = build_cache(cohort, run, prof, progress=False)
    assert calls == [] and again["reused"].all()
    assert _mtimes(run.cache) == before
    assert again.drop(columns="reused").equals(table.drop(columns="reused"))

    # an input file's bytes change: exactly that case is rebuilt
    a, lab = _phantom(seed=1)
    lab[lab == 3] = 2
    nib.save(nib.Nifti1Image(lab, np.diag([1.0, 1.0, 2.0, 1.0])), cohort.cases[1].label)
    calls.clear()
    t3 = build_cache(cohort, run, prof, progress=False)
    assert calls == ["c1"]
    assert list(t3["reused"]) == [True, False, True]
    assert t3.set_index("case_id").loc["c1", "n_ggo"] == 0
    after = _mtimes(run.cache)
    assert after["c0.npz"] == before["c0.npz"] and after["c1.npz"] != before["c1.npz"]

    # a preprocessing setting changes: every case is rebuilt
    calls.clear()
    build_cache(cohort, run, prof.with_overrides(hu_clip=(-1000.0, 400.0)), progress=False)
    assert calls == ["c0", "c1", "c2"]
    # a profile setting that preprocessing does not use keeps the cache
    calls.clear()
    build_cache(cohort, run, prof.with_overrides(hu_clip=(-1000.0, 400.0), iterations=7), progress=False)
    assert calls == []


def test_cache_subset_and_stale_entries(toy):
    cohort, run, calls = toy
    t = build_cache(cohort, run, KEEP, cases=["c2", "c0"], progress=False)
    assert sorted(calls) == ["c0", "c2"] and list(t["case_id"]) == ["c0", "c2"]
    with pytest.raises(ValueError, match="not in cohort.*c9"):
        build_cache(cohort, run, KEEP, cases=["c9"], progress=False)
    # a case that left the cohort keeps its files but is not reported
    cohort.cases = cohort.cases[1:]
    t = build_cache(cohort, run, KEEP, progress=False)
    assert list(t["case_id"]) == ["c1", "c2"]
    assert (run.cache / "c0.json").exists()


def test_interrupted_write_leaves_no_json(toy, monkeypatch):
    cohort, run, calls = toy

    def broken_savez(file, **arrays):
        Path(file).write_bytes(b"PK\x03\x04 half written")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(cache_mod.np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cohort, run, KEEP, progress=False)
    assert sorted(p.name for p in run.cache.iterdir()) == []  # no json, no npz, no temporary file
    monkeypatch.setattr(cache_mod.np, "savez", _SAVEZ)
    build_cache(cohort, run, KEEP, progress=False)
    # an interruption while rebuilding a stale case removes its old json first
    nib.save(nib.Nifti1Image(np.zeros((56, 44, 8), np.uint8), np.diag([1.0, 1.0, 2.0, 1.0])), cohort.cases[0].label)
    monkeypatch.setattr(cache_mod.np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cohort, run, KEEP, progress=False)
    assert not (run.cache / "c0.json").exists()
    assert (run.cache / "c1.json").exists()
    assert not [p for p in run.cache.iterdir() if ".tmp" in p.name]


def _reader_for(calls):
    """Stands in for sscild.data.cohort.read_case on the toy cohort, recording which cases are read."""

    def reader(coh, case_id):
        calls.append(case_id)
        case = next(c for c in coh.cases if c.case_id == case_id)
        img = nib.load(case.image)
        return Volume(np.asarray(img.dataobj), img.affine), np.asarray(nib.load(case.label).dataobj)
    return reader


def test_load_cached_matches_and_is_memory_mapped(toy):
    cohort, run, _ = toy
    build_cache(cohort, run, KEEP, progress=False)
    a, lab = _phantom(seed=2)
    fresh = preprocess_volume(Volume(a, np.diag([1.0, 1.0, 2.0, 1.0])), lab, profile=KEEP, case_id="c2")
    got = load_cached(run, "c2")
    assert isinstance(got.image, np.memmap) and isinstance(got.label, np.memmap)
    assert got.image.dtype == np.float32 and got.label.dtype == np.uint8
    np.testing.assert_array_equal(got.image, fresh.image)
    np.testing.assert_array_equal(got.label, fresh.label)
    assert got.spacing == fresh.spacing
    np.testing.assert_allclose(got.affine, fresh.affine)
    np.testing.assert_array_equal(restore_label(got.label, got.info), lab)
    inmem = load_cached(run, "c2", mmap=False)
    assert not isinstance(inmem.image, np.memmap)
    np.testing.assert_array_equal(inmem.image, fresh.image)
    meta = json.loads((run.cache / "c2.json").read_text())
    assert meta["key"] == cache_key(cohort.cases[2].image, cohort.cases[2].label, KEEP)
    with pytest.raises(FileNotFoundError, match="c7.*make data"):
        load_cached(run, "c7")


def test_cache_key_depends_on_bytes_and_settings(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 3_000_000)
    assert cache_key(a, None, KEEP) == cache_key(b, None, KEEP)
    b.write_bytes(b"x" * 2_999_999 + b"y")
    assert cache_key(a, None, KEEP) != cache_key(b, None, KEEP)
    assert cache_key(a, None, KEEP) != cache_key(a, a, KEEP)
    assert cache_key(a, None, KEEP) != cache_key(a, None, KEEP.with_overrides(target_spacing=(1.0, 1.0, None)))
    assert cache_key(a, None, KEEP) != cache_key(a, None, KEEP, extra={"3": 2})


def test_build_cache_reads_a_cohort_folder(tmp_path):
    """The real reader (sscild.data.cohort.read_case) on a tiny cohort folder: labels mapped, files cached."""
    from cohort_factory import make_tiny_cohort

    from sscild.data.cohort import load_cohort, read_case

    cohort = load_cohort(make_tiny_cohort(tmp_path / "tiny", n=2))
    run = RunPaths(results=tmp_path / "results", cohort="tiny", profile="smoke")
    table = build_cache(cohort, run, get_profile("smoke"), progress=False)
    assert list(table["case_id"]) == cohort.case_ids and not table["reused"].any()
    for cid in cohort.case_ids:
        vol, lab = read_case(cohort, cid)
        got = load_cached(run, cid)
        counts = np.bincount(lab.ravel(), minlength=4)
        row = table.set_index("case_id").loc[cid]
        assert [row[f"n_{k}"] for k in ("background", "normal", "ef", "ggo")] == counts.tolist()
        assert got.image.shape[0] % PAD_MULTIPLE == 0 and got.label.max() <= 3
        assert restore_label(got.label, got.info).shape == vol.shape
    assert build_cache(cohort, run, get_profile("smoke"), progress=False)["reused"].all()
