"""Viewer files read back: Slicer .seg.nrrd, ITK-SNAP label descriptions, DICOM Segmentation (highdicom)."""

from __future__ import annotations

import numpy as np
import pytest

from cohort_factory import make_dicom_series
from sscild.errors import InputError
from sscild.data.image import load_volume
from sscild.palette import LABEL_NAMES, label_rgb
from sscild.clinic.viewer import (SEGMENT_CODES, ras_to_lps, read_itksnap_labels, read_slicer_segments, write_dicom_seg,
                           write_itksnap_labels, write_slicer_seg)


def pattern(shape):
    """A label map where every voxel's value depends on where it is (so a shifted or flipped copy differs)."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    lab = ((i // 3 + 2 * (j // 4) + k) % 4).astype(np.uint8)
    lab[0, 0, 0] = 2  # no symmetry at the corner
    return lab


EXPECTED = {v: {"name": n, "rgb": label_rgb(v)} for v, n in LABEL_NAMES.items()}


def test_slicer_segmentation_names_colours_and_geometry(tmp_path):
    import nrrd

    lab = pattern((12, 10, 7))
    # an oblique-free but flipped, shifted, anisotropic affine (as a DICOM series gives)
    affine = np.array([[-0.7, 0, 0, 120.0], [0, -0.8, 0, 95.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    path = write_slicer_seg(tmp_path / "x_labels.seg.nrrd", lab, affine)
    assert read_slicer_segments(path) == EXPECTED
    data, header = nrrd.read(str(path))
    np.testing.assert_array_equal(data, lab)   # nothing to crop: the pattern fills the grid
    assert header["space"] == "left-posterior-superior"
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segment1_LabelValue"] == "2" and header["Segment1_Layer"] == "0"
    back = load_volume(path)   # SimpleITK reads the NRRD geometry: the same voxels at the same place
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.array), lab)
    # a lung inside a larger grid is stored cropped, with its offset; it still lands on the same voxels
    big = np.zeros((30, 26, 11), np.uint8)
    big[5:17, 9:19, 2:9] = lab[:, :10, :]
    path = write_slicer_seg(tmp_path / "y_labels.seg.nrrd", big, affine)
    data, header = nrrd.read(str(path))
    assert data.shape == (12, 10, 7) and header["Segmentation_ReferenceImageExtentOffset"] == "5 9 2"
    back = load_volume(path)
    ijk = np.argwhere(big > 0)
    world = np.c_[ijk, np.ones(len(ijk))] @ affine.T
    inner = np.rint(world @ np.linalg.inv(back.affine).T)[:, :3].astype(int)
    np.testing.assert_array_equal(np.asarray(back.array)[tuple(inner.T)], big[tuple(ijk.T)])
    assert int((np.asarray(back.array) > 0).sum()) == len(ijk)
    with pytest.raises(ValueError, match="0..3"):
        write_slicer_seg(tmp_path / "bad.seg.nrrd", lab + 4, affine)


def test_itksnap_label_description(tmp_path):
    path = write_itksnap_labels(tmp_path / "x.itksnap.txt")
    text = path.read_text()
    assert text.startswith("################################################\n# ITK-SnAP Label Description File")
    assert '"Clear Label"' in text
    assert read_itksnap_labels(path) == EXPECTED


@pytest.fixture
def series(tmp_path):
    hu = np.full((20, 16, 9), -1000.0)
    hu[3:17, 2:14, 1:8] = -800.0
    files = make_dicom_series(tmp_path / "series", hu, spacing=(0.8, 0.7, 2.5), origin_lps=(-100.0, -120.0, -50.0))
    return tmp_path / "series", load_volume(tmp_path / "series")


def test_dicom_seg_references_the_series_and_lands_on_its_voxels(tmp_path, series):
    import highdicom as hd
    import pydicom

    folder, vol = series
    lab = pattern(vol.shape)
    from sscild.data.image import pick_series

    files = list(pick_series(folder).files)
    path = write_dicom_seg(tmp_path / "x_seg.dcm", lab, vol.affine, files)
    seg = hd.seg.segread(str(path))
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    described = {}
    for d in seg.SegmentSequence:
        rgb = hd.color.CIELabColor.from_dicom_value(d.RecommendedDisplayCIELabValue).to_rgb()
        described[int(d.SegmentNumber)] = {"name": d.SegmentLabel, "rgb": tuple(int(c) for c in rgb)}
        assert d.SegmentedPropertyTypeCodeSequence[0].CodeValue == SEGMENT_CODES[int(d.SegmentNumber)]["type"][0]
    assert described == EXPECTED
    # geometry: every voxel of the segmentation volume, mapped through both affines, hits the same label
    sv = seg.get_volume(combine_segments=True)
    arr = np.asarray(sv.array)
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in arr.shape), indexing="ij"), -1).reshape(-1, 3)
    world = np.c_[idx, np.ones(len(idx))] @ np.asarray(sv.affine).T          # highdicom: LPS
    ours = np.rint(world @ np.linalg.inv(ras_to_lps(vol.affine)).T)[:, :3].astype(int)
    assert (ours >= 0).all() and (ours < np.array(lab.shape)).all()
    np.testing.assert_array_equal(arr.reshape(-1), lab[ours[:, 0], ours[:, 1], ours[:, 2]])


def test_dicom_seg_refuses_a_label_map_of_another_grid(tmp_path, series):
    folder, vol = series
    from sscild.data.image import pick_series

    files = list(pick_series(folder).files)
    shifted = vol.affine.copy()
    shifted[:3, 3] += (0, 0, 2.5)  # one slice off
    with pytest.raises(InputError, match="slice position"):
        write_dicom_seg(tmp_path / "x.dcm", pattern(vol.shape), shifted, files)
    with pytest.raises(InputError, match="slices"):
        write_dicom_seg(tmp_path / "x.dcm", pattern(vol.shape)[:, :, :-1], vol.affine, files)
    assert not (tmp_path / "x.dcm").exists()
