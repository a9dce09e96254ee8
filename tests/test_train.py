"""Training of one fold: determinism, resume, no leakage of held-out patients (smoke profile)."""

from __future__ import annotations

import shutil

import pytest
import torch

from cohort_factory import prepare_run
from sscild.model import train as train_mod
from sscild.model.loading import fold_is_done, load_fold_model
from sscild.model.network import build_network
from sscild.data.folds import read_splits
from sscild.paths import RunPaths
from sscild.profiles import get_profile
from sscild.synthetic.writer import generate_cohort


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A 4-patient smoke cohort, its cache and 2-fold splits."""
    base = tmp_path_factory.mktemp("train")
    data = generate_cohort(base / "cohort", profile=get_profile("smoke"), n=4, seed=3, progress=False)
    run, _ = prepare_run(data, base / "results")
    return run


def fresh_copy(run: RunPaths, tmp_path, name: str) -> RunPaths:
    """A run folder with the same cache and splits but no training outputs."""
    new = RunPaths(results=tmp_path / name, cohort=run.cohort, profile=run.profile)
    new.root.mkdir(parents=True)
    shutil.copytree(run.cache, new.cache)
    shutil.copy2(run.splits, new.splits)
    return new


def weights(run: RunPaths, fold: int = 0) -> dict:
    return torch.load(run.fold_dir(fold) / "model_final.pt", weights_only=False)["model"]


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_gives_identical_weights(prepared, tmp_path):
    r1, r2 = fresh_copy(prepared, tmp_path, "a"), fresh_copy(prepared, tmp_path, "b")
    s1 = train_mod.train_fold(r1, get_profile("smoke"), 0, iterations=20, progress=False)
    train_mod.train_fold(r2, get_profile("smoke"), 0, iterations=20, progress=False)
    assert s1["steps"] == 20
    assert_same(weights(r1), weights(r2))
    # and training actually changed the weights
    torch.manual_seed(0)
    init = build_network(get_profile("smoke")).state_dict()
    assert any(not torch.equal(init[k], weights(r1)[k]) for k in init if init[k].dtype.is_floating_point)


def test_loader_workers_give_the_same_weights(prepared, tmp_path, monkeypatch):
    """Batches prepared in loader processes (the CUDA default) equal those made in-process."""
    r0, r2 = fresh_copy(prepared, tmp_path, "w0"), fresh_copy(prepared, tmp_path, "w2")
    monkeypatch.setenv("SSCILD_LOADER_WORKERS", "0")
    train_mod.train_fold(r0, get_profile("smoke"), 0, iterations=12, progress=False)
    monkeypatch.setenv("SSCILD_LOADER_WORKERS", "2")
    s2 = train_mod.train_fold(r2, get_profile("smoke"), 0, iterations=12, progress=False)
    assert s2["loader_workers"] == 2
    assert_same(weights(r0), weights(r2))


def test_resumed_run_equals_uninterrupted(prepared, tmp_path):
    whole, broken = fresh_copy(prepared, tmp_path, "whole"), fresh_copy(prepared, tmp_path, "broken")
    train_mod.train_fold(whole, get_profile("smoke"), 1, iterations=20, progress=False)
    part = train_mod.train_fold(broken, get_profile("smoke"), 1, iterations=20, progress=False, stop_after=10)
    assert part.get("interrupted") and part["steps"] == 10
    assert (broken.fold_dir(1) / "checkpoint_latest.pt").exists()
    assert not fold_is_done(broken, 1)
    done = train_mod.train_fold(broken, get_profile("smoke"), 1, iterations=20, progress=False)
    assert done["steps"] == 20
    assert_same(weights(whole, 1), weights(broken, 1))
    h_whole = (whole.fold_dir(1) / "history.csv").read_text()
    h_broken = (broken.fold_dir(1) / "history.csv").read_text()
    assert [l.split(",")[:2] for l in h_whole.splitlines()] == [l.split(",")[:2] for l in h_broken.splitlines()]


@pytest.mark.parametrize("overrides", [{"deep_supervision": 1}, {"optimizer": "sgd", "learning_rate": 1e-2},
                                       {"architecture": "plain", "num_res_units": 0}])
def test_training_variants_resume_exactly_and_save_the_profiles_network(prepared, tmp_path, overrides):
    p = get_profile("smoke").with_overrides(**overrides)
    whole, broken = fresh_copy(prepared, tmp_path, "whole"), fresh_copy(prepared, tmp_path, "broken")
    s = train_mod.train_fold(whole, p, 1, iterations=12, progress=False)
    assert all(s["recipe"][k] == v for k, v in overrides.items())
    part = train_mod.train_fold(broken, p, 1, iterations=12, progress=False, stop_after=6)
    assert part.get("interrupted")
    train_mod.train_fold(broken, p, 1, iterations=12, progress=False)
    assert_same(weights(whole, 1), weights(broken, 1))
    # the final model is the network alone: the auxiliary heads are training-only
    assert weights(whole, 1).keys() == build_network(p).state_dict().keys()
    # and it loads back as the profile's network, computing what the trained one computes (loading may fold
    # batch norms into convolutions, so the outputs are compared, not the state dicts)
    net, _ = load_fold_model(whole.fold_dir(1) / "model_final.pt")
    trained = build_network(p)
    trained.load_state_dict(weights(whole, 1))
    assert type(net) is type(trained)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), trained.eval()(x), atol=1e-4)
    # and the fold is stale for the plain recipe: the setting that differs is named
    key = next(iter(overrides))
    with pytest.raises(ValueError, match=f"{key}: .* -> "):
        train_mod.train_fold(whole, get_profile("smoke"), 1, iterations=12, progress=False)


def test_deep_supervision_loss_weights_each_level_against_the_label_at_its_size():
    from monai.networks.nets import UNet

    from sscild.model.deepsup import DeepSupervision

    net = UNet(2, 1, 3, (8, 16, 32, 64), (2, 2, 2), num_res_units=1)
    ds = DeepSupervision(net, num_classes=3, levels=2)
    y = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    y[..., 8:, :] = 2
    logits = net(torch.zeros(1, 1, 16, 16))
    seen = []

    def fake_loss(lg, lab):
        seen.append((tuple(lg.shape), tuple(lab.shape), int(lab.max())))
        return torch.tensor(1.0)

    assert float(ds.loss(fake_loss, logits, y)) == pytest.approx(1.0)   # weights sum to 1
    assert seen == [((1, 3, 16, 16), (1, 1, 16, 16), 2), ((1, 3, 8, 8), (1, 1, 8, 8), 2), ((1, 3, 4, 4), (1, 1, 4, 4), 2)]
    with pytest.raises(ValueError, match="deep_supervision must be 0"):
        DeepSupervision(net, num_classes=3, levels=3)


def test_completed_fold_is_not_retrained(prepared, tmp_path):
    r = fresh_copy(prepared, tmp_path, "c")
    train_mod.train_fold(r, get_profile("smoke"), 0, iterations=10, progress=False)
    mtime = (r.fold_dir(0) / "model_final.pt").stat().st_mtime_ns
    train_mod.train_fold(r, get_profile("smoke"), 0, iterations=10, progress=False)
    assert (r.fold_dir(0) / "model_final.pt").stat().st_mtime_ns == mtime


def test_no_test_fold_case_reaches_the_loader(prepared, tmp_path, monkeypatch):
    r = fresh_copy(prepared, tmp_path, "leak")
    requested = []
    real = train_mod.load_cached

    def spy(run, case_id):
        requested.append(case_id)
        return real(run, case_id)

    monkeypatch.setattr(train_mod, "load_cached", spy)
    seen_by_sampler = []
    real_sampler = train_mod.PatchSampler

    class SpySampler(real_sampler):
        def __init__(self, cases, **kw):
            seen_by_sampler.extend(cases)
            super().__init__(cases, **kw)

    monkeypatch.setattr(train_mod, "PatchSampler", SpySampler)
    splits = read_splits(r.splits)
    for fold in range(2):
        requested.clear()
        seen_by_sampler.clear()
        train_mod.train_fold(r, get_profile("smoke"), fold, iterations=5, progress=False)
        test_ids = set(splits[fold]["val"])
        assert requested and set(requested) == set(splits[fold]["train"])
        assert not test_ids & set(requested)
        assert not test_ids & set(seen_by_sampler)


def test_bad_fold_and_missing_splits_are_clear(prepared, tmp_path):
    r = fresh_copy(prepared, tmp_path, "bad")
    with pytest.raises(ValueError, match="fold 5 does not exist"):
        train_mod.train_fold(r, get_profile("smoke"), 5, iterations=5, progress=False)
    empty = RunPaths(results=tmp_path / "none", cohort="x", profile="smoke")
    with pytest.raises(FileNotFoundError, match="make data"):
        train_mod.train_fold(empty, get_profile("smoke"), 0, iterations=5, progress=False)


def test_recorded_gpu_check_renders(tmp_path):
    from sscild.book.provenance import gpu_check_table

    table = gpu_check_table()
    assert table is not None, "benchmarks/gpu_paper.json should be in the repository"
    assert "NVIDIA" in table.loc["device", "value"] and table.loc["mixed precision / cudnn autotuning", "value"].startswith("True")
    assert gpu_check_table(tmp_path / "absent.json") is None


def test_changed_settings_are_not_mistaken_for_a_finished_or_resumable_fold(prepared, tmp_path):
    from sscild.profiles import get_profile

    run = fresh_copy(prepared, tmp_path, "stale")
    train_mod.train_fold(run, get_profile("smoke"), 0, iterations=10, progress=False)
    train_mod.train_fold(run, get_profile("smoke"), 0, iterations=10, progress=False)  # same settings: done, no error
    other = get_profile("smoke").with_overrides(learning_rate=1e-4)
    with pytest.raises(ValueError, match="other settings.*learning_rate"):
        train_mod.train_fold(run, other, 0, iterations=10, progress=False)
    # an interrupted fold cannot be resumed under other settings either
    part = train_mod.train_fold(run, get_profile("smoke"), 1, iterations=20, progress=False, stop_after=10)
    assert part.get("interrupted")
    with pytest.raises(ValueError, match="batch_size.*cannot be resumed"):
        train_mod.train_fold(run, get_profile("smoke").with_overrides(batch_size=2), 1, iterations=20, progress=False)


def test_bfloat16_training_is_repeatable(tmp_path):
    """Where the CPU computes bfloat16 natively (the cpu profile's setting), two runs give equal weights."""
    from types import SimpleNamespace

    import torch

    from sscild.data.image import Volume
    from sscild.model.network import native_cpu_bf16
    from sscild.synthetic.phantom import generate_case
    from sscild.data.preprocess import preprocess_volume
    from sscild.profiles import get_profile

    if not native_cpu_bf16():
        pytest.skip("this CPU does not compute bfloat16 natively; training stays float32 here")
    p = get_profile("smoke").with_overrides(cpu_bf16=True)
    cases = {}
    for i in range(2):
        c = generate_case(i, profile=get_profile("smoke"))
        pre = preprocess_volume(Volume(c.image, c.affine), c.label, profile=p)
        cases[f"c{i}"] = SimpleNamespace(image=pre.image, label=pre.label)
    weights = []
    for run in ("a", "b"):
        res = train_mod.train_model(cases, p, tmp_path / run, iterations=12, progress=False)
        assert res["numerics"]["dtype"] == "bfloat16"
        weights.append(torch.load(tmp_path / run / "model_final.pt", weights_only=True)["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_intensity_augmentation_setting():
    from sscild.model.augment import augment_for_profile
    from sscild.profiles import get_profile

    light = get_profile("smoke")
    assert augment_for_profile(light).gamma_prob == 0.0
    strong = augment_for_profile(light.with_overrides(intensity_aug="strong"))
    assert strong.gamma_prob > 0 and strong.intensity > augment_for_profile(light).intensity
    with pytest.raises(ValueError, match="intensity_aug"):
        augment_for_profile(light.with_overrides(intensity_aug="extreme"))


def test_a_fold_reads_its_cases_through_memory_maps(prepared):
    """What keeps training memory flat in the number of patients: a fold maps the cached cases instead of
    loading them, and the sampler keeps at most a bounded set of candidate centres per case."""
    import tracemalloc

    import numpy as np

    from sscild.data.folds import read_splits
    from sscild.model.sampling import PatchSampler
    from sscild.model.train import load_training_cases

    ids = read_splits(prepared.splits)[0]["train"]
    cases = load_training_cases(prepared, ids)
    assert all(isinstance(c.image, np.memmap) and isinstance(c.label, np.memmap) for c in cases.values())
    tracemalloc.start()
    sampler = PatchSampler(cases, patch_size=(32, 32), lesion_oversample=0.5)
    kept, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert kept <= len(ids) * 2 * 200_000 * 8 + (1 << 20)
    assert sampler.sample(np.random.default_rng(0), 2)[0].shape[-2:] == (32, 32)


def test_the_architecture_setting_keeps_older_recipes_and_refuses_unknown_names(prepared, tmp_path):
    """Recipes recorded before the setting existed were trained with the residual U-Net: they still
    match the default recipe and are stale for the plain one; an unknown name is refused by name."""
    from sscild.model.checkpoint import recipe_diff, training_recipe
    from sscild.model.network import build_network

    smoke = get_profile("smoke")
    older = {k: v for k, v in training_recipe(smoke).items() if k != "architecture"}
    assert recipe_diff(older, training_recipe(smoke)) == []
    plain = smoke.with_overrides(architecture="plain")
    assert recipe_diff(older, training_recipe(plain)) == ["architecture: 'unet' -> 'plain'"]
    with pytest.raises(ValueError, match="architecture must be one of unet, plain, got 'dynunet'"):
        build_network(smoke.with_overrides(architecture="dynunet"))
    run = fresh_copy(prepared, tmp_path, "plain_ds")
    with pytest.raises(ValueError, match="deep_supervision is built for architecture 'unet' only"):
        train_mod.train_fold(run, plain.with_overrides(deep_supervision=1), 0, iterations=2, progress=False)
