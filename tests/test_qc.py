"""Quality control of a segmented scan (sscild.clinic.qc): each flag raised when it should, and only then."""

from __future__ import annotations

import numpy as np
import pytest

from sscild.clinic.qc import (MIN_LUNG_ML, NoLungsError, check_lungs_found, orientation_measure, quality_control,
                              uncertainty_summary)
from sscild.data.preprocess import preprocess_volume
from sscild.model.inference import VolumePrediction
from sscild.profiles import get_profile
from sscild.synthetic.phantom import generate_case

CPU = get_profile("cpu")


@pytest.fixture(scope="module")
def patient():
    """A cpu-sized phantom patient; its reference labels stand in for the network's."""
    case = generate_case(3, profile=CPU, seed=0)
    return case.image.astype(np.float32), case.label, case.affine


def prediction(hu, label, affine):
    from sscild.data.image import Volume

    pre = preprocess_volume(Volume(hu, affine), label, profile=CPU)
    return VolumePrediction(label=label, uncertainty=None, pre=pre, label_pre=pre.label, uncertainty_pre=None,
                            seconds={})


def flags(hu, label, affine, *, slice_mm=None, uncertainty=None):
    ml = float((label > 0).sum()) * float(np.prod(np.sqrt((affine[:3, :3] ** 2).sum(0)))) / 1000
    slice_mm = float(np.sqrt((affine[:3, 2] ** 2).sum())) if slice_mm is None else slice_mm
    qc = quality_control(prediction(hu, label, affine), affine, lung_ml=ml, profile=CPU, slice_mm=slice_mm,
                         uncertainty=uncertainty)
    return {f["code"]: f for f in qc["flags"]}, qc["measures"]


def test_no_lungs_is_refused_with_exit_status_5():
    with pytest.raises(NoLungsError, match="no lungs found - is this a chest CT") as exc:
        check_lungs_found(1.4, "filled.nii.gz")
    assert exc.value.exit_code == 5 and "no result was written" in str(exc.value)
    with pytest.raises(NoLungsError, match="implausibly large"):
        check_lungs_found(20000, "x")
    check_lungs_found(MIN_LUNG_ML + 1, "x")  # passes silently


def test_a_plausible_scan_raises_no_flag(patient):
    hu, label, affine = patient
    found, m = flags(hu, label, affine)
    assert not found, found
    assert m["solidity_top"] > m["solidity_bottom"]
    assert m["missed_lung_pct"] < 5 and 20 < m["mediastinum_hu"] < 80


def test_reversed_slices_are_flagged_as_head_and_feet_swapped(patient):
    hu, label, affine = patient
    found, m = flags(hu[:, :, ::-1].copy(), label[:, :, ::-1].copy(), affine)
    assert set(found) == {"orientation"}
    assert "upper and lower zones are exchanged" in found["orientation"]["means"]
    top, bottom = orientation_measure(label > 0)["solidity_top"], orientation_measure(label > 0)["solidity_bottom"]
    assert m["solidity_top"] == pytest.approx(bottom, abs=0.05) and m["solidity_bottom"] == pytest.approx(top, abs=0.05)


def test_lung_left_out_and_cut_off_and_thick_slices_are_flagged(patient):
    hu, label, affine = patient
    part = label.copy()
    part[: part.shape[0] // 2] = 0             # the network "missed" one lung
    found, m = flags(hu, part, affine)
    assert "lung_missed" in found and m["missed_lung_pct"] > 30
    zs = np.nonzero((label > 0).any(axis=(0, 1)))[0]
    cut = slice(0, int(zs[len(zs) // 2]))        # the upper half of the lungs is not in the scan
    found, m = flags(hu[:, :, cut].copy(), label[:, :, cut].copy(), affine)
    assert "coverage" in found and "apex" in found["coverage"]["means"]
    found, _ = flags(hu, label, affine, slice_mm=10.0)
    assert "thick_slices" in found and "5 mm" in found["thick_slices"]["seen"]


def test_contrast_medium_is_flagged(patient):
    hu, label, affine = patient
    enhanced = hu.copy()
    enhanced[(hu > 20) & (hu < 80)] = 260.0    # blood and soft tissue enhanced
    found, m = flags(enhanced, label, affine)
    assert "contrast" in found and m["mediastinum_hu"] > 110


def test_uncertainty_summary_and_flag(patient):
    hu, label, affine = patient
    unc = np.zeros(label.shape, np.uint8)
    unc[label >= 2] = 80                       # every lesion voxel uncertain
    s = uncertainty_summary(label, unc)
    assert s["lesion"]["uncertain_pct"] == 100.0 and s["normal"]["uncertain_pct"] == 0.0
    assert s["lesion"]["mean_uncertainty_pct"] == 80.0
    found, _ = flags(hu, label, affine, uncertainty=s)
    assert "uncertain" in found
    calm = uncertainty_summary(label, np.zeros_like(unc))
    found, _ = flags(hu, label, affine, uncertainty=calm)
    assert "uncertain" not in found


def test_orientation_measure_says_unknown_where_no_slice_is_measurable():
    """Slices too small to measure (as a barely trained model's lung can give) leave the solidity of
    that part unknown (None), without a NumPy warning reaching the report or the book."""
    import warnings

    lung = np.zeros((40, 40, 20), bool)
    lung[5:35, 5:35, :16] = True            # measurable slices at the bottom
    for x, y in ((8, 8), (8, 28), (28, 8), (28, 28)):  # top slices: four specks of 9 voxels, too small to measure
        lung[x:x + 3, y:y + 3, 16:] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = orientation_measure(lung)
    assert m["solidity_top"] is None and m["solidity_bottom"] == pytest.approx(1.0, abs=0.05)
