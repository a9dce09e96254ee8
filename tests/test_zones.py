"""Zones: sides, thirds, peripheral band; zone extents consistent with the whole lung."""

from __future__ import annotations

import numpy as np
import pytest

from sscild.evaluation.metrics import volumes_ml
from sscild.profiles import get_profile
from sscild.clinic.zones import ZONES, zone_extent, zone_map

FLIP_X = np.array([[-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def two_lungs(nx=24, ny=10, nz=9, gap=4):
    """Two box lungs side by side along x (RAS: high x = patient's right)."""
    lab = np.zeros((nx, ny, nz), np.uint8)
    w = (nx - gap) // 2
    lab[:w, 1:-1, :] = 1           # patient's left (low x)
    lab[w + gap:, 1:-1, :] = 1     # patient's right
    return lab, w, gap


def test_sides_and_thirds_by_hand():
    lab, w, gap = two_lungs()
    lab[w + gap:, 1:-1, :3] = 2     # EF: lower third (z 0..2 of 9) of the right lung
    lab[:w, 1:-1, 6:] = 3           # GGO: upper third of the left lung
    t = zone_extent(lab, np.eye(4))
    assert t.attrs["sides_by"] == "components"
    assert t.loc["right", "ef_pct"] == pytest.approx(100 / 3)
    assert t.loc["left", "ef_pct"] == 0 and t.loc["left", "ggo_pct"] == pytest.approx(100 / 3)
    assert t.loc["lower", "ef_pct"] == pytest.approx(50.0) and t.loc["lower", "ggo_pct"] == 0
    assert t.loc["upper", "ggo_pct"] == pytest.approx(50.0) and t.loc["upper", "ef_pct"] == 0
    assert t.loc["middle", "lesion_pct"] == 0
    assert t.loc["whole lung", "lesion_pct"] == pytest.approx(100 / 3)
    for z in ("upper", "middle", "lower"):
        assert t.loc[z, "share_of_lung_pct"] == pytest.approx(100 / 3)


def test_voxel_order_does_not_change_the_zones():
    lab, w, gap = two_lungs()
    lab[w + gap:, 1:-1, :3] = 2
    ras = np.diag([0.8, 0.8, 2.5, 1.0])
    las = ras @ np.array([[-1, 0, 0, lab.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    a = zone_extent(lab, ras)
    b = zone_extent(lab[::-1], las)   # stored mirrored, affine says so: same patient
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy())
    assert a.loc["right", "ef_pct"] > 0 and a.loc["left", "ef_pct"] == 0
    # the same array with a plain affine is the mirrored patient: EF now on the left
    c = zone_extent(lab[::-1], ras)
    assert c.loc["left", "ef_pct"] == pytest.approx(a.loc["right", "ef_pct"]) and c.loc["right", "ef_pct"] == 0


def test_touching_lungs_are_split_at_the_midline():
    lab, w, gap = two_lungs()
    lab[w:w + gap, 4:6, 3:6] = 1    # a junction: one connected component
    zm = zone_map(lab, np.eye(4))
    assert zm.how == "midline"
    t = zone_extent(lab, np.eye(4))
    assert t.loc["right", "lung_ml"] > 0 and t.loc["left", "lung_ml"] > 0
    assert abs(t.loc["right", "lung_ml"] - t.loc["left", "lung_ml"]) / t.loc["whole lung", "lung_ml"] < 0.1


def half_disk_lungs(r=60, gap=20):
    """Two D-shaped lungs: the halves of a disk of radius r (0.5 mm pixels) pulled apart by a mediastinum of
    ``gap`` pixels; their flat sides face it. Returns (label, rho) with rho the distance to each half's centre,
    which lies on its flat (mediastinal) side."""
    n = 2 * r + 10
    x, y = np.meshgrid(np.arange(2 * r + gap + 10) - (2 * r + gap + 10) / 2 + 0.5, np.arange(n) - n / 2 + 0.5,
                       indexing="ij")
    cx = np.where(x < 0, x + gap / 2, x - gap / 2)      # x relative to each half's own centre
    rho = np.sqrt(cx ** 2 + y ** 2)
    lung = (rho <= r) & (np.abs(x) >= gap / 2)
    return lung, rho


def test_peripheral_band_is_the_outer_third_from_the_chest_wall():
    r = 60
    lung, rho = half_disk_lungs(r)
    one = np.where(lung, np.where(rho >= r - r / 3, 2, 1), 0).astype(np.uint8)   # EF exactly in the outer third
    lab = np.repeat(one[:, :, None], 6, axis=2)
    t = zone_extent(lab, np.diag([0.5, 0.5, 5.0, 1.0]), grid_mm=0.5)
    assert t.attrs["sides_by"] == "components"
    # the distance is to the chest wall (the arc), not to the mediastinum: the outer third of the radius,
    # 1 - (2/3)^2 = 55.6 % of the area
    assert t.loc["peripheral", "share_of_lung_pct"] == pytest.approx(100 * (1 - (2 / 3) ** 2), abs=2)
    assert t.loc["peripheral", "ef_pct"] > 95 and t.loc["central", "ef_pct"] < 5
    # the coarse grid used for speed (1.4 mm) moves the band by at most a coarse pixel
    t2 = zone_extent(lab, np.diag([0.5, 0.5, 5.0, 1.0]))
    assert t2.loc["peripheral", "share_of_lung_pct"] == pytest.approx(t.loc["peripheral", "share_of_lung_pct"], abs=4)


def test_disease_beside_the_mediastinum_is_central():
    """Perihilar (peribronchovascular) disease lies near the mediastinal pleura but is central, not subpleural."""
    r = 60
    lung, rho = half_disk_lungs(r)
    one = np.where(lung, np.where(rho <= r / 3, 3, 1), 0).astype(np.uint8)        # GGO around each 'hilum'
    t = zone_extent(np.repeat(one[:, :, None], 6, axis=2), np.diag([0.5, 0.5, 5.0, 1.0]))
    assert t.loc["central", "ggo_pct"] > 15 and t.loc["peripheral", "ggo_pct"] == 0


@pytest.fixture(scope="module")
def phantom_label():
    from sscild.synthetic.phantom import generate_case

    case = generate_case(1, profile=get_profile("smoke"), seed=0)
    return case.label, case.affine, case.truth


def test_zone_extents_are_consistent_with_the_whole_lung(phantom_label):
    label, affine, truth = phantom_label
    t = zone_extent(label, affine)
    assert list(t.index) == list(ZONES)
    whole = t.loc["whole lung"]
    vols = volumes_ml(label, tuple(np.sqrt((affine[:3, :3] ** 2).sum(0))))
    assert whole["lung_ml"] == pytest.approx(vols["lung"], rel=1e-9)
    assert whole["ef_pct"] == pytest.approx(truth["ef_pct"], abs=1e-6)
    assert whole["ggo_pct"] == pytest.approx(truth["ggo_pct"], abs=1e-6)
    for family in (("right", "left"), ("upper", "middle", "lower"), ("peripheral", "central")):
        part = t.loc[list(family)]
        for col in ("lung_ml", "normal_ml", "ef_ml", "ggo_ml", "lesion_ml"):
            assert part[col].sum() == pytest.approx(whole[col], rel=1e-9), (family, col)
        for col in ("ef_pct", "ggo_pct", "lesion_pct"):   # lung-weighted mean of the zone % = whole-lung %
            weighted = (part[col] * part["lung_ml"]).sum() / part["lung_ml"].sum()
            assert weighted == pytest.approx(whole[col], abs=1e-9), (family, col)
        assert part["share_of_lung_pct"].sum() == pytest.approx(100.0)


def test_the_phantom_disease_is_basal_and_subpleural(phantom_label):
    """The phantom plants NSIP-like disease (more at the bases, more under the pleura): the zones must see it."""
    label, affine, _ = phantom_label
    t = zone_extent(label, affine)
    assert t.loc["lower", "lesion_pct"] > t.loc["upper", "lesion_pct"]
    assert t.loc["peripheral", "lesion_pct"] > t.loc["central", "lesion_pct"]


def test_bad_arguments():
    lab = np.ones((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="peripheral_fraction"):
        zone_map(lab, np.eye(4), peripheral_fraction=1.5)
    with pytest.raises(ValueError, match="3D"):
        zone_map(lab[0], np.eye(4))
    empty = zone_extent(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    assert empty["lung_ml"].sum() == 0 and empty["ef_pct"].isna().all()
