"""sscild compare: change per class and zone, the MCID statement, comparability warnings."""

from __future__ import annotations

import numpy as np
import pytest

from sscild.profiles import get_profile
from sscild.clinic.compare import (LUNG_VOLUME_RATIO, MCID_PP, MCID_STATEMENT, ScanResult, change_table,
                            comparability_warnings, compare_results, mcid_verdict)
from sscild.evaluation.metrics import volumes_ml
from sscild.clinic.zones import ZONES, zone_extent


def result(name, label, affine, acquisition=None):
    sp = tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)))
    v = volumes_ml(label, sp)
    summary = {"scan": name, "lung_volume_ml": v["lung"],
               "percent_of_lung": {k: 100 * v[k] / v["lung"] for k in ("ef", "ggo", "lesion")}, "extent_stage": "x"}
    acq = {"patient_id": None, "slice_thickness_mm": sp[2], "slice_thickness_from": "voxel spacing", "kernel": None}
    acq.update(acquisition or {})
    return ScanResult(name=name, label=label, affine=affine, acquisition=acq, summary=summary,
                      zones=zone_extent(label, affine))


@pytest.fixture(scope="module")
def two_levels():
    """One synthetic patient at two disease levels (phantom ``lesion_scale``): a planted change."""
    from sscild.synthetic.phantom import generate_case

    base = generate_case(2, profile=get_profile("smoke"), seed=0)
    follow = generate_case(2, profile=get_profile("smoke"), seed=0, lesion_scale=1.8)
    return base, follow


def test_the_same_patient_at_two_disease_levels(two_levels):
    base, follow = two_levels
    assert base.clinical["age"] == follow.clinical["age"] and base.truth["lung_height_mm"] > 0
    assert follow.truth["lesion_pct"] > base.truth["lesion_pct"] + 5


def test_reported_change_equals_the_planted_change(two_levels):
    base, follow = two_levels
    r = compare_results(result("v1", base.label, base.affine), result("v2", follow.label, follow.affine))
    rows = {(x["zone"], x["class"]): x for x in r["change"]}
    assert {z for z, _ in rows} == set(ZONES)
    planted = {"EF": follow.truth["ef_pct"] - base.truth["ef_pct"], "GGO": follow.truth["ggo_pct"] - base.truth["ggo_pct"],
               "lesion (EF + GGO)": follow.truth["lesion_pct"] - base.truth["lesion_pct"]}
    for cls, d in planted.items():
        assert rows[("whole lung", cls)]["change_pp"] == pytest.approx(d, abs=1e-6)
    planted_ml = follow.truth["ef_ml"] - base.truth["ef_ml"]
    assert rows[("whole lung", "EF")]["change_ml"] == pytest.approx(planted_ml, rel=1e-6)
    assert rows[("whole lung", "lesion (EF + GGO)")]["mcid"] == mcid_verdict(planted["lesion (EF + GGO)"])
    assert all(rows[(z, c)]["mcid"] == "" for z, c in rows if z != "whole lung")  # MCID: whole-lung extent only
    # per zone, the change is the difference of the zone extents of the two reference maps
    zb, zf = zone_extent(base.label, base.affine), zone_extent(follow.label, follow.affine)
    for zone in ZONES:
        assert rows[(zone, "EF")]["change_pp"] == pytest.approx(zf.loc[zone, "ef_pct"] - zb.loc[zone, "ef_pct"], abs=1e-9)
    assert "derived in idiopathic pulmonary fibrosis (IPF)" in r["mcid"]["statement"]
    assert r["mcid"]["range_pp"] == [3.4, 6.4]


def test_a_shifted_and_resampled_copy_shows_no_change(two_levels):
    base, _ = two_levels
    lab, aff = base.label, base.affine
    # shifted: 7 voxels of padding on one side, origin moved to match (the same patient, somewhere else in the grid)
    shifted = np.pad(lab, ((7, 0), (0, 3), (2, 0)))
    aff_s = aff.copy()
    aff_s[:3, 3] -= aff[:3, :3] @ np.array([7, 0, 2])
    # resampled in-plane: every voxel split into 2 x 2 (half the pixel size), nearest neighbour
    inplane = np.repeat(np.repeat(lab, 2, axis=0), 2, axis=1)
    aff_i = aff.copy()
    aff_i[:3, :2] /= 2
    aff_i[:3, 3] -= (aff[:3, 0] + aff[:3, 1]) / 4
    # resampled along z: every slice twice (half the slice spacing)
    thin = np.repeat(lab, 2, axis=2)
    aff_z = aff.copy()
    aff_z[:3, 2] /= 2
    aff_z[:3, 3] -= aff[:3, 2] / 4
    b = result("v1", lab, aff)
    # A pure shift changes nothing. In-plane, the peripheral band is computed on a ~1.4 mm grid, so a finer
    # pixel moves it slightly. Along z, the level boundaries (thirds of the lung's height) may cut through a
    # 10-mm slice of this phantom; split in two, half of that slice can change level: up to 4 pp of a zone
    # here, about half that on 5-mm slices, nothing worth noting on 1-mm HRCT.
    for lab2, aff2, tol_zone in ((shifted, aff_s, 1e-9), (inplane, aff_i, 1.0), (thin, aff_z, 4.0)):
        r = compare_results(b, result("v1 copy", lab2, aff2))
        for row in r["change"]:
            tol = 1e-9 if row["zone"] == "whole lung" else tol_zone
            assert abs(row["change_pp"]) <= tol, row
            if row["zone"] == "whole lung":
                assert abs(row["change_ml"]) <= 1e-6


def test_comparability_warnings_name_the_numbers(two_levels):
    base, follow = two_levels
    a = result("v1", base.label, base.affine, {"patient_id": "P1", "kernel": "B30f", "slice_thickness_mm": 1.0})
    b = result("v2", follow.label, follow.affine, {"patient_id": "P2", "kernel": "B70f", "slice_thickness_mm": 5.0})
    b.summary["lung_volume_ml"] = a.summary["lung_volume_ml"] * 0.8
    warn, unknown = comparability_warnings(a, b)
    text = "\n".join(warn)
    assert "'P1'" in text and "'P2'" in text
    assert "1 mm" in text and "5 mm" in text
    assert "'B30f'" in text and "'B70f'" in text
    assert "ratio 0.80" in text and f"{LUNG_VOLUME_RATIO[0]}-{LUNG_VOLUME_RATIO[1]}" in text
    assert unknown == []
    # NIfTI inputs: patient and kernel are unknown, and said to be so
    c, d = result("a", base.label, base.affine), result("b", base.label, base.affine)
    warn, unknown = comparability_warnings(c, d)
    assert warn == [] and any("PatientID" in u for u in unknown) and any("kernel" in u for u in unknown)


def test_mcid_verdict_boundaries():
    assert MCID_PP == (3.4, 6.4) and "IPF" in MCID_STATEMENT
    assert mcid_verdict(1.0) == "below the MCID range"
    assert mcid_verdict(-3.4) == "within the MCID range"
    assert mcid_verdict(6.4) == "within the MCID range"
    assert mcid_verdict(6.5) == "beyond the MCID range"
    assert mcid_verdict(float("nan")) == "undetermined"


def test_change_table_units():
    import pandas as pd

    z = pd.DataFrame({"lung_ml": [200.0], "ef_ml": [10.0], "ggo_ml": [20.0], "lesion_ml": [30.0], "ef_pct": [5.0],
                      "ggo_pct": [10.0], "lesion_pct": [15.0]}, index=["lower"])
    f = z.assign(lung_ml=100.0, ef_ml=10.0, ef_pct=10.0)  # same EF volume in a smaller lung: +5 pp, 0 mL
    row = change_table(z, f).iloc[0]
    assert row["change_pp"] == pytest.approx(5.0) and row["change_ml"] == 0.0 and row["mcid"] == ""
