"""Consistency learning (mean teacher, strong view, CutMix): its parts, a training that resumes as it
would have gone on, and its use by the study's folds and the external check."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sscild.model.consistency import Consistency, ConsistencySettings
from sscild.model.network import build_network
from sscild.model.selftrain import IGNORE_LABEL
from sscild.model.train import train_model
from sscild.profiles import get_profile


def _source(n=4, size=32):
    imgs = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (12, 1, size, size)).astype(np.float32))
    return lambda rng: imgs[rng.integers(0, len(imgs), n)]


def _net():
    p = get_profile("smoke")
    torch.manual_seed(0)
    return build_network(p, out_channels=3).eval()


def test_settings_are_checked():
    for bad in ({"per_batch": 1}, {"confidence": 1.5}, {"ema": -0.1}, {"weight": -1}, {"cutmix": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ConsistencySettings(**bad)
    assert ConsistencySettings().record()["ema"] == 0.99


def test_views_are_reproducible_and_unsure_pixels_are_ignored():
    net = _net()
    sure = Consistency(net, _source(), ConsistencySettings(confidence=0.0), seed=1, key=2, total=10)
    x1, t1, info = sure.views(3, torch.device("cpu"))
    x2, t2, _ = sure.views(3, torch.device("cpu"))
    assert x1.shape == (4, 1, 32, 32) and t1.shape == (4, 1, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(t1, t2)          # a step's views depend on (seed, key, step) alone
    assert not torch.equal(x1, sure.views(4, torch.device("cpu"))[0])
    assert info["labelled_share"] == 1.0 and int(t1.max()) < 3   # confidence 0: every pixel labelled
    unsure = Consistency(net, _source(), ConsistencySettings(confidence=0.999), seed=1, key=2, total=10)
    _, t3, info3 = unsure.views(3, torch.device("cpu"))
    assert info3["labelled_share"] < 0.5 and bool((t3 == IGNORE_LABEL).any())   # a fresh network is unsure


def test_cutmix_moves_the_teachers_labels_with_the_pixels():
    """With CutMix on every image, each strong view holds a rectangle of the next image, and the
    teacher's labels of that rectangle come from the next image too."""
    net = _net()
    no_mix = Consistency(net, _source(), ConsistencySettings(confidence=0.0, cutmix=0.0), seed=0, key=0, total=10)
    mix = Consistency(net, _source(), ConsistencySettings(confidence=0.0, cutmix=1.0), seed=0, key=0, total=10)
    _, t0, _ = no_mix.views(5, torch.device("cpu"))
    _, t1, _ = mix.views(5, torch.device("cpu"))
    assert not torch.equal(t0, t1)
    moved = t1 != t0
    assert bool(moved.flatten(1).any(1).all()) or bool((t0 == t0[0]).all())


def test_loss_counts_unsure_pixels_as_zero_and_ramp_grows():
    logits = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    full = Consistency.loss(logits, target)
    assert full == pytest.approx(np.log(3))
    target[0] = IGNORE_LABEL
    assert Consistency.loss(logits, target) == pytest.approx(np.log(3) / 2)
    c = Consistency(_net(), _source(), ConsistencySettings(weight=2.0, rampup=0.5), seed=0, key=0, total=10)
    assert [round(c.ramp(s), 2) for s in (0, 4, 9)] == [0.4, 2.0, 2.0]


def test_teacher_follows_the_student_slowly():
    net = _net()
    c = Consistency(net, _source(), ConsistencySettings(ema=0.9), seed=0, key=0, total=10)
    before = {k: v.clone() for k, v in c.teacher.state_dict().items()}
    with torch.no_grad():
        for q in net.parameters():
            q.add_(1.0)
    c.update(net)
    w = next(k for k in before if k.endswith("weight"))
    assert torch.allclose(c.teacher.state_dict()[w], before[w] + 0.1, atol=1e-5)
    assert all(not q.requires_grad for q in c.teacher.parameters())


def _cases(n=3, size=40):
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):
        lab = np.ones((size, size, 2), np.uint8)
        lab[10:20, 10:20] = 2
        lab[22:30, 5:15] = 3
        img = (lab.astype(np.float32) / 3 - 0.5 + rng.normal(0, 0.05, lab.shape)).astype(np.float32)
        out[f"c{i}"] = SimpleNamespace(image=img, label=lab)
    return out


def test_training_with_consistency_resumes_as_it_would_have_gone_on(tmp_path):
    p = get_profile("smoke").with_overrides(patch_size=(32, 32), batch_size=2, checkpoint_every=2, log_every=1)
    settings = ConsistencySettings(per_batch=2, confidence=0.5)
    src = _source(n=2)
    whole = train_model(_cases(), p, tmp_path / "whole", iterations=6, progress=False, consistency=settings,
                        unlabelled_batch=src)
    assert whole["consistency"]["per_batch"] == 2 and 0.0 <= whole["consistency"]["teacher_labelled_share"] <= 1.0
    part = train_model(_cases(), p, tmp_path / "part", iterations=6, progress=False, consistency=settings,
                       unlabelled_batch=src, stop_after=2)
    assert part.get("interrupted")
    done = train_model(_cases(), p, tmp_path / "part", iterations=6, progress=False, consistency=settings,
                       unlabelled_batch=src)
    a = torch.load(tmp_path / "whole" / "model_final.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "model_final.pt", weights_only=False)["model"]
    assert done["steps"] == 6 and all(torch.equal(a[k], b[k]) for k in a)
    # the unlabelled images change the weights: the same training without them ends elsewhere
    plain = train_model(_cases(), p, tmp_path / "plain", iterations=6, progress=False)
    c = torch.load(tmp_path / "plain" / "model_final.pt", weights_only=False)["model"]
    assert any(not torch.equal(a[k], c[k]) for k in a) and "consistency" not in plain
    with pytest.raises(ValueError, match="both"):
        train_model(_cases(), p, tmp_path / "x", iterations=2, progress=False, consistency=settings)
    with pytest.raises(ValueError, match="deep supervision"):
        train_model(_cases(), p.with_overrides(deep_supervision=1), tmp_path / "y", iterations=2, progress=False,
                    consistency=settings, unlabelled_batch=src)
    # a checkpoint of a training with consistency is not resumed by one without it
    train_model(_cases(), p, tmp_path / "z", iterations=6, progress=False, consistency=settings,
                unlabelled_batch=src, stop_after=2)
    with pytest.raises(ValueError, match="consistency learning"):
        train_model(_cases(), p, tmp_path / "z", iterations=6, progress=False)


def test_external_check_with_consistency(tmp_path):
    from test_external import _semi_profile, _tiny_parts

    from sscild.external.recipe import external_profile, recipe_dict
    from sscild.external.runs import run_external

    _tiny_parts(tmp_path)
    prof = external_profile(_semi_profile(), semi_supervised="consistency")
    summ = run_external(tmp_path / "train", tmp_path / "out", unlabelled_dir=tmp_path / "unlabelled",
                        profile=prof, n_boot=100, log=None)
    assert summ["data"]["n_unlabelled"] == 4 and summ["cv_supervised"]["n_slices"] == 6
    assert summ["recipe"]["semi_supervised"].startswith("consistency learning")
    fold = json.loads((tmp_path / "out" / "cv" / "fold_0" / "train_summary.json").read_text())
    assert fold["unlabelled_slices"] == 4 and fold["pseudo_cases"] == 0 and fold["consistency"]["per_batch"] == 2
    assert fold["init"] == "given state"  # the student continues from the first stage
    assert recipe_dict(prof, 1)["semi_supervised"] == summ["recipe"]["semi_supervised"]
