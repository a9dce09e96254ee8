"""Out-of-fold prediction: geometry back to the input grid, held-out folds only, no needless rework."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from cohort_factory import make_case_arrays, prepare_run
from sscild.model import predict
from sscild.model.inference import keep_largest_lung_components, predict_preprocessed
from sscild.model.loading import fuse_batchnorm
from sscild.data.cohort import read_case
from sscild.data.folds import fold_of, read_splits
from sscild.evaluation.overlap import dice
from sscild.profiles import get_profile

SMOKE_SPACING = (3.6, 3.6, 10.0)  # the smoke profile's target spacing: no resampling, exact round trip


def write_cohort(root, *, n=4, shape=(40, 36, 10), affine=None, flip_x=False):
    """A labelled cohort whose arrays are stored with ``affine`` (default: RAS diagonal of SMOKE_SPACING).

    With ``flip_x`` the arrays are stored left-right reversed with an affine that says so (as an
    LPS-ordered export would be), so the same anatomy lands at the same RAS positions.
    """
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    if affine is None:
        affine = np.diag([*SMOKE_SPACING, 1.0])
    affine = np.asarray(affine, float).copy()
    for i in range(n):
        image, label = make_case_arrays(shape, seed=i)
        if flip_x:
            image, label = image[::-1], label[::-1]
        for arr, path, dt in ((image, root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", np.int16),
                              (label, root / "labelsTr" / f"case_{i:03d}.nii.gz", np.uint8)):
            img = nib.Nifti1Image(np.ascontiguousarray(arr, dtype=dt), affine)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            nib.save(img, str(path))
    (root / "dataset.json").write_text(json.dumps({
        "name": root.name, "channel_names": {"0": "CT"}, "labels": {"background": 0, "normal": 1, "ef": 2, "ggo": 3},
        "numTraining": n, "file_ending": ".nii.gz", "synthetic": True}))
    return root


def prepare(tmp_path, **cohort_kw):
    data = write_cohort(tmp_path / "cohort", **cohort_kw)
    run, cohort = prepare_run(data, tmp_path / "results")
    for k in range(2):  # stand-in model files: only their bytes (hash) matter to predict_oof here
        (run.fold_dir(k)).mkdir(parents=True)
        (run.fold_dir(k) / "model_final.pt").write_bytes(f"model of fold {k}".encode())
    return run, cohort


class FakeNet:
    def __init__(self, path):
        self.path = str(path)


@pytest.fixture
def spy(monkeypatch):
    """Replace model loading and inference: a "perfect model" that returns the cached reference.

    Records every model loaded and, per predicted case, which model predicted it.
    """
    calls = {"loaded": [], "predicted": []}
    splits_by_run = {}

    def fake_load(path, device=None):
        path = str(path)
        calls["loaded"].append(path)
        fold = int(path.split("fold_")[-1].split("/")[0])
        splits = splits_by_run[path.split("/fold_")[0]]
        return FakeNet(path), {"profile": get_profile("smoke"), "fold": fold, "path": path,
                               "train_cases": splits[fold]["train"]}

    def fake_predict(nets, pre, **kwargs):
        calls["predicted"].append((pre.case_id, [n.path for n in nets]))
        return np.asarray(pre.label).copy()

    monkeypatch.setattr(predict, "load_fold_model", fake_load)
    monkeypatch.setattr("sscild.model.inference.predict_preprocessed", fake_predict)   # under segment_preprocessed
    calls["register"] = lambda run: splits_by_run.__setitem__(str(run.root), read_splits(run.splits))
    return calls


def test_each_case_is_predicted_only_by_the_fold_that_held_it_out(tmp_path, spy):
    run, cohort = prepare(tmp_path)
    spy["register"](run)
    paths = predict.predict_oof(run, progress=False)
    held_out = fold_of(read_splits(run.splits))
    assert sorted(p.name for p in paths) == sorted(f"{c}.nii.gz" for c in held_out)
    predicted = dict((cid, models) for cid, models in spy["predicted"])
    assert len(spy["predicted"]) == len(held_out) == len(predicted)  # each case once
    for cid, models in predicted.items():
        assert models == [str(run.fold_dir(held_out[cid]) / "model_final.pt")], cid
    assert len(spy["loaded"]) == 2  # one load per fold
    manifest = json.loads((run.predictions / "manifest.json").read_text())["cases"]
    assert {c: e["fold"] for c, e in manifest.items()} == held_out


def test_predictions_land_on_the_reference_voxels_with_the_input_geometry(tmp_path, spy):
    # stored left-right reversed (LPS-like affine): preprocessing reorients, restoring must undo it
    affine = np.diag([-SMOKE_SPACING[0], SMOKE_SPACING[1], SMOKE_SPACING[2], 1.0])
    affine[:3, 3] = (120.0, -60.0, 30.0)
    run, cohort = prepare(tmp_path, affine=affine, flip_x=True)
    spy["register"](run)
    predict.predict_oof(run, progress=False)
    for case in cohort.cases:
        image, ref = read_case(cohort, case.case_id)
        out = nib.load(str(run.predictions / f"{case.case_id}.nii.gz"))
        assert out.shape == image.shape
        np.testing.assert_allclose(out.affine, image.affine)
        assert out.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(out.dataobj), ref)  # same voxels, exactly


def test_resampled_round_trip_still_overlays(tmp_path, spy):
    # native 1.5 x 1.5 x 4 mm, network grid 3.6 x 3.6 x 10 mm: nearest-neighbour both ways
    run, cohort = prepare(tmp_path, shape=(72, 60, 20), affine=np.diag([1.5, 1.5, 4.0, 1.0]))
    spy["register"](run)
    predict.predict_oof(run, progress=False)
    for case in cohort.cases:
        image, ref = read_case(cohort, case.case_id)
        out = nib.load(str(run.predictions / f"{case.case_id}.nii.gz"))
        pred = np.asarray(out.dataobj)
        assert out.shape == image.shape
        np.testing.assert_allclose(out.affine, image.affine)
        assert dice(pred > 0, ref > 0) > 0.85
        assert dice(pred >= 2, ref >= 2) > 0.6
        # no shift: the lesion's centre of mass stays within one coarse voxel
        com_ref = np.array(np.nonzero(ref >= 2)).mean(axis=1) * (1.5, 1.5, 4.0)
        com_pred = np.array(np.nonzero(pred >= 2)).mean(axis=1) * (1.5, 1.5, 4.0)
        assert np.all(np.abs(com_ref - com_pred) < (3.6, 3.6, 10.0))


def test_up_to_date_predictions_are_reused_and_a_new_model_redoes_its_fold(tmp_path, spy):
    run, cohort = prepare(tmp_path)
    spy["register"](run)
    predict.predict_oof(run, progress=False)
    n = len(spy["predicted"])
    predict.predict_oof(run, progress=False)
    assert len(spy["predicted"]) == n and len(spy["loaded"]) == 2
    (run.fold_dir(1) / "model_final.pt").write_bytes(b"retrained fold 1")
    predict.predict_oof(run, progress=False)
    redone = [cid for cid, _ in spy["predicted"][n:]]
    assert sorted(redone) == sorted(read_splits(run.splits)[1]["val"])
    # a re-preprocessed case (new cache key: its scan or label changed) is predicted again, alone
    n = len(spy["predicted"])
    meta_path = run.cache / "case_002.json"
    meta = json.loads(meta_path.read_text())
    meta["key"] = "changed"
    meta_path.write_text(json.dumps(meta))
    predict.predict_oof(run, progress=False)
    assert [cid for cid, _ in spy["predicted"][n:]] == ["case_002"]


def test_a_model_trained_on_a_held_out_case_is_refused(tmp_path, monkeypatch):
    run, cohort = prepare(tmp_path)
    splits = read_splits(run.splits)

    def leaky(path, device=None):
        return FakeNet(path), {"profile": get_profile("smoke"), "fold": 0, "path": str(path),
                               "train_cases": splits[0]["train"] + splits[0]["val"][:1]}

    monkeypatch.setattr(predict, "load_fold_model", leaky)
    with pytest.raises(ValueError, match="holds out"):
        predict.predict_oof(run, progress=False)


def test_missing_fold_model_is_reported(tmp_path):
    run, cohort = prepare(tmp_path)
    (run.fold_dir(1) / "model_final.pt").unlink()
    with pytest.raises(FileNotFoundError, match="fold 1 is not trained"):
        predict.predict_oof(run, progress=False)


def test_ensemble_and_flips_average_the_softmax():
    """predict_preprocessed = argmax of the mean softmax over members and flips (checked by hand)."""
    from sscild.data.preprocess import Preprocessed

    class Const(torch.nn.Module):
        """Fixed logits; optionally +10 on GGO in the left half of the slice (not flip-symmetric)."""

        def __init__(self, logits, left_ggo=False):
            super().__init__()
            self.logits = torch.tensor(logits, dtype=torch.float32)
            self.left_ggo = left_ggo

        def forward(self, x):
            b, _, nx, ny = x.shape
            out = self.logits[None, :, None, None].expand(b, -1, nx, ny).clone()
            if self.left_ggo:
                out[:, 3, : nx // 2] += 10.0
            return out

    pre = Preprocessed("c", np.zeros((8, 4, 3), np.float32), None, (1.0, 1.0, 1.0), {})
    # softmax([0, 2, 0, 0]) gives normal 0.79; softmax([0, 0, 3, 0]) gives EF 0.87: the mean picks EF,
    # though member a alone would say normal
    a, b = Const([0.0, 2.0, 0.0, 0.0]), Const([0.0, 0.0, 3.0, 0.0])
    assert (predict_preprocessed([a, b], pre, tta=False) == 2).all()
    assert (predict_preprocessed([a], pre, tta=False) == 1).all()
    # flips: without them, GGO on the left half only; with them the flipped pass, flipped back,
    # puts the GGO evidence on the right half, and the mean (GGO about 1.1 vs normal 0.79) says GGO
    # on both halves. Forgetting to flip back would leave the right half normal.
    c = Const([0.0, 2.0, 0.0, 0.0], left_ggo=True)
    plain = predict_preprocessed(c, pre, tta=False)
    assert (plain[:4] == 3).all() and (plain[4:] == 1).all()
    assert (predict_preprocessed(c, pre, tta=True, batch_slices=2) == 3).all()


def test_keep_largest_lung_components():
    lab = np.zeros((30, 10, 10), np.uint8)
    lab[1:11, 1:9, 1:9] = 1      # lung 1: 640 voxels
    lab[3:6, 2:5, 2:5] = 2       # EF inside lung 1 stays
    lab[15:24, 1:9, 1:9] = 3     # lung 2: 576 voxels, all GGO
    lab[27:29, 1:3, 1:3] = 1     # speck: 8 voxels -> dropped
    out = keep_largest_lung_components(lab)
    assert out[27:29].sum() == 0
    np.testing.assert_array_equal(out[:25], lab[:25])
    # a second component below 5 % of the largest is dropped, at or above it is kept
    one = np.zeros((40, 4, 4), np.uint8)
    one[:20] = 1                 # 320 voxels
    one[30:31] = 1               # 16 voxels = 5.0 % -> kept
    assert keep_largest_lung_components(one)[30].all()
    one[30, 0, 0] = 0            # 15 voxels < 5 % -> dropped
    assert not keep_largest_lung_components(one)[30].any()


def test_fused_batchnorm_network_computes_the_same_function():
    import copy

    from sscild.model.network import build_network

    torch.manual_seed(0)
    net = build_network(get_profile("smoke")).eval()
    for m in net.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    fused = fuse_batchnorm(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(3, 1, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eval"):
        fuse_batchnorm(build_network(get_profile("smoke")).train())


def test_lesion_threshold_calls_only_confident_lesion():
    import torch

    from sscild.model.inference import _decide

    # probabilities (background, normal, EF, GGO) of four voxels, summed over two members
    p = torch.tensor([[0.1, 0.2, 0.5, 0.2], [0.05, 0.35, 0.35, 0.25], [0.4, 0.1, 0.45, 0.05], [0.0, 0.9, 0.05, 0.05]])
    acc = (2 * p).T.reshape(1, 4, 1, 4)
    assert _decide(acc, None).ravel().tolist() == [2, 1, 2, 1]       # plain argmax (voxel 2: EF by a hair)
    assert _decide(acc, 0.7).ravel().tolist() == [2, 1, 0, 1]        # EF+GGO 0.6 and 0.5 < 0.7: not lesion
    assert _decide(acc, 0.6).ravel().tolist() == [2, 1, 0, 1]
    assert _decide(acc, 0.5).ravel().tolist() == [2, 1, 2, 1]        # 0.5 reached: the argmax stands


def test_a_model_file_older_than_a_profile_setting_takes_the_profile_s_value_now():
    from sscild.model.loading import _profile_from_dict
    from sscild.profiles import get_profile

    saved = get_profile("cpu").to_dict()
    del saved["lesion_threshold"]
    assert _profile_from_dict(saved).lesion_threshold == get_profile("cpu").lesion_threshold == 0.7
    other = {**get_profile("smoke").to_dict(), "name": "my-own"}
    del other["lesion_threshold"]
    assert _profile_from_dict(other).lesion_threshold is None   # no profile of that name: the field's default
