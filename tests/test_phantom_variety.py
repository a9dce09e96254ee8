"""The phantom's variety knobs: each feature present at its setting, absent at zero."""

from __future__ import annotations

import numpy as np
import pytest

from sscild.data.lungmask import lung_mask_by_threshold
from sscild.profiles import get_profile
from sscild.synthetic.phantom import generate_case
from sscild.synthetic.variety import Variety

NONE = Variety.none()
CASE = 3  # a cpu-profile patient with little disease, so most of its lung is free for emphysema


def _case(**kw):
    return generate_case(CASE, profile=get_profile("cpu"), variety=NONE.with_overrides(**kw))


@pytest.fixture(scope="module")
def plain():
    return generate_case(CASE, profile=get_profile("cpu"), variety=NONE)


def _dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_nothing_extra_at_zero(plain):
    t = plain.truth
    assert t["emphysema_pct"] == 0 and t["bullae"] == 0 and t["emphysema_kind"] == "none"
    assert t["oesophagus_lumen_mm"] == 0 and t["pericardial_effusion_mm"] == 0 and t["fissures_visible"] == 0
    assert not plain.masks["emphysema"].any() and not plain.masks["oesophagus_air"].any()


@pytest.mark.parametrize("kind", ["centrilobular", "paraseptal"])
def test_emphysema_is_drawn_and_labelled_normal_lung(plain, kind):
    c = _case(emphysema_prob=1.0, emphysema_max_pct=30.0, paraseptal_share=1.0 if kind == "paraseptal" else 0.0)
    assert c.truth["emphysema_kind"] == kind
    assert c.truth["emphysema_pct"] > 0.5
    emph = c.masks["emphysema"]
    assert emph.any()
    assert set(np.unique(c.label[emph]).tolist()) == {1}         # lung, and never lesion
    # the labels do not move: emphysema changes attenuation, not the reference
    assert np.array_equal(c.label, plain.label)
    low = lambda case: (case.image[case.label == 1] < -950).mean()  # noqa: E731
    assert low(c) > low(plain) + 0.004


def test_bullae_are_large_air_spaces_inside_the_lung(plain):
    c = _case(bullae_prob=1.0)
    assert c.truth["bullae"] >= 1
    air = (c.image <= -980) & (c.label == 1)
    assert air.sum() > (plain.image[plain.label == 1] <= -980).sum() + 20
    assert set(np.unique(c.label[c.masks["emphysema"]]).tolist()) == {1}


def test_dilated_oesophagus_holds_air_outside_the_lung():
    c = _case(oesophagus_prob=1.0)
    assert c.truth["oesophagus_lumen_mm"] >= 6
    air = c.masks["oesophagus_air"]
    assert air.sum() > 50
    assert not (c.label[air] > 0).any()
    assert np.median(c.image[air]) < -800


def test_pericardial_effusion_is_fluid_around_the_heart(plain):
    c = _case(effusion_prob=1.0)
    assert c.truth["pericardial_effusion_mm"] >= 4
    fluid = lambda case: ((case.image > -10) & (case.image < 35)).sum()  # noqa: E731
    assert fluid(c) > fluid(plain)
    assert (c.label > 0).sum() < (plain.label > 0).sum()          # the larger heart shadow takes lung


def test_fissures_are_thin_sheets_in_the_lung(plain):
    c = _case(fissure_prob=1.0)
    assert c.truth["fissures_visible"] == 2
    diff = c.image.astype(int) != plain.image.astype(int)
    assert diff.any() and (c.label[diff] > 0).mean() > 0.95      # only lung voxels change
    assert np.array_equal(c.label, plain.label)


def test_inspiration_sets_density_and_volume():
    shallow = _case(inspiration=(0.0, 0.0), density_span_hu=100.0)
    deep = _case(inspiration=(1.0, 1.0), density_span_hu=100.0)
    med = lambda case: np.median(case.image[case.label == 1])  # noqa: E731
    assert med(shallow) > med(deep) + 60
    assert shallow.truth["lung_ml"] < deep.truth["lung_ml"]


def test_gravity_gradient_makes_the_dependent_lung_denser():
    c = _case(gravity_hu=(80.0, 80.0))
    flat = _case(gravity_hu=(0.0, 0.0))

    def post_minus_ant(case):
        lung = case.label == 1
        y = np.nonzero(lung)[1]
        mid = np.median(y)
        hu = case.image[lung]
        return np.median(hu[y < mid]) - np.median(hu[y > mid])  # y grows anteriorly (RAS)

    assert post_minus_ant(c) > post_minus_ant(flat) + 30


def test_classical_lung_mask_agrees_with_the_phantom_lung():
    full = Variety().with_overrides(emphysema_prob=1.0, bullae_prob=1.0, oesophagus_prob=1.0, effusion_prob=1.0,
                                    fissure_prob=1.0)
    for i in (0, 2):
        c = generate_case(i, profile=get_profile("cpu"), variety=full)
        m = lung_mask_by_threshold(c.image, c.spacing)
        assert _dice(m, c.label > 0) >= 0.95, c.case_id


def test_variety_is_deterministic_and_validated():
    a = generate_case(1, profile=get_profile("smoke"))
    b = generate_case(1, profile=get_profile("smoke"))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    with pytest.raises(ValueError, match="emphysema_prob"):
        Variety(emphysema_prob=1.5)
    with pytest.raises(ValueError, match="inspiration"):
        Variety(inspiration=(0.8, 0.2))
    with pytest.raises(ValueError, match="variety"):
        generate_case(0, profile=get_profile("smoke"), variety={"emphysema_prob": 1})
