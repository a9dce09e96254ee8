"""sscild.data.image and sscild.data.nifti_writer: reading / writing volumes with geometry (NIfTI, NRRD, MHA, DICOM)."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from cohort_factory import make_dicom_series
from sscild.errors import InputError
from sscild.data.image import Volume, load_header, load_volume, load_with_sitk
from sscild.data.nifti_writer import save_volume

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-ct"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real CT samples not present ({REAL}); "
                                "they are a development-only folder, absent from a fresh clone")

# An oblique-free but non-trivial orientation: x flipped, y and z swapped, translated.
ODD_AFFINE = np.array([
    [-0.8, 0.0, 0.0, 90.0],
    [0.0, 0.0, 2.5, -120.0],
    [0.0, 0.7, 0.0, 35.0],
    [0.0, 0.0, 0.0, 1.0],
])


def _ramp(shape=(5, 4, 3), dtype=np.int16):
    return (np.arange(np.prod(shape)).reshape(shape) * 7 - 1000).astype(dtype)


def test_volume_spacing_and_shape():
    v = Volume(np.zeros((2, 3, 4), np.int16), ODD_AFFINE)
    assert v.shape == (2, 3, 4)
    assert v.spacing == pytest.approx((0.8, 0.7, 2.5))
    with pytest.raises(ValueError, match="4x4"):
        Volume(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((2, 2)), np.eye(4))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_save_load_roundtrip(tmp_path, suffix, dtype):
    arr = _ramp(dtype=np.int64)
    arr = (arr - arr.min()).astype(dtype) if dtype == np.uint8 else arr.astype(dtype)
    path = save_volume(tmp_path / f"v{suffix}", arr, ODD_AFFINE)
    assert path == tmp_path / f"v{suffix}"
    v = load_volume(path)
    assert v.array.dtype == dtype
    np.testing.assert_array_equal(v.array, arr)
    np.testing.assert_allclose(v.affine, ODD_AFFINE, atol=1e-5)
    assert v.spacing == pytest.approx((0.8, 0.7, 2.5), abs=1e-6)
    h = load_header(path)
    assert h.shape == (5, 4, 3) and h.dtype == dtype and not h.scaled
    np.testing.assert_allclose(h.affine, ODD_AFFINE, atol=1e-5)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_save_is_deterministic_and_has_no_timestamp(tmp_path):
    arr = _ramp()
    a = save_volume(tmp_path / "a.nii.gz", arr, ODD_AFFINE).read_bytes()
    b = save_volume(tmp_path / "sub" / "b.nii.gz", arr, ODD_AFFINE).read_bytes()
    assert a == b
    assert a[:2] == b"\x1f\x8b"
    assert a[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field is zero
    assert not a[3] & 0x08  # no FNAME field (the temporary name must not leak into the bytes)
    raw = gzip.decompress(a)
    assert b".tmp" not in raw and b"a.nii" not in raw
    # a different array gives different bytes (the test above can fail)
    c = save_volume(tmp_path / "c.nii.gz", arr + 1, ODD_AFFINE).read_bytes()
    assert c != a


def test_save_validates_and_is_atomic(tmp_path):
    target = save_volume(tmp_path / "keep.nii.gz", _ramp(), np.eye(4))
    before = target.read_bytes()
    with pytest.raises(ValueError, match="do not fit"):
        save_volume(target, np.array([[[300, 1]]]), np.eye(4), dtype=np.uint8)
    with pytest.raises(ValueError, match="NIfTI"):
        save_volume(tmp_path / "x.nrrd", _ramp(), np.eye(4))
    with pytest.raises(ValueError, match="3D"):
        save_volume(tmp_path / "x.nii.gz", np.zeros((2, 2)), np.eye(4))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nii.gz"]
    # bool and int64 are stored as NIfTI-friendly types
    assert load_volume(save_volume(tmp_path / "m.nii.gz", np.ones((2, 2, 2), bool), np.eye(4))).array.dtype == np.uint8
    assert load_volume(save_volume(tmp_path / "i.nii.gz", np.full((2, 2, 2), -5, np.int64), np.eye(4))).array.dtype == np.int16


def test_sitk_reader_matches_nibabel_on_same_nifti(tmp_path):
    """The LPS->RAS conversion: SimpleITK's view of a NIfTI must equal nibabel's."""
    arr = _ramp()
    path = tmp_path / "odd.nii.gz"
    img = nib.Nifti1Image(arr, ODD_AFFINE)
    img.set_qform(ODD_AFFINE, code=1)
    img.set_sform(ODD_AFFINE, code=1)
    nib.save(img, str(path))
    by_nib = load_volume(path)
    by_sitk = load_with_sitk(path)
    np.testing.assert_array_equal(by_sitk.array, by_nib.array)
    np.testing.assert_allclose(by_sitk.affine, by_nib.affine, atol=1e-4)
    # and a file converted to NRRD / MHA by SimpleITK reads back with the same geometry
    image = sitk.ReadImage(str(path))
    for suffix in (".nrrd", ".mha"):
        sitk.WriteImage(image, str(tmp_path / f"odd{suffix}"))
        v = load_volume(tmp_path / f"odd{suffix}")
        np.testing.assert_array_equal(v.array, arr)
        np.testing.assert_allclose(v.affine, ODD_AFFINE, atol=1e-4)
        h = load_header(tmp_path / f"odd{suffix}")
        assert h.shape == (5, 4, 3) and h.dtype == np.int16
        np.testing.assert_allclose(h.affine, ODD_AFFINE, atol=1e-4)


def test_lps_to_ras_hand_computed(tmp_path):
    """ITK origin (10, 20, 30) LPS, identity direction -> RAS origin (-10, -20, 30), x and y negated."""
    arr = _ramp((3, 4, 2))
    image = sitk.GetImageFromArray(arr.transpose(2, 1, 0))  # sitk wants (z, y, x)
    image.SetSpacing((1.0, 2.0, 3.0))
    image.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(image, str(tmp_path / "v.nrrd"))
    v = load_volume(tmp_path / "v.nrrd")
    expected = np.array([[-1.0, 0, 0, -10], [0, -2.0, 0, -20], [0, 0, 3.0, 30], [0, 0, 0, 1]])
    np.testing.assert_allclose(v.affine, expected)
    np.testing.assert_array_equal(v.array, arr)
    # voxel (2, 3, 1) sits at LPS (12, 26, 33) = RAS (-12, -26, 33)
    np.testing.assert_allclose(v.affine @ [2, 3, 1, 1], [-12, -26, 33, 1])


def test_scaled_nifti_comes_back_in_hu_as_float32(tmp_path):
    stored = np.array([[[0, 1024, 2048]]], np.uint16)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    v = load_volume(tmp_path / "s.nii.gz")
    assert v.array.dtype == np.float32
    np.testing.assert_array_equal(v.array.ravel(), [-1024, 0, 1024])
    assert load_header(tmp_path / "s.nii.gz").scaled


def test_4d_singleton_and_2d(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 1), np.int16), np.eye(4)), str(tmp_path / "a.nii.gz"))
    assert load_volume(tmp_path / "a.nii.gz").shape == (3, 4, 5)
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 2), np.int16), np.eye(4)), str(tmp_path / "b.nii.gz"))
    with pytest.raises(InputError, match="3D"):
        load_volume(tmp_path / "b.nii.gz")


def test_unreadable_files_raise_input_error_naming_file(tmp_path):
    good = save_volume(tmp_path / "good.nii.gz", np.zeros((30, 30, 30), np.int16) - 1000, np.eye(4))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.nii.gz.*(truncated|corrupt)") as exc:
        load_volume(truncated)
    assert "Fix" in str(exc.value)
    garbage = tmp_path / "garbage.nrrd"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="garbage.nrrd"):
        load_volume(garbage)
    with pytest.raises(InputError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported"):
        load_volume(tmp_path / "notes.txt")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        load_volume(empty)


# ----------------------------------------------------------------------------------- DICOM


def _hu(shape=(6, 5, 4)):
    return (np.arange(np.prod(shape)).reshape(shape) * 3 - 1000).astype(float)


def test_dicom_series_rescale_geometry_and_slice_order(tmp_path):
    hu = _hu()
    files = make_dicom_series(tmp_path / "s", hu, spacing=(0.8, 0.7, 2.5), origin_lps=(-100.0, -120.0, -50.0))
    # stored values are not HU: the reader must apply RescaleIntercept
    assert pydicom.dcmread(files[0]).pixel_array.min() >= 0
    v = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(v.array, hu)  # file names run backwards: sorted by position
    assert v.spacing == pytest.approx((0.8, 0.7, 2.5))
    expected = np.array([[-0.8, 0, 0, 100], [0, -0.7, 0, 120], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    np.testing.assert_allclose(v.affine, expected, atol=1e-6)


def test_dicom_slope_and_per_slice_intercept(tmp_path):
    hu = _hu()
    files = make_dicom_series(tmp_path / "s", hu, slope=0.5, intercept=-1024.0)
    ds = pydicom.dcmread(files[1])  # one slice with its own intercept
    ds.PixelData = (ds.pixel_array.astype(np.int64) + 1952).astype("<u2").tobytes()  # 976 HU / 0.5
    ds.RescaleIntercept = -2000
    ds.save_as(files[1])
    v = load_volume(tmp_path / "s")
    np.testing.assert_allclose(v.array, hu)


def test_dicom_folder_with_several_series_reads_the_largest_and_warns(tmp_path):
    hu = _hu()
    make_dicom_series(tmp_path / "p", hu, prefix="CT")
    make_dicom_series(tmp_path / "p" / "scout", hu[:, :, :2] + 500, prefix="SC")
    with pytest.warns(UserWarning, match="2 DICOM series.*most slices"):
        v = load_volume(tmp_path / "p")
    np.testing.assert_array_equal(v.array, hu)


def test_dicom_truncated_slice_is_an_error_not_a_missing_slice(tmp_path):
    files = make_dicom_series(tmp_path / "s", _hu())
    data = files[2].read_bytes()
    files[2].write_bytes(data[:-40])
    with pytest.raises(InputError, match=files[2].name):
        load_volume(tmp_path / "s")


# ----------------------------------------------------------------------------------- real data


@needs_real
@pytest.mark.parametrize("name, shape, spacing", [
    ("chest-ct-1.nrrd", (512, 512, 48), (0.5703, 0.5703, 5.0)),
    ("chest-ct-2.nrrd", (512, 512, 61), (0.6270, 0.6270, 5.0)),
])
def test_real_nrrd(name, shape, spacing):
    v = load_volume(REAL / name)
    assert v.shape == shape
    assert v.spacing == pytest.approx(spacing, abs=1e-3)
    assert v.array.dtype == np.int16
    assert -1030 <= v.array.min() <= -1000
    # the lungs hold air: a real share of the central (in-body) voxels is below -800 HU,
    # and soft tissue is near 0 HU: this is HU, not a rescaled or windowed image
    centre = v.array[128:384, 128:384, :]
    assert (centre < -800).mean() > 0.05
    assert ((centre > -100) & (centre < 100)).mean() > 0.05


@needs_real
def test_real_dicom_slices_spacing_and_hu():
    files = sorted((REAL / "dicom-slices").glob("*.dcm"))
    assert files
    for f in files:
        ds = pydicom.dcmread(f)
        v = load_volume(f)
        assert v.shape == (int(ds.Columns), int(ds.Rows), 1)
        col_sp, row_sp = float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])
        assert v.spacing[:2] == pytest.approx((col_sp, row_sp), rel=1e-5)
        expected = ds.pixel_array.astype(float).T * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        np.testing.assert_allclose(v.array[:, :, 0], expected)
        # air around the patient near -1000 HU, soft tissue near 0 HU
        assert np.percentile(v.array, 25) == pytest.approx(-1000, abs=40), f.name
        assert ((v.array > -100) & (v.array < 100)).mean() > 0.05, f.name


@needs_real
def test_real_dicom_folder_picks_one_series_and_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v = load_volume(REAL / "dicom-slices")
    assert v.shape[:2] == (512, 512)
    assert any("DICOM series" in str(w.message) for w in caught)
