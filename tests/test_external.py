"""External check on real CT: the 2D image-folder dataset, scores, and a smoke run of the chapter."""

from __future__ import annotations

import json
import shutil
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sscild.errors import InputError
from sscild.external.grid import GridMap, normalize_intensity, training_case
from sscild.external.predict import MeanProb, decide, predict_slices, pseudo_label_cases
from sscild.external.recipe import check_extra, external_profile, recipe_dict
from sscild.external.runs import cross_validate, run_external
from sscild.external.scores import score_slices, summarize_scores
from sscild.external.screens import lever_screen, screen_table, semi_screen
from sscild.external.slices import SliceImage, read_label, read_slice_folder, read_unlabelled_folder
from sscild.external.tables import PUBLISHED, lesion_table, recorded_gpu_run, results_table
from sscild.external.training import profile_key, recorded_ident, train_or_load, training_jobs
from sscild.model.loading import load_fold_model

REPO = Path(__file__).resolve().parents[1]
COVID_TRAIN = REPO.parent / "shared" / "data" / "covid-semiseg" / "train"


def write_slice(folder: Path, sid: str, image_rc: np.ndarray, label_rc: np.ndarray | None, *, ext_: str = ".png"):
    """Write one slice in the file layout (arrays given as rows x columns, as image files hold them)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_rc.astype(np.uint8)).save(folder / "images" / f"{sid}{ext_}")
    if label_rc is not None:
        Image.fromarray(label_rc.astype(np.uint8)).save(folder / "labels" / f"{sid}.png")


def blob_slice(h: int = 24, w: int = 40):
    """An asymmetric slice (rows x columns): GGO block top-left, consolidation block lower right."""
    lab = np.zeros((h, w), np.uint8)
    lab[2:10, 3:15] = 1
    lab[14:20, 25:37] = 2
    img = np.choose(lab, [0, 127, 255]).astype(np.uint8)
    return img, lab


class PixelNet(torch.nn.Module):
    """A 1x1 convolution whose argmax is 0 below -0.3, 1 in [-0.3, 0.3], 2 above: a pixel-wise
    "segmenter" of the blob slices that commutes with rotations and flips."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([-10.0, 0.0, 10.0]).view(3, 1, 1, 1)
            self.conv.bias[:] = torch.tensor([0.0, 3.0, 0.0])

    def forward(self, x):
        return self.conv(x)


# ---- the folder reader ---------------------------------------------------------------------


def test_read_folder_transposes_to_xy_and_sorts_naturally(tmp_path):
    img, lab = blob_slice()
    for sid in ("10", "2", "b"):
        write_slice(tmp_path, sid, img, lab, ext_=".jpg" if sid == "2" else ".png")
    slices = read_slice_folder(tmp_path)
    assert list(slices) == ["2", "10", "b"]
    s = slices["10"]
    assert s.image.shape == (40, 24) and s.label.shape == (40, 24)  # (x, y) = (columns, rows)
    assert s.label[5, 3] == 1 and s.label[30, 16] == 2 and s.label[30, 5] == 0
    assert s.image.dtype == np.uint8 and s.label.dtype == np.uint8


def test_read_folder_reports_every_problem_at_once(tmp_path):
    img, lab = blob_slice()
    write_slice(tmp_path, "ok", img, lab)
    write_slice(tmp_path, "nolabel", img, None)
    write_slice(tmp_path, "small", img, lab[:20])
    bad = lab.copy()
    bad[0, 0] = 3
    write_slice(tmp_path, "three", img, bad)
    Image.fromarray(lab).save(tmp_path / "labels" / "orphan.png")
    with pytest.raises(InputError) as e:
        read_slice_folder(tmp_path, what="training folder")
    msg = str(e.value)
    assert "5 problem(s)" not in msg and "4 problem(s)" in msg
    assert "slice nolabel: label" in msg and "is missing" in msg
    assert "slice small: label small.png is 40x20" in msg and "image small.png is 40x24" in msg
    assert "slice three" in msg and "values [3]" in msg
    assert "orphan.png" in msg
    assert "slice ok" not in msg


def test_read_folder_rejects_colour_label_and_missing_folder(tmp_path):
    img, lab = blob_slice()
    write_slice(tmp_path, "c", img, None)
    rgb = np.stack([lab, lab * 0, lab], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "labels" / "c.png")
    with pytest.raises(InputError, match="slice c: .*colour image"):
        read_slice_folder(tmp_path)
    with pytest.raises(InputError, match="does not exist.*COVID-SemiSeg"):
        read_slice_folder(tmp_path / "absent")


def test_normalize_intensity_maps_8bit_to_minus_one_one():
    out = normalize_intensity(np.array([[0, 51, 255]], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[-1.0, 51 / 127.5 - 1, 1.0]], atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        normalize_intensity(np.zeros((2, 2), np.float32))


# ---- grid: resize / pad and back -------------------------------------------------------------


def test_grid_geometry_keeps_aspect_and_centres():
    g = GridMap(shape=(100, 50), size=64)
    assert g.resized == (64, 32) and g.offset == (0, 16)
    grid = g.image_to_grid(np.ones((100, 50), np.float32))
    assert grid.shape == (64, 64)
    assert (grid[:, :16] == -1).all() and (grid[:, 48:] == -1).all()
    np.testing.assert_allclose(grid[:, 16:48], 1.0, atol=1e-6)


@pytest.mark.parametrize("shape,size", [((40, 24), 64), ((300, 170), 128), ((64, 64), 64)])
def test_label_round_trip_returns_to_original_size(shape, size):
    lab = np.zeros(shape, np.uint8)
    nx, ny = shape
    lab[nx // 10: nx // 2, ny // 8: ny // 2] = 1
    lab[nx // 2 + 2: nx - 3, ny // 2 + 2: ny - 2] = 2
    g = GridMap(shape=shape, size=size)
    on_grid = g.label_to_grid(lab, 3)
    probs = np.eye(3, dtype=np.float32)[on_grid].transpose(2, 0, 1)
    back = g.probs_from_grid(probs).argmax(0)
    assert back.shape == shape
    agree = (back == lab).mean()
    if shape == (size, size):
        assert agree == 1.0  # no resampling at all
    else:
        assert agree > 0.97
    for c in (1, 2):  # each class survives with about its size
        assert abs(int((back == c).sum()) - int((lab == c).sum())) <= 0.1 * (lab == c).sum()


def test_grid_rejects_wrong_shapes():
    g = GridMap(shape=(10, 20), size=32)
    with pytest.raises(ValueError, match="expected"):
        g.image_to_grid(np.zeros((20, 10), np.float32))
    with pytest.raises(ValueError, match="probabilities"):
        g.probs_from_grid(np.zeros((3, 16, 16), np.float32))


# ---- orientation: rotated slices, test-time augmentation -------------------------------------


@pytest.mark.parametrize("tta", ["none", "flip", "dihedral"])
def test_prediction_of_rotated_slice_is_in_its_own_orientation(tta):
    img, lab = blob_slice(32, 32)
    prof = external_profile("smoke", grid_size=32, patch_size=(32, 32), tta=tta)
    net = PixelNet()
    for k in range(4):  # the same slice stored turned by k x 90 degrees
        im_k, lab_k = np.rot90(img, k).T.copy(), np.rot90(lab, k).T.copy()
        s = SliceImage(f"r{k}", im_k, lab_k, Path("x.png"), Path("y.png"))
        pred = predict_slices(net, {s.slice_id: s}, prof)[s.slice_id]
        np.testing.assert_array_equal(pred, lab_k)


def test_prediction_of_non_square_slice_maps_back(tmp_path):
    img, lab = blob_slice(24, 40)
    write_slice(tmp_path, "w", img, lab)
    write_slice(tmp_path, "h", img.T.copy(), lab.T.copy())  # the same slice turned on its side
    slices = read_slice_folder(tmp_path)
    prof = external_profile("smoke", grid_size=64, patch_size=(64, 64), tta="dihedral")
    preds = predict_slices(PixelNet(), slices, prof)
    for sid, s in slices.items():
        assert preds[sid].shape == s.shape
        assert (preds[sid] == s.label).mean() > 0.97


def test_training_case_holds_the_four_rotations():
    img, lab = blob_slice(32, 32)
    s = SliceImage("a", img.T.copy(), lab.T.copy(), Path("a.png"), Path("a.png"))
    prof = external_profile("smoke", grid_size=32, patch_size=(32, 32))
    case = training_case(s, prof)
    assert case.image.shape == (32, 32, 4) and case.label.shape == (32, 32, 4)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    for k in range(4):
        np.testing.assert_array_equal(case.label[:, :, k], np.rot90(lab.T, k))
    flat = training_case(s, external_profile(prof, rotations=False))
    assert flat.image.shape == (32, 32, 1)


# ---- scores ----------------------------------------------------------------------------------


def test_scores_mean_and_pooled_by_hand():
    # slice a: GGO ref 4 px, pred 2 px inside -> Dice 2*2/6 = 0.667; consolidation absent, 1 false px
    # slice b: GGO ref 2, pred 2, overlap 1 -> 0.5; consolidation ref 2 pred 2 exact -> 1.0
    ref_a = np.array([[1, 1, 1, 1, 0, 0]], np.uint8)
    pred_a = np.array([[1, 1, 0, 0, 0, 2]], np.uint8)
    ref_b = np.array([[1, 1, 0, 2, 2, 0]], np.uint8)
    pred_b = np.array([[0, 1, 1, 2, 2, 0]], np.uint8)
    sl = {k: SliceImage(k, np.zeros_like(r), r, Path(k), Path(k)) for k, r in (("a", ref_a), ("b", ref_b))}
    df = score_slices({"a": pred_a, "b": pred_b}, sl)
    assert df.set_index("slice_id").loc["a", "dice_ggo"] == pytest.approx(2 / 3)
    assert math.isnan(df.set_index("slice_id").loc["a", "dice_consolidation"])
    s = summarize_scores(df, n_boot=200)
    assert s["dice_ggo"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert s["pooled_dice_ggo"] == pytest.approx(2 * (2 + 1) / (6 + 4))
    assert s["dice_consolidation"] == pytest.approx(1.0)
    assert s["n_excluded_consolidation"] == 1
    assert s["pooled_dice_consolidation"] == pytest.approx(2 * 2 / (1 + 2 + 2))  # the false pixel counts
    with pytest.raises(ValueError, match="map the prediction back"):
        score_slices({"a": pred_a[:, :5]}, sl)
    # lesion as one class: a: ref 4 px, pred 3 px (2 GGO inside, 1 consolidation outside) -> 2*2/7;
    # b: ref {0,1,3,4}, pred {1,2,3,4} -> 2*3/8; the class label does not matter, only lesion or not
    assert df.set_index("slice_id").loc["a", "dice_lesion"] == pytest.approx(4 / 7)
    assert s["dice_lesion"] == pytest.approx((4 / 7 + 6 / 8) / 2) and s["n_lesion"] == 2
    assert s["pooled_dice_lesion"] == pytest.approx(2 * (2 + 3) / (7 + 8))
    alone = summarize_scores(df.drop(columns=[c for c in df if c.endswith("_lesion")]), n_boot=200)
    assert alone["dice_ggo_ci"] == s["dice_ggo_ci"] and "dice_lesion" not in alone   # the classes' intervals unchanged
    table = lesion_table({"cv": s, "test": None})
    assert list(table.index[-2:]) == ["published: Inf-Net (test part, one class)",
                                      "published: Semi-Inf-Net (test part, one class)"]
    assert table.iloc[0]["Dice lesion (mean over slices)"].startswith(f"{s['dice_lesion']:.3f} [")
    assert lesion_table({"cv": alone, "test": None}) is None          # a summary written before lesion was scored


def test_profiles_are_validated():
    p = external_profile("cpu")
    assert p.num_folds == 5 and p.name == "external-cpu" and p.extra["grid_size"] % 8 == 0
    with pytest.raises(ValueError, match="multiple of 8"):
        external_profile("cpu", grid_size=250)
    with pytest.raises(ValueError, match="larger than grid_size"):
        external_profile("cpu", grid_size=128, patch_size=(192, 192))
    with pytest.raises(ValueError, match="tta"):
        external_profile("cpu", tta="all")
    with pytest.raises(ValueError, match="Unknown external-check profile"):
        external_profile("huge")


def test_results_table_sets_published_rows_beside():
    summ = {"cv": {"n_slices": 50, "dice_ggo": 0.7, "dice_ggo_ci": [0.6, 0.8], "dice_consolidation": 0.5,
                   "dice_consolidation_ci": [float("nan"), float("nan")], "pooled_dice_ggo": 0.75,
                   "pooled_dice_ggo_ci": [0.7, 0.8], "pooled_dice_consolidation": 0.6,
                   "pooled_dice_consolidation_ci": [0.5, 0.7]}, "test": None}
    t = results_table(summ)
    assert len(t) == 1 + len(PUBLISHED)
    assert t.iloc[0]["Dice GGO (mean over slices)"] == "0.700 [0.600, 0.800]"
    assert t.iloc[0]["Dice consolidation (mean over slices)"] == "0.500"
    assert t.loc["published: FSS-2019-nCov (test part)", "Dice GGO (mean over slices)"] == "0.679"


# ---- the chapter, end to end on the real folder (smoke profile) -------------------------------


def _run_chapter(tmp_path, **params):
    from sscild.book.runner import run_notebook

    out = tmp_path / "A1_external.ipynb"
    run_notebook(REPO / "notebooks" / "A1_external.py", out, parameters=params, cwd=REPO)
    return json.loads(out.read_text())


def _text(nb) -> str:
    parts = []
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            data = o.get("data", {})
            parts.append("".join(data.get("text/markdown", "")) + "".join(data.get("text/html", ""))   # table captions
                         + "".join(o.get("text", "")))
    return "\n".join(parts)


def test_chapter_says_how_to_get_data_when_absent(tmp_path):
    nb = _run_chapter(tmp_path, profile="smoke", train_dir=str(tmp_path / "nowhere"), out_dir=str(tmp_path / "ext"))
    text = _text(nb)
    assert "Not run: the training folder is absent" in text and "COVID-SemiSeg" in text
    assert not (tmp_path / "ext" / "summary.json").exists()


@pytest.mark.slow
def test_chapter_smoke_on_real_slices(tmp_path):
    if not (COVID_TRAIN / "images").is_dir():
        pytest.skip(f"COVID-SemiSeg training slices not available ({COVID_TRAIN} is absent; "
                    "they live in ../shared/data beside the checkout)")
    out = tmp_path / "ext"
    from sscild.book.chapters import external as ch
    from sscild.external.__main__ import main as external_main

    with pytest.raises(FileNotFoundError, match="make external"):      # the page reads the check, never runs it
        ch.read_check(ch.setup("smoke", train_dir=str(COVID_TRAIN), out_dir=str(out)))
    unl_dir = COVID_TRAIN.parent / "unlabelled"
    assert external_main(["run", str(COVID_TRAIN), str(out), "--profile", "smoke"]
                         + (["--unlabelled-dir", str(unl_dir)] if (unl_dir / "images").is_dir() else [])) == 0
    nb = _run_chapter(tmp_path, profile="smoke", train_dir=str(COVID_TRAIN), out_dir=str(out))
    with pytest.raises(ValueError, match="other settings"):            # a check of other folders is refused
        ch.read_check(ch.setup("smoke", train_dir=str(COVID_TRAIN), out_dir=str(out), unlabelled_dir="none"))
    summ = json.loads((out / "summary.json").read_text())
    assert set(summ) >= {"cv", "test", "recipe"} and summ["test"] is None
    cv = summ["cv"]
    for key in ("dice_ggo", "dice_consolidation", "pooled_dice_ggo", "pooled_dice_consolidation"):
        assert 0.0 <= cv[key] <= 1.0, key
        lo, hi = cv[f"{key}_ci"]
        assert lo <= hi or (math.isnan(lo) and math.isnan(hi))
    assert cv["n_slices"] == 50 and cv["folds"] == 5
    assert summ["recipe"]["folds"] == 5 and summ["recipe"]["profile"] == "external-smoke"
    # the profile pretrains, so the chapter hands it the unlabelled slices beside the checkout
    unl = COVID_TRAIN.parent / "unlabelled" / "images"
    if unl.is_dir():
        assert summ["training"]["pretrained"]["slices"] == len(list(unl.iterdir()))
        assert "unlabelled slices** from `unlabelled` for pretraining" in _text(nb)
    # every slice was predicted exactly once, out of fold, at its own size
    scores = pd.read_csv(out / "cv" / "scores.csv", dtype={"slice_id": str})
    assert sorted(scores["slice_id"]) == sorted(p.stem for p in (COVID_TRAIN / "images").iterdir())
    splits = json.loads((out / "cv" / "splits.json").read_text())
    for k, fold in enumerate(splits):
        assert set(scores.loc[scores["fold"] == k, "slice_id"]) == set(fold["val"])
        assert not set(fold["val"]) & set(fold["train"])
    one = scores.iloc[0]
    with Image.open(out / "cv" / "predictions" / f"{one['slice_id']}.png") as im:
        assert im.size == (one["width"], one["height"])
    assert (out / "figures" / "external_examples.png").exists()
    assert "Dice: this recipe beside the published results" in _text(nb)
    # the smoke profile has the cpu recipe's two stages: both are shown side by side, with the screen
    assert "Cross-validated Dice of the two stages" in _text(nb)
    assert "Second screen, fold 0" in _text(nb)
    # the recorded third screen and the five-fold self-training comparison are shown from their records
    assert "Third screen, folds 0-2" in _text(nb)
    assert "Supervised and self-trained side by side, five folds" in _text(nb)
    assert "Gain from the unlabelled slices over the control" in _text(nb)
    assert (out / "cv" / "scores_supervised.csv").exists() and summ["cv_supervised"]["n_slices"] == 50


def test_run_external_with_test_folder_on_tiny_slices(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for i in range(n):
            img, lab = blob_slice(24 + 2 * i, 40)
            noisy = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255)
            write_slice(tmp_path / split, f"{split}{i}", noisy, lab)
    prof = external_profile("smoke", grid_size=32, patch_size=(32, 32), iterations=2, batch_size=2, num_folds=2)
    summ = run_external(tmp_path / "train", tmp_path / "out", test_dir=tmp_path / "test", profile=prof,
                        n_boot=100, log=None)
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["test"]["n_slices"] == 2 and on_disk["cv"]["n_slices"] == 6 and on_disk["cv"]["folds"] == 2
    for part in ("cv", "test"):
        for key in ("dice_ggo", "dice_consolidation", "pooled_dice_ggo", "pooled_dice_consolidation"):
            assert 0.0 <= summ[part][key] <= 1.0
    assert (tmp_path / "out" / "test" / "model" / "model_final.pt").exists()
    assert sorted(p.name for p in (tmp_path / "out" / "test" / "predictions").iterdir()) == ["test0.png", "test1.png"]
    # a re-run reuses the finished models (same slices, same recipe): nothing is trained again
    before = (tmp_path / "out" / "cv" / "fold_0" / "model_final.pt").stat().st_mtime_ns
    run_external(tmp_path / "train", tmp_path / "out", profile=prof, n_boot=100, log=None)
    assert (tmp_path / "out" / "cv" / "fold_0" / "model_final.pt").stat().st_mtime_ns == before
    # a test slice identical to a training slice is refused
    shutil.copy(tmp_path / "train" / "images" / "train0.png", tmp_path / "test" / "images" / "dup.png")
    shutil.copy(tmp_path / "train" / "labels" / "train0.png", tmp_path / "test" / "labels" / "dup.png")
    with pytest.raises(InputError, match=r"identical to training slices.*\('dup', 'train0'\)"):
        run_external(tmp_path / "train", tmp_path / "out", test_dir=tmp_path / "test", profile=prof, log=None)


def test_side_by_side_training_gives_the_models_of_one_after_another(tmp_path, monkeypatch):
    """Folds and the test model train in worker processes, one thread each; a model depends only on
    its slices, recipe and seed, so the weights equal those trained one after another in this process."""
    _tiny_parts(tmp_path)
    prof = external_profile("smoke", grid_size=32, patch_size=(32, 32), iterations=3, batch_size=2, num_folds=2)
    monkeypatch.setenv("SSCILD_THREADS", "2")
    par = run_external(tmp_path / "train", tmp_path / "par", test_dir=tmp_path / "test", profile=prof,
                       n_boot=100, log=None, jobs=2)
    assert par["training"] | {"seconds": 0} == {"models": 3, "trained_now": 3, "at_once": 2, "threads_each": 1,
                                                "seconds": 0, "pretrained": None}
    assert not any(f["reused"] for f in par["cv"]["per_fold"]) and par["test"]["reused"] is False
    monkeypatch.setenv("SSCILD_THREADS", "1")
    seq = run_external(tmp_path / "train", tmp_path / "seq", test_dir=tmp_path / "test", profile=prof,
                       n_boot=100, log=None)
    assert seq["training"]["at_once"] == 1
    for part in ("cv/fold_0", "cv/fold_1", "test/model"):
        a = torch.load(tmp_path / "par" / part / "model_final.pt", weights_only=False)["model"]
        b = torch.load(tmp_path / "seq" / part / "model_final.pt", weights_only=False)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert par["cv"]["dice_ggo"] == seq["cv"]["dice_ggo"]
    # a second run finds every model finished and says so
    again = run_external(tmp_path / "train", tmp_path / "par", test_dir=tmp_path / "test", profile=prof,
                         n_boot=100, log=None, jobs=2)
    assert again["training"]["trained_now"] == 0 and all(f["reused"] for f in again["cv"]["per_fold"])


def test_training_jobs_share_the_threads():
    assert training_jobs(6, 2, cuda=False) == (2, 1)
    assert training_jobs(1, 2, cuda=False) == (1, 2)
    assert training_jobs(6, 16, cuda=True) == (1, 16)
    assert training_jobs(6, 2, jobs=1, cuda=False) == (1, 2)
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        training_jobs(6, 2, jobs=0)


def test_recorded_gpu_run_table(tmp_path):
    t = recorded_gpu_run()
    assert t is not None, "benchmarks/external_paper_gpu.json should be in the repository"
    assert [i for i in t.index[:5]] == ["0", "1", "2", "3", "4"]
    assert t.attrs["meta"]["profile"] == "external-paper"
    assert t.loc["all 50 slices (mean [95% CI])", "Dice GGO"].count("[") == 1
    assert recorded_gpu_run(tmp_path / "absent.json") is None


def test_settings_of_the_former_name_read_in_the_studys_words(tmp_path):
    """The former ``extra["semi"]`` ("off" / "fine-tune" / "self-training") reads as ``semi_supervised`` and
    ``second_stage``, in a profile, an override and a finished model's recorded key (reused, not retrained)."""
    cpu = external_profile("cpu")
    assert cpu.semi_supervised == "pretrain" and cpu.pretrain_steps == 2000 and cpu.extra["second_stage"]
    assert not {"semi", "semi_supervised", "pretrain_steps"} & set(cpu.extra)
    for old, new in (({"semi": "fine-tune"}, {}), ({"semi": "off"}, {"second_stage": False}),
                     ({"semi": "self-training"}, {"semi_supervised": "self-training", "second_stage": False}),
                     ({"semi": "fine-tune", "pretrain_steps": 0}, {"semi_supervised": "off", "pretrain_steps": 0})):
        a, b = external_profile("cpu", **old), external_profile("cpu", **new)
        assert profile_key(a) == profile_key(b) and recipe_dict(a, 1) == recipe_dict(b, 1), old
        # a profile as the former code built it: the study's fields off, the check's own settings in extra
        raw = cpu.with_overrides(semi_supervised="off", pretrain_steps=0, extra={
            **{k: v for k, v in cpu.extra.items() if k != "second_stage"}, "pretrain_steps": 2000, **old})
        assert profile_key(raw) == profile_key(b) and check_extra(raw) == check_extra(b), old
    with pytest.raises(ValueError, match="former name"):
        external_profile("cpu", semi="sometimes")
    with pytest.raises(ValueError, match="semi_supervised must be one of pretrain, self-training, consistency, off"):
        external_profile("cpu", semi_supervised="fine-tune")
    # a model whose recipe_key.json says "fine-tune" is found finished
    _tiny_parts(tmp_path)
    train = read_slice_folder(tmp_path / "train")
    prof = external_profile("smoke", grid_size=32, patch_size=(32, 32), iterations=2, batch_size=2)
    _, _, reused = train_or_load(train, prof, tmp_path / "m", key=0, progress=False, desc="m")
    assert not reused
    rec = json.loads((tmp_path / "m" / "recipe_key.json").read_text())
    semi = rec["recipe"]["semi"]
    assert semi.pop("semi_supervised") == "pretrain" and semi.pop("second_stage") is True
    rec["recipe"]["semi"] = {"semi": "fine-tune", **semi}
    (tmp_path / "m" / "recipe_key.json").write_text(json.dumps(rec))
    assert recorded_ident(rec)["recipe"] == profile_key(prof)
    assert train_or_load(train, prof, tmp_path / "m", key=0, progress=False, desc="m")[2]


def test_recipe_search_record_and_the_chapters_reading_of_it(tmp_path):
    from sscild.book.chapters.external import recipe_search

    t = recipe_search()
    assert t is not None, "benchmarks/external_recipe_search.json should be in the repository"
    assert len(t) == 14 and t.index[0] == "chosen recipe" and t.loc["chosen recipe", "dice_ggo"] == 0.561
    assert t["train_cpu_seconds"].iloc[0] == 283 and t["train_cpu_seconds"].isna().sum() == 1  # one not recorded
    from sscild.external.search import SEARCH_VARIANTS

    assert set(t.index) <= set(SEARCH_VARIANTS)
    assert recipe_search(tmp_path / "absent.json") is None


def test_recipe_key_tells_training_settings_apart():
    base = external_profile("smoke")
    keys = {json.dumps(profile_key(p), sort_keys=True) for p in (
        base, base.with_overrides(batch_dice=True), base.with_overrides(intensity_aug="strong"),
        base.with_overrides(learning_rate=1e-4))}
    assert len(keys) == 4
    # test-time augmentation does not change the trained model
    assert profile_key(base) == profile_key(external_profile(base, tta="none"))
    # the architecture enters the key only when it is not the residual U-Net every earlier run had, so those
    # runs keep their keys (and their trained models)
    assert "architecture" not in profile_key(base)
    plain = external_profile(base, architecture="plain")
    assert profile_key(plain)["architecture"] == "plain" and profile_key(plain) != profile_key(base)
    # and so do the pretrained weights, which belong to one network
    from sscild.external.pretrain import pretrain_key
    assert "architecture" not in pretrain_key(base, {}) and pretrain_key(plain, {})["architecture"] == "plain"


# ---- unlabelled slices and self-training --------------------------------------------------------


def _tiny_parts(root: Path, *, n_train: int = 6, n_test: int = 2, n_unlabelled: int = 4) -> None:
    """Labelled training and test slices and an unlabelled folder, all with distinct pixels."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test), ("unlabelled", n_unlabelled)):
        for i in range(n):
            img, lab = blob_slice(24 + 2 * i, 40)
            noisy = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255)
            write_slice(root / split, f"{split}{i}", noisy, None if split == "unlabelled" else lab)
    (root / "unlabelled" / "labels").rmdir()


def _semi_profile(**kw):
    return external_profile("smoke", grid_size=32, patch_size=(32, 32), iterations=2, batch_size=2, num_folds=2,
                            semi_supervised="self-training", student_iterations=2, **kw)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_unlabelled_folder_errors_name_the_file_and_change_nothing(tmp_path):
    _tiny_parts(tmp_path)
    unl = tmp_path / "unlabelled"
    assert all(s.label is None for s in read_unlabelled_folder(unl).values())
    prof = _semi_profile()
    cases = {}
    # an unreadable image
    bad = tmp_path / "bad"
    shutil.copytree(unl, bad)
    (bad / "images" / "broken.jpg").write_bytes(b"not an image")
    cases["unreadable"] = (bad, r"broken\.jpg cannot be read")
    # a labels file inside the unlabelled folder
    labelled = tmp_path / "labelled"
    shutil.copytree(unl, labelled)
    (labelled / "labels").mkdir()
    Image.fromarray(np.zeros((24, 40), np.uint8)).save(labelled / "labels" / "unlabelled0.png")
    cases["labels"] = (labelled, r"holds labels \(.*unlabelled0\.png")
    # an empty folder
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    cases["empty"] = (empty, r"holds no .*files")
    for what, (folder, pattern) in cases.items():
        before = _tree(folder)
        out = tmp_path / f"out_{what}"
        with pytest.raises(InputError, match=pattern):
            run_external(tmp_path / "train", out, unlabelled_dir=folder, profile=prof, n_boot=100, log=None)
        assert _tree(folder) == before, what
        assert not out.exists(), what


def test_held_out_image_planted_among_unlabelled_is_refused(tmp_path):
    _tiny_parts(tmp_path)
    prof = _semi_profile()
    for part, name in (("train", "train3"), ("test", "test1")):
        planted = tmp_path / "unlabelled" / "images" / f"copy_of_{name}.png"
        shutil.copy(tmp_path / part / "images" / f"{name}.png", planted)
        with pytest.raises(InputError, match=rf"copy_of_{name}\.png = .*{part}/images/{name}\.png \({part}"):
            run_external(tmp_path / "train", tmp_path / "out", test_dir=tmp_path / "test",
                         unlabelled_dir=tmp_path / "unlabelled", profile=prof, n_boot=100, log=None)
        planted.unlink()
    assert not (tmp_path / "out").exists()
    # cross-validation alone checks the training part too
    shutil.copy(tmp_path / "train" / "images" / "train0.png", tmp_path / "unlabelled" / "images" / "again.png")
    with pytest.raises(InputError, match=r"again\.png = .*train0\.png \(training part\)"):
        cross_validate(read_slice_folder(tmp_path / "train"), tmp_path / "cv", prof,
                       unlabelled=read_unlabelled_folder(tmp_path / "unlabelled"), log=None)


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_changing_a_held_out_slice_does_not_change_its_folds_teacher(tmp_path):
    _tiny_parts(tmp_path)
    prof = _semi_profile()
    unl = read_unlabelled_folder(tmp_path / "unlabelled")
    train = read_slice_folder(tmp_path / "train")
    scores, info = cross_validate(train, tmp_path / "a", prof, folds=[0], unlabelled=unl, log=None)
    fold0 = info["splits"][0]
    held, trained = fold0["val"][0], fold0["train"][0]
    assert set(scores["slice_id"]) == set(fold0["val"]) and info["semi"]
    assert len(info["supervised_scores"]) == len(scores)
    teacher = _weights(tmp_path / "a" / "fold_0" / "teacher" / "model_final.pt")
    student = _weights(tmp_path / "a" / "fold_0" / "model_final.pt")
    assert not _same(teacher, student)  # the student did train on the pseudo-labels

    def changed(sid):
        s = train[sid]
        img = s.image.copy()
        img[: img.shape[0] // 2] = 255 - img[: img.shape[0] // 2]  # same label, other pixels
        return {**train, sid: SliceImage(sid, img, s.label, s.image_path, s.label_path)}

    cross_validate(changed(held), tmp_path / "b", prof, folds=[0], unlabelled=unl, log=None)
    assert _same(teacher, _weights(tmp_path / "b" / "fold_0" / "teacher" / "model_final.pt"))
    assert _same(student, _weights(tmp_path / "b" / "fold_0" / "model_final.pt"))
    # the check can fail: changing a *training* slice of the fold does change its teacher
    cross_validate(changed(trained), tmp_path / "c", prof, folds=[0], unlabelled=unl, log=None)
    assert not _same(teacher, _weights(tmp_path / "c" / "fold_0" / "teacher" / "model_final.pt"))


def test_self_training_run_reports_supervised_beside_semi(tmp_path):
    _tiny_parts(tmp_path)
    prof = _semi_profile()
    summ = run_external(tmp_path / "train", tmp_path / "out", test_dir=tmp_path / "test",
                        unlabelled_dir=tmp_path / "unlabelled", profile=prof, n_boot=100, log=None)
    assert summ["data"]["n_unlabelled"] == 4 and summ["cv_supervised"]["n_slices"] == 6
    assert summ["recipe"]["semi_supervised"].startswith("self-training")
    fold = json.loads((tmp_path / "out" / "cv" / "fold_0" / "train_summary.json").read_text())
    assert fold["pseudo"]["slices"] == 4 and fold["pseudo_cases"] == 4 and fold["init"] == "given state"
    assert (tmp_path / "out" / "test" / "model" / "teacher" / "model_final.pt").exists()
    # with self-training and pretraining off, the unlabelled folder is not used at all
    off = run_external(tmp_path / "train", tmp_path / "off", unlabelled_dir=tmp_path / "unlabelled",
                       profile=external_profile(prof, semi_supervised="off", second_stage=False), n_boot=100,
                       log=None)
    assert off["cv_supervised"] is None and off["data"]["n_unlabelled"] is None


def test_masked_loss_ignores_pseudo_label_pixels():
    from sscild.model.selftrain import IGNORE_LABEL, MaskedDiceCE

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 1, 4, 4))
    y[:, :, :2] = IGNORE_LABEL
    loss = MaskedDiceCE(batch=False)
    other = logits.clone()
    other[:, :, :2] = torch.randn(2, 3, 2, 4) * 5  # change only the ignored pixels
    assert torch.allclose(loss(logits, y), loss(other, y))
    # without ignored pixels it is MONAI's DiceCELoss
    from monai.losses import DiceCELoss

    y2 = torch.randint(0, 3, (2, 1, 4, 4))
    ref = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)(logits, y2)
    assert torch.allclose(loss(logits, y2), ref, atol=1e-6)


def test_test_part_ensemble_averages_the_fold_models(tmp_path):
    _tiny_parts(tmp_path)
    prof = external_profile("smoke", grid_size=32, patch_size=(32, 32), iterations=2, batch_size=2, num_folds=2,
                            test_ensemble=True)
    summ = run_external(tmp_path / "train", tmp_path / "out", test_dir=tmp_path / "test", profile=prof,
                        n_boot=100, log=None)
    assert summ["test"]["models"] == 3 and "2 cross-validation fold models" in summ["recipe"]["test_prediction"]
    # the mean of identical networks is that network
    net = PixelNet()
    test = read_slice_folder(tmp_path / "test")
    one = predict_slices(net, test, prof, return_probs=True)
    two = predict_slices(MeanProb([net, net]), test, prof, return_probs=True)
    assert all(np.allclose(one[s], two[s], atol=1e-5) for s in test)
    assert profile_key(prof) == profile_key(external_profile(prof, test_ensemble=False))


def test_members_add_networks_to_each_model_and_keep_the_first(tmp_path):
    """``members`` trains further networks per model with other seed keys; the first is the one-member
    run's network (reused, not trained again), and each model predicts with the mean of its members."""
    _tiny_parts(tmp_path)
    one = external_profile("smoke", grid_size=32, patch_size=(32, 32), iterations=2, batch_size=2, num_folds=2,
                           test_ensemble=True)
    two = external_profile(one, members=2)
    assert profile_key(one) == profile_key(two) and check_extra(two)["members"] == 2
    for bad in (0, 9, True, 1.5):
        with pytest.raises(ValueError, match="members"):
            external_profile(one, members=bad)
    out = tmp_path / "out"
    first = run_external(tmp_path / "train", out, test_dir=tmp_path / "test", profile=one, n_boot=100, log=None)
    stamp = (out / "cv" / "fold_0" / "model_final.pt").stat().st_mtime_ns
    summ = run_external(tmp_path / "train", out, test_dir=tmp_path / "test", profile=two, n_boot=100, log=None)
    assert (out / "cv" / "fold_0" / "model_final.pt").stat().st_mtime_ns == stamp
    assert summ["training"]["models"] == 6 and summ["training"]["trained_now"] == 3
    assert summ["test"]["models"] == 6 and first["test"]["models"] == 3 and summ["recipe"]["members"] == 2
    assert "mean of 2 networks" in summ["recipe"]["test_prediction"]
    for k, row in enumerate(summ["cv"]["per_fold"]):
        a, b = (json.loads((f / "train_summary.json").read_text())
                for f in (out / "cv" / f"fold_{k}", out / "cv" / f"fold_{k}" / "member_1"))
        assert (a["key"], b["key"]) == (k, 100 + k) and row["reused"] is False
        assert row["train_seconds"] == pytest.approx(a["seconds"] + b["seconds"], abs=0.02)
    assert json.loads((out / "test" / "model" / "member_1" / "train_summary.json").read_text())["key"] == 102
    w0, w1 = (_weights(out / "cv" / "fold_0" / f / "model_final.pt") for f in (".", "member_1"))
    assert not _same(w0, w1)
    # fold 0's out-of-fold masks are the decision on the mean probabilities of its two networks
    train = read_slice_folder(tmp_path / "train")
    held = {s: train[s] for s in json.loads((out / "cv" / "splits.json").read_text())[0]["val"]}
    nets = [load_fold_model(out / "cv" / "fold_0" / f / "model_final.pt")[0] for f in (".", "member_1")]
    probs = [predict_slices(n, held, two, return_probs=True) for n in nets]
    for sid in held:
        mean = (probs[0][sid] + probs[1][sid]) / 2
        assert np.array_equal(read_label(out / "cv" / "predictions" / f"{sid}.png"), decide(mean))


def test_second_stage_trains_two_stages_without_unlabelled_slices(tmp_path):
    _tiny_parts(tmp_path)
    prof = external_profile(_semi_profile(), semi_supervised="off", second_stage=True)
    summ = run_external(tmp_path / "train", tmp_path / "out", unlabelled_dir=tmp_path / "unlabelled",
                        profile=prof, n_boot=100, log=None)
    assert summ["data"]["n_unlabelled"] is None and summ["cv_supervised"]["n_slices"] == 6
    fold = json.loads((tmp_path / "out" / "cv" / "fold_0" / "train_summary.json").read_text())
    assert fold["pseudo_cases"] == 0 and fold["init"] == "given state" and fold["unlabelled_slices"] == 0
    assert summ["recipe"]["semi_supervised"].startswith("off; the supervised model is trained")


def test_pseudo_labels_keep_confident_pixels_and_lesion_slices():
    from sscild.model.selftrain import IGNORE_LABEL

    img, lab = blob_slice()
    s = SliceImage("u", img.T.copy(), None, Path("u.png"), None)
    prof = external_profile("smoke", grid_size=32, patch_size=(32, 32), semi_supervised="self-training",
                            pseudo_tta="none", pseudo_confidence=0.9)
    cases, stats = pseudo_label_cases(PixelNet(), {"u": s}, prof)
    lab_u = cases["u:u"].label[..., 0]
    assert set(np.unique(lab_u)) <= {0, 1, 2, IGNORE_LABEL} and stats["slices"] == 1
    assert (lab_u == 1).any() and (lab_u == 2).any()
    # an impossible lesion share drops the slice
    strict = external_profile(prof, pseudo_min_lesion=0.99)
    assert pseudo_label_cases(PixelNet(), {"u": s}, strict)[0] == {}


def test_semi_screen_table_from_the_record(tmp_path):
    t = semi_screen(n_boot=200)
    assert t is not None, "benchmarks/external_semi_screen.csv should be in the repository"
    assert len(t) == 4 and t.index[0].startswith("supervised") and t.index[-1].startswith("control")
    col = "gain from the unlabelled slices (vs control), GGO [95% CI]"
    assert t.loc[t.index[1], col].count("[") == 1 and t.loc[t.index[-1], col] == ""
    # a hand-made record: the second variant is the first plus 0.1 GGO on every slice
    rec = pd.DataFrame({"variant": ["supervised a"] * 3 + ["control b"] * 3, "slice_id": ["1", "2", "3"] * 2,
                        "dice_ggo": [0.5, 0.6, 0.7, 0.6, 0.7, 0.8], "dice_consolidation": [0.2, np.nan, 0.4] * 2,
                        "inter_ggo": 1, "pred_ggo": 2, "ref_ggo": 2, "inter_consolidation": 0,
                        "pred_consolidation": 1, "ref_consolidation": 1})
    rec.to_csv(tmp_path / "r.csv", index=False)
    t = semi_screen(tmp_path / "r.csv", n_boot=200)
    assert t.loc["control b", "gain over supervised, GGO [95% CI]"].startswith("+0.100")
    assert semi_screen(tmp_path / "absent.csv") is None


def test_lever_screen_table_and_its_recorder(tmp_path):
    """scripts/record_screen.py keeps the chosen folds' slices of each variant; the table pairs them."""
    import subprocess
    import sys

    def scores(ggo, folds=(0, 0, 1, 2)):
        return pd.DataFrame({"slice_id": ["1", "2", "3", "4"], "fold": list(folds), "dice_ggo": ggo,
                             "dice_consolidation": [0.2, np.nan, 0.4, 0.3], "inter_ggo": 1, "pred_ggo": 2,
                             "ref_ggo": 2, "inter_consolidation": 0, "pred_consolidation": 1, "ref_consolidation": 1})

    scores([0.5, 0.6, 0.7, 0.1]).to_csv(tmp_path / "base.csv", index=False)
    scores([0.6, 0.7, 0.8, 0.9]).to_csv(tmp_path / "v.csv", index=False)
    rec = tmp_path / "rec.csv"
    cmd = [sys.executable, str(REPO / "scripts" / "record_screen.py"), str(rec), "--folds", "0,1",
           f"as it was={tmp_path / 'base.csv'}", f"more steps={tmp_path / 'v.csv'}"]
    subprocess.run(cmd, check=True, capture_output=True)
    t = lever_screen(rec, n_boot=200)
    assert list(t.index) == ["as it was", "more steps"]
    # fold 2's slice (GGO 0.1 -> 0.9) is not in the record: the gain is +0.1 on the three kept slices
    assert t.loc["more steps", "gain over the first row, GGO [95% CI]"].startswith("+0.100")
    assert t.loc["as it was", "Dice GGO [95% CI]"].startswith("0.600")
    # a variant scored on other slices is refused, by the recorder and by the table
    scores([0.6, 0.7, 0.8, 0.9], folds=(0, 0, 2, 2)).to_csv(tmp_path / "v.csv", index=False)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "other slices than the baseline" in r.stderr
    bad = pd.read_csv(rec, dtype={"slice_id": str})
    bad = bad[~((bad["variant"] == "more steps") & (bad["slice_id"] == "1"))]
    with pytest.raises(ValueError, match="scored on other slices"):
        screen_table(bad, n_boot=200)
    assert lever_screen(tmp_path / "absent.csv") is None


def test_pretraining_reads_unlabelled_slices_only_and_is_reused(tmp_path):
    """Self-supervised pretraining sees no labelled slice: changing a training slice leaves the
    pretrained weights as they were; a planted labelled slice among the unlabelled ones is refused;
    asking for pretraining without unlabelled slices names the fix."""
    _tiny_parts(tmp_path)
    prof = external_profile("smoke", grid_size=32, patch_size=(32, 32), iterations=2, batch_size=2, num_folds=2,
                            pretrain_steps=4)
    summ = run_external(tmp_path / "train", tmp_path / "a", unlabelled_dir=tmp_path / "unlabelled", profile=prof,
                        n_boot=50, log=None, jobs=1)
    assert summ["recipe"]["pretraining"].startswith("4 steps") and summ["data"]["n_unlabelled"] == 4
    assert summ["training"]["pretrained"]["steps"] == 4 and summ["training"]["pretrained"]["slices"] == 4
    state_a = torch.load(tmp_path / "a" / "pretrained" / "pretrained.pt", weights_only=False)
    fold = json.loads((tmp_path / "a" / "cv" / "fold_0" / "teacher" / "recipe_key.json").read_text())
    assert fold["init"].startswith("pretrained:")
    # another training part, same unlabelled slices: the same pretrained network
    img, lab = blob_slice(30, 40)
    write_slice(tmp_path / "train", "train0", 255 - img, lab)
    run_external(tmp_path / "train", tmp_path / "b", unlabelled_dir=tmp_path / "unlabelled", profile=prof,
                 n_boot=50, log=None, jobs=1)
    state_b = torch.load(tmp_path / "b" / "pretrained" / "pretrained.pt", weights_only=False)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    # a second run finds the pretrained network and the folds finished
    before = (tmp_path / "b" / "pretrained" / "pretrained.pt").stat().st_mtime_ns
    again = run_external(tmp_path / "train", tmp_path / "b", unlabelled_dir=tmp_path / "unlabelled", profile=prof,
                         n_boot=50, log=None, jobs=1)
    assert (tmp_path / "b" / "pretrained" / "pretrained.pt").stat().st_mtime_ns == before
    assert again["training"]["trained_now"] == 0
    # a training slice planted among the unlabelled ones: refused before any training
    shutil.copy(tmp_path / "train" / "images" / "train1.png", tmp_path / "unlabelled" / "images" / "planted.png")
    with pytest.raises(InputError, match="planted"):
        run_external(tmp_path / "train", tmp_path / "c", unlabelled_dir=tmp_path / "unlabelled", profile=prof,
                     n_boot=50, log=None, jobs=1)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.pt"))
    # without unlabelled slices the run goes on from a random initialisation and says so
    said = []
    summ = run_external(tmp_path / "train", tmp_path / "d", profile=prof, n_boot=50, log=said.append, jobs=1)
    assert summ["training"]["pretrained"] is None and any("random initialisation" in m for m in said)
    fold = json.loads((tmp_path / "d" / "cv" / "fold_0" / "teacher" / "recipe_key.json").read_text())
    assert "init" not in fold


def test_recorded_screens_name_variants_the_search_can_rerun():
    """Each row of a recorded screen is a variant of SEARCH_VARIANTS (the command re-runs it by name), and
    the screens recorded before pretraining existed re-run without it."""
    from sscild.external.search import SEARCH_VARIANTS

    rec = pd.read_csv(REPO / "benchmarks" / "external_lever_screen.csv", dtype={"slice_id": str})
    assert set(rec["variant"]) <= set(SEARCH_VARIANTS)
    assert lever_screen(n_boot=200).index[0] == "recipe as it was: two stages, 1500 + 1000 iterations"
    for name in set(rec["variant"]):
        want = int(name.split(", ")[-1].split()[0]) if name.startswith("self-supervised pretraining") else 0
        assert external_profile("cpu", **SEARCH_VARIANTS[name]).pretrain_steps == want, name


def _fake_run(folder: Path, profile: str, train_dir: Path, ggo: list[float], cons: list[float], seconds: float):
    """A finished run's summary.json and cv/scores.csv, as `python -m sscild.external run` writes them."""
    (folder / "cv").mkdir(parents=True)
    ids = [f"s{i}" for i in range(len(ggo))]
    pd.DataFrame({"slice_id": ids, "fold": 0, "dice_ggo": ggo, "dice_consolidation": cons}).to_csv(
        folder / "cv" / "scores.csv", index=False)
    cv = {"dice_ggo": float(np.mean(ggo)), "dice_ggo_ci": [0.0, 1.0],
          "dice_consolidation": float(np.mean(cons)), "dice_consolidation_ci": [0.0, 1.0]}
    (folder / "summary.json").write_text(json.dumps({
        "cv": cv, "test": None, "recipe": recipe_dict(external_profile(profile), 2), "seconds": seconds,
        "data": {"train_dir": str(train_dir.resolve()), "test_dir": None, "unlabelled_dir": None}}))


def test_the_appendix_sets_the_profiles_that_ran_side_by_side(tmp_path):
    """Each profile runs into its own folder (run_folder, as make external names it); the page shows the
    runs of the same folders side by side with the paired gain over cpu, and leaves out a run of others."""
    from sscild.book.chapters import external as ch
    from sscild.external.recipe import run_folder

    results, train = tmp_path / "results", tmp_path / "train"
    train.mkdir()
    assert run_folder("cpu", results) == results / "external"
    assert run_folder("long", results) == results / "external-long" == run_folder("external-long", results)
    rng = np.random.default_rng(1)
    base_g, base_c = rng.uniform(0.3, 0.8, 12), rng.uniform(0.2, 0.7, 12)
    _fake_run(results / "external", "cpu", train, list(base_g), list(base_c), 1800)
    chk = ch.ExternalCheck(prof=external_profile("cpu"), settings={}, train_dir=train, test_dir=None,
                           unlabelled_dir=None, out_dir=results / "external", self_training=False,
                           use_unlabelled=False)
    summ = ch.read_check(chk)
    table, words = ch.profile_comparison(chk, summ, n_boot=200)
    assert list(table.index) == ["cpu"] and "EXTERNAL_PROFILE=long" in words and "external-long/" in words
    # a long run of other folders is not this page's
    _fake_run(results / "external-long", "long", tmp_path / "elsewhere", list(base_g), list(base_c), 5000)
    assert list(ch.profile_comparison(chk, summ, n_boot=200)[0].index) == ["cpu"]
    shutil.rmtree(results / "external-long")
    diff = rng.uniform(0.0, 0.06, 12)
    _fake_run(results / "external-long", "long", train, list(base_g + diff), list(base_c - 0.01), 5400)
    table, words = ch.profile_comparison(chk, summ, n_boot=200)
    assert list(table.index) == ["cpu", "long"]
    long = external_profile("long")
    assert table.loc["long", "steps (first + second stage)"] == f"{long.iterations} + {check_extra(long)['student_iterations']}"
    assert table.loc["cpu", "pretraining steps"] == "2000" and table.loc["long", "minutes"] == "90.0"
    gain = table.loc["long", "CV gain over cpu, GGO [95% CI]"]
    assert gain.startswith(f"{diff.mean():+.3f} [") and table.loc["cpu", "CV gain over cpu, GGO [95% CI]"] == ""
    assert table.loc["long", "CV gain over cpu, consolidation [95% CI]"].startswith("-0.010")
    assert f"{diff.mean():+.3f}" in words and "3.0 times the wall time" in words and "12 out-of-fold" in words
    # runs that reused their models (wall time of seconds) are compared by the models' recorded training time
    for folder, secs in ((results / "external", 400.0), (results / "external-long", 560.0)):
        summ_f = json.loads((folder / "summary.json").read_text())
        summ_f["cv"]["per_fold"] = [{"fold": 0, "reused": True, "train_seconds": secs}]
        summ_f["seconds"] = 15.0
        (folder / "summary.json").write_text(json.dumps(summ_f))
    words = ch.profile_comparison(chk, ch.read_check(chk), n_boot=200)[1]
    assert "1.4 times the fold models' training time" in words and "wall time" not in words
    # the long profile's page finds the default run beside it
    chk_long = ch.ExternalCheck(prof=long, settings={}, train_dir=train, test_dir=None, unlabelled_dir=None,
                                out_dir=results / "external-long", self_training=False, use_unlabelled=False)
    assert list(ch.profile_comparison(chk_long, ch.read_check(chk_long), n_boot=200)[0].index) == ["cpu", "long"]


def test_the_fifth_screen_record_and_the_long_profile_it_chose():
    """The budget screen's rows are variants the search re-runs by name, its control comes first, the words
    carry the table's gains, and the long profile is the cpu recipe with exactly the overrides the record
    says were adopted."""
    from sscild.book.chapters import external as ch
    from sscild.external.search import SEARCH_VARIANTS

    rec_t = ch.budget_record()
    if rec_t is None:
        pytest.skip("benchmarks/external_budget_screen.* is not in this checkout")
    table, rec = rec_t
    assert list(table.index)[0] == rec["control"] and set(table.index) == set(rec["variants"])
    assert set(table.index) <= set(SEARCH_VARIANTS)
    words = ch.budget_words(table, rec, lever_t=ch.lever_screen(n_boot=200))
    for name in rec["variants"]:
        if name != rec["control"]:
            assert table.loc[name, "gain over the control, GGO [95% CI]"] in words
    assert rec["adopted"] in words and "the third screen's row" in words and "differs by up to" in words
    # without the third screen's table, the words leave out what comes from it
    alone = ch.budget_words(table, rec)
    assert "the third screen's row" not in alone and "differs by up to" not in alone and rec["adopted"] in alone
    key = {k: v for k, v in profile_key(external_profile("long")).items()}
    want = profile_key(external_profile("cpu", **rec["long_profile"]["overrides_of_cpu"]))
    assert key == want


def test_the_recorded_profile_runs_agree_with_their_scores():
    """The recorded end-to-end runs of the profiles: the per-slice record and the run summaries agree (each
    run's cross-validated Dice is the mean of its recorded slices), the baseline comes first, and the words
    carry the table's paired gains, each run's command and the cost ratio of the recorded seconds."""
    from sscild.book.chapters import external as ch

    got = ch.recorded_profile_runs(n_boot=200)
    if got is None:
        pytest.skip("benchmarks/external_profile_runs.* is not in this checkout")
    table, rec = got
    assert list(table.index) == list(rec["runs"]) and table.index[0] == rec["baseline"]
    scores = table.attrs["scores"]
    for name, run in rec["runs"].items():
        mine = scores[scores["variant"] == name]
        assert len(mine) == run["cv"]["n_slices"]
        for n in ("ggo", "consolidation"):
            assert abs(mine[f"dice_{n}"].mean() - run["cv"][f"dice_{n}"]) < 1e-9, (name, n)
        assert table.loc[name, "Dice GGO [95% CI]"].startswith(f"{run['cv']['dice_ggo']:.3f} [")
    words = ch.recorded_profile_words(table, rec)
    base = rec["runs"][rec["baseline"]]
    for name, run in rec["runs"].items():
        assert f"`{run['command']}` {run['make_wall_seconds'] / 60:.1f} min" in words
        if name != rec["baseline"]:
            assert table.loc[name, f"gain over {rec['baseline']}, GGO [95% CI]"] in words
            assert f"{run['models_wall_seconds'] / base['models_wall_seconds']:.2f} times as long" in words


def test_the_sixth_screen_record_agrees_with_the_profile_runs_and_the_long_profile():
    """The steps screen: its rows are variants the search re-runs by name, the control comes first, a row
    that the record says came from the recorded profile runs holds exactly those runs' per-slice scores,
    the words carry the table's gains (over the control and over the reference row), and the long
    profile is the cpu recipe with exactly the overrides the record says it adopted."""
    from sscild.book.chapters import external as ch
    from sscild.book.chapters import external_records
    from sscild.external.search import SEARCH_VARIANTS

    assert all(hasattr(ch, name) for name in external_records.__all__)
    got = ch.steps_record()  # the bootstrap the page and the record's reasons use
    if got is None:
        pytest.skip("benchmarks/external_steps_screen.* is not in this checkout")
    table, rec = got
    assert list(table.index)[0] == rec["control"] and list(table.index) == list(rec["variants"])
    assert set(table.index) <= set(SEARCH_VARIANTS) and rec["reference"] in table.index
    scores = table.attrs["scores"]
    runs = ch.recorded_profile_runs(n_boot=200)
    for name, v in rec["variants"].items():
        assert len(v["train_seconds_per_fold"]) == len(rec["folds"])
        assert profile_key(external_profile("cpu", **SEARCH_VARIANTS[name])) == profile_key(
            external_profile("cpu", **v["overrides"]))
        if v.get("profile_run") and runs is not None:
            mine = scores[scores["variant"] == name].set_index("slice_id").sort_index()
            run = runs[0].attrs["scores"]
            run = run[run["variant"] == v["profile_run"]].set_index("slice_id").loc[mine.index]
            for n in ("ggo", "consolidation"):
                assert np.array_equal(mine[f"dice_{n}"].to_numpy(), run[f"dice_{n}"].to_numpy(), equal_nan=True), (name, n)
    words = ch.steps_words(table, rec)
    for name in rec["variants"]:
        if name != rec["control"]:
            assert table.loc[name, "gain over the control, GGO [95% CI]"] in words
        if name.startswith(rec["treated_prefix"]):
            assert table.loc[name, f"gain from {rec['reference']}, GGO [95% CI]"] in words
    assert rec["adopted"] in words and rec["rule"] in words
    # the reasons given for the choice quote the table's gains over the reference row
    for name in rec["variants"]:
        if name.startswith(rec["treated_prefix"]):
            for label in ("GGO", "consolidation"):
                gain = table.loc[name, f"gain from {rec['reference']}, {label} [95% CI]"]
                assert f"{label} {gain}" in rec["why"], (label, gain)
    assert profile_key(external_profile("long")) == profile_key(
        external_profile("cpu", **rec["long_profile"]["overrides_of_cpu"]))


def test_search_keeps_each_decision_variants_scores_though_they_share_models(tmp_path):
    """Two variants that differ only in the decision from the probabilities train one set of models; each
    keeps its own per-slice scores, and they are the scores of its own decision."""
    from sscild.external.predict import decide
    from sscild.external.search import search_recipes

    _tiny_parts(tmp_path)
    base = external_profile("smoke", grid_size=32, patch_size=(32, 32), iterations=2, batch_size=2, num_folds=2)
    variants = {"most probable": {"lesion_threshold": None},
                "low threshold": {"lesion_threshold": 0.05, "consolidation_weight": 0.5}}
    out = search_recipes(tmp_path / "train", tmp_path / "search", variants, base=base, n_boot=50, log=None)
    assert out["folder"].nunique() == 1 and out["scores"].nunique() == 2
    tables = {r.variant: pd.read_csv(tmp_path / "search" / r.scores, dtype={"slice_id": str}) for r in out.itertuples()}
    assert all(len(t) == 6 for t in tables.values())
    # the low threshold calls more pixels lesion than the most probable class does, on the same models
    lesion = {v: int(t["pred_ggo"].sum() + t["pred_consolidation"].sum()) for v, t in tables.items()}
    assert lesion["low threshold"] > lesion["most probable"], lesion
    assert decide(np.array([[0.9], [0.06], [0.04]]), 0.05, 0.5).tolist() == [1]


def test_the_seventh_screen_record_and_the_decision_the_profiles_adopted():
    """The decision screen: its rows re-run by name, the most probable class rows are the recorded profile
    runs' per-slice scores, the words carry gains computed from the record for the folds where the decision
    was chosen and where it was not, and the cpu and long profiles decide as the adopted row says."""
    from sscild.book.chapters import external as ch
    from sscild.external.search import SEARCH_VARIANTS

    got = ch.decision_record(n_boot=200)
    if got is None:
        pytest.skip("benchmarks/external_decision_screen.* is not in this checkout")
    table, rec = got
    assert list(table.index)[0] == rec["control"] and set(table.index) <= set(SEARCH_VARIANTS)
    scores = table.attrs["scores"]
    runs = ch.recorded_profile_runs(n_boot=200)
    if runs is not None:
        rs = runs[0].attrs["scores"]
        for name, run in ((rec["control"], "cpu"), (rec["reference"], "long")):
            mine = scores[scores["variant"] == name].set_index("slice_id").sort_index()
            theirs = rs[rs["variant"] == run].set_index("slice_id").loc[mine.index]
            assert np.array_equal(mine["dice_ggo"].to_numpy(), theirs["dice_ggo"].to_numpy(), equal_nan=True)
    words = ch.decision_words(table, rec, n_boot=200)
    assert "folds 0, 1, 2" in words and "folds 3, 4" in words and rec["adopted"] in words
    if rec.get("ensemble_check"):
        assert rec["ensemble_check"]["gain"]["ggo"] in words and rec["ensemble_check"]["command"] in words
    # the gain on all slices in the words is the table's
    assert table.loc[rec["adopted_variant"], "gain over the control, GGO [95% CI]"].split(" [")[0] in words
    for prof in ("cpu", "long"):
        ex = check_extra(external_profile(prof))
        adopted = SEARCH_VARIANTS[rec["adopted_variant"]]
        assert (ex["lesion_threshold"], ex["consolidation_weight"]) == (adopted["lesion_threshold"],
                                                                        adopted["consolidation_weight"])
    # the decision is not a training setting: both decisions share the models
    assert profile_key(external_profile("cpu")) == profile_key(external_profile("cpu", **SEARCH_VARIANTS[rec["control"]]))


def test_the_gpu_comparison_says_when_the_decisions_differ():
    """The recorded GPU run scored the most probable class; a run that decides with a lesion threshold is
    set beside it with a sentence saying so, a run with the most probable class without it."""
    from sscild.book.chapters import external as ch

    gpu = recorded_gpu_run()
    if gpu is None:
        pytest.skip("benchmarks/external_paper_gpu.json is not in this checkout")
    chk = ch.ExternalCheck(prof=external_profile("cpu"), settings={}, train_dir=None, test_dir=None,
                           unlabelled_dir=None, out_dir=Path("."), self_training=False, use_unlabelled=False)
    cv = {"dice_ggo": 0.5, "dice_consolidation": 0.4}
    new = ch.gpu_words(gpu, chk, {"cv": cv, "recipe": recipe_dict(external_profile("cpu"), 1)})
    old = ch.gpu_words(gpu, chk, {"cv": cv, "recipe": recipe_dict(external_profile("cpu", lesion_threshold=None,
                                                                                   consolidation_weight=1.0), 1)})
    assert "differ in the decision" in new and "differ in the decision" not in old
    assert "0.500" in new and "0.400" in new


def test_the_eighth_screen_record_agrees_with_the_seventh_and_the_long_profile_keeps_one_member():
    """The members screen: its rows re-run by name, its cpu and long rows are the seventh screen's rows of
    the same names slice for slice, the treated row differs from the long profile only in ``members``,
    the words and the reasons carry the table's gains over the long profile, and the long profile keeps
    one network per model as the record says."""
    from sscild.book.chapters import external as ch
    from sscild.external.search import SEARCH_VARIANTS

    got, seventh = ch.members_record(), ch.decision_record(n_boot=200)  # the bootstrap of the page and the reasons
    if got is None:
        pytest.skip("benchmarks/external_members_screen.* is not in this checkout")
    table, rec = got
    assert list(table.index) == list(rec["variants"]) and list(table.index)[0] == rec["control"]
    assert set(table.index) <= set(SEARCH_VARIANTS)
    scores = table.attrs["scores"]
    if seventh is not None:
        before = seventh[0].attrs["scores"]
        for name in (rec["control"], rec["reference"]):
            mine = scores[scores["variant"] == name].set_index("slice_id").sort_index()
            theirs = before[before["variant"] == name].set_index("slice_id").loc[mine.index]
            for n in ("ggo", "consolidation"):
                assert np.array_equal(mine[f"dice_{n}"].to_numpy(), theirs[f"dice_{n}"].to_numpy(), equal_nan=True)
    treated = [v for v in table.index if v.startswith(rec["treated_prefix"])]
    assert len(treated) == 1
    ov = SEARCH_VARIANTS[treated[0]]
    assert ov["members"] == 2
    assert external_profile("cpu", **ov) == external_profile("cpu", **SEARCH_VARIANTS[rec["reference"]], members=2)
    # the second member is what the row adds: its first member is the long profile's network (same training key)
    assert profile_key(external_profile("cpu", **ov)) == profile_key(external_profile("long"))
    words = ch.members_words(table, rec)
    for label in ("GGO", "consolidation"):
        gain = table.loc[treated[0], f"gain from {rec['reference']}, {label} [95% CI]"]
        assert gain in words and f"{label} {gain}" in rec["why"], (label, gain)
    assert rec["adopted"] in words and rec["rule"] in words and rec["ensemble_note"]["command"] in words
    v = rec["variants"][treated[0]]
    assert v["train_seconds_per_fold"] == pytest.approx(
        [a + b for a, b in zip(rec["variants"][rec["reference"]]["train_seconds_per_fold"], v["second_member_seconds"])])
    assert check_extra(external_profile("long"))["members"] == 1 and rec["adopted"].startswith("Not adopted")


def _paired_screen_against_the_seventh(got, record: str):
    """A screen of :func:`sscild.book.chapters.external.paired_screen_record` (skipped when absent): its rows
    in the record's order, the control first, each re-runnable by name; its control the seventh screen's cpu
    row slice for slice. Returns the table, the record and the page's words for it."""
    from sscild.book.chapters import external as ch
    from sscild.external.search import SEARCH_VARIANTS

    if got is None:
        pytest.skip(f"benchmarks/{record}.* is not in this checkout")
    table, rec = got
    assert list(table.index) == list(rec["variants"]) and list(table.index)[0] == rec["control"]
    assert set(table.index) <= set(SEARCH_VARIANTS)
    seventh = ch.decision_record(n_boot=200)  # the bootstrap of the page and the reasons
    if seventh is not None:
        mine, before = table.attrs["scores"], seventh[0].attrs["scores"]
        mine = mine[mine["variant"] == rec["control"]].set_index("slice_id").sort_index()
        theirs = before[before["variant"] == rec["control"]].set_index("slice_id").loc[mine.index]
        for col in ("dice_ggo", "dice_consolidation"):
            assert np.array_equal(mine[col].to_numpy(), theirs[col].to_numpy(), equal_nan=True), col
    return table, rec, ch.paired_screen_words(table, rec)


def test_the_ninth_screen_record_agrees_with_the_seventh_and_the_cpu_recipe_keeps_its_sampler():
    """The sampler screen: its rows re-run by name, its control is the seventh screen's cpu row slice for
    slice, the treated row differs from the cpu recipe only in the sampler, the words and the reasons carry
    the table's gains, and the cpu recipe keeps the setting the record says it kept."""
    from sscild.book.chapters import external as ch
    from sscild.external.search import SEARCH_VARIANTS

    table, rec, words = _paired_screen_against_the_seventh(ch.sampler_record(), "external_sampler_screen")
    (treated,) = [v for v in table.index if v != rec["control"]]
    assert external_profile("cpu", **SEARCH_VARIANTS[treated]) == external_profile("cpu", lesion_oversample=0.0)
    for label in ("GGO", "consolidation"):
        gain = table.loc[treated, f"gain over the control, {label} [95% CI]"]
        assert gain in words and f"{label} {gain}" in rec["why"], (label, gain)
    assert rec["adopted"] in words and rec["rule"] in words and rec["adopted"].startswith("Not adopted")
    assert external_profile("cpu").lesion_oversample == 0.5


def test_the_tenth_screen_record_agrees_with_the_seventh_and_the_profiles_keep_their_network():
    """The network screen: its rows re-run by name, its control is the seventh screen's cpu row slice for
    slice, each treated row is the cpu recipe with another network only, each names its own pretraining, the
    words and the reasons carry the table's gains, and the profiles keep the network the record says."""
    from sscild.book.chapters import external as ch
    from sscild.external.search import SEARCH_VARIANTS

    table, rec, words = _paired_screen_against_the_seventh(ch.architecture_record(), "external_architecture_screen")
    cpu = external_profile("cpu")
    network = ("architecture", "channels", "strides", "num_res_units")
    for treated in (v for v in table.index if v != rec["control"]):
        p = external_profile("cpu", **SEARCH_VARIANTS[treated])
        assert p == cpu.with_overrides(**{k: getattr(p, k) for k in network}) and p != cpu
        assert rec["variants"][treated]["trained"].startswith("in this screen, with its own 2000-step pretraining")
        for label in ("GGO", "consolidation"):
            gain = table.loc[treated, f"gain over the control, {label} [95% CI]"]
            assert gain in words and gain in rec["why"], (treated, label, gain)
    assert rec["adopted"] in words and rec["rule"] in words
    if rec["adopted"].startswith("Not adopted"):
        assert all((external_profile(n).architecture, external_profile(n).channels) == ("unet", (16, 32, 64, 128))
                   for n in ("cpu", "long"))
