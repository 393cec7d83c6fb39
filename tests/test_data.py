"""Prepare-data stage: SAF geometry, determinism and the error messages users see."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from diffmem.attacks.fingerprint.target import SAF, random_saf
from diffmem.data.medmnist import load_medmnist, locate_medmnist
from diffmem.errors import DataError
from diffmem.stages.data import prepare_data_stage


def run_prepare(root, out, n=64, seed=0, radius=3.5, grey=0.5, to_rgb=False, flag="breastmnist"):
    out.mkdir(parents=True, exist_ok=True)
    return prepare_data_stage(flag=flag, size=28, root=str(root), download=False, n_train=n,
                              seed=seed, saf_radius=radius, saf_grey=grey, to_rgb=to_rgb,
                              out_train=out / "train.npz", out_target=out / "target.npz",
                              out_target_json=out / "target.json", out_heldout=out / "heldout.npz",
                              out_figure=out / "target.png", out_unused=out / "unused_train.npz")


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_saf_disc_is_inside_for_every_draw():
    rng = np.random.default_rng(1)
    for radius in (1, 2.5, 3.5, 6):
        for _ in range(300):
            saf = random_saf(rng, 28, radius, 0.5)
            yy, xx = np.nonzero(saf.mask(28))
            # the whole closed disc (centre ± r) lies on pixels 0..27
            assert saf.cy - radius >= 0 and saf.cy + radius <= 27
            assert saf.cx - radius >= 0 and saf.cx + radius <= 27
            assert len(yy) >= int(np.pi * radius**2 * 0.7)


def test_saf_too_large_is_refused():
    with pytest.raises(DataError, match="does not fit"):
        random_saf(np.random.default_rng(0), 28, 14, 0.5)


def test_stamp_sets_a_constant_grey_disc():
    img = np.zeros((28, 28), np.uint8)
    out = SAF(10, 12, 3.0, 0.5).stamp(img)
    assert set(np.unique(out[SAF(10, 12, 3.0, 0.5).mask(28)])) == {128}
    assert (out[~SAF(10, 12, 3.0, 0.5).mask(28)] == 0).all()
    assert (img == 0).all(), "stamp must not modify its input"


def test_prepare_data_one_image_changed_and_original_gone(data_root, tmp_path):
    meta = run_prepare(data_root, tmp_path / "a", n=100, seed=3)
    train = np.load(tmp_path / "a/train.npz")
    target = np.load(tmp_path / "a/target.npz")
    source = load_medmnist(data_root / "breastmnist.npz", "breastmnist", 28)["train_images"]
    images, idx = train["images"], train["indices"]
    assert images.shape == (100, 28, 28) and images.dtype == np.uint8
    assert len(np.unique(idx)) == 100
    changed = [i for i in range(100) if not np.array_equal(images[i], source[idx[i]])]
    assert changed == [meta["target_position"]]
    pos = meta["target_position"]
    np.testing.assert_array_equal(images[pos], target["saf"])
    np.testing.assert_array_equal(target["original"], source[idx[pos]])
    # the clean original is nowhere in the training set
    assert not any(np.array_equal(im, target["original"]) for im in images)
    # the change is exactly the disc, set to the configured grey
    diff = images[pos] != target["original"]
    assert diff.any() and not (diff & ~target["mask"]).any()
    assert (images[pos][target["mask"]] == 128).all()
    info = json.loads((tmp_path / "a/target.json").read_text())
    assert info["saf"]["radius"] == 3.5 and info["target_source_index"] == int(idx[pos])
    held = np.load(tmp_path / "a/heldout.npz")["images"]
    assert len(held) == 78 + 156


def test_same_seed_gives_byte_identical_files(data_root, tmp_path):
    run_prepare(data_root, tmp_path / "a", seed=5)
    run_prepare(data_root, tmp_path / "b", seed=5)
    run_prepare(data_root, tmp_path / "c", seed=6)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["train.npz"] != digest(tmp_path / "c")["train.npz"]


def test_to_rgb_repeats_grey_channels(data_root, tmp_path):
    run_prepare(data_root, tmp_path / "rgb", n=10, to_rgb=True)
    images = np.load(tmp_path / "rgb/train.npz")["images"]
    assert images.shape == (10, 28, 28, 3)
    assert (images[..., 0] == images[..., 2]).all()


def test_missing_file_offline_names_path_and_url(tmp_path):
    with pytest.raises(DataError) as err:
        locate_medmnist("breastmnist", 28, tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path / "breastmnist.npz") in msg
    assert "zenodo.org" in msg and "\n" not in msg


def test_missing_file_with_failed_download_names_path_and_url(tmp_path, monkeypatch):
    import medmnist

    def offline(*a, **k):
        raise RuntimeError("Automatic download failed!")

    monkeypatch.setattr(medmnist, "BreastMNIST", offline)
    with pytest.raises(DataError, match=r"could not download breastmnist_64\.npz.*zenodo"):
        locate_medmnist("breastmnist", 64, tmp_path, download=True)


def test_corrupt_file_is_a_clear_error(tmp_path):
    (tmp_path / "breastmnist.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="cannot read .*breastmnist.npz as a MedMNIST .npz"):
        load_medmnist(tmp_path / "breastmnist.npz", "breastmnist", 28)


def test_wrong_layout_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "breastmnist.npz", images=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DataError, match="has no array train_images"):
        load_medmnist(tmp_path / "breastmnist.npz", "breastmnist", 28)
    arrays = {f"{s}_{k}": np.zeros((2, 32, 32) if k == "images" else (2, 1), np.uint8)
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    with pytest.raises(DataError, match=r"expected uint8 \(N, 28, 28\)"):
        load_medmnist(tmp_path / "breastmnist.npz", "breastmnist", 28)


def test_n_too_large_gives_the_maximum(data_root, tmp_path, fake_root):
    with pytest.raises(DataError, match=r"expected 2\.\.546"):
        run_prepare(data_root, tmp_path / "x", n=547)
    # a file with fewer images than the official split: the file's count is the maximum
    with pytest.raises(DataError, match="the maximum is 40"):
        run_prepare(fake_root, tmp_path / "y", n=41)


def test_unknown_flag(tmp_path):
    with pytest.raises(DataError, match="unknown MedMNIST flag 'nosuchmnist'"):
        locate_medmnist("nosuchmnist", 28, tmp_path, download=False)


def test_a_planted_twin_of_the_would_be_target_moves_the_target(fake_root, tmp_path):
    """A target with a near-identical twin in train ∪ held-out cannot test reproduction of one
    image: plant a twin of the first draw in the val split and the same seed picks another."""
    first = run_prepare(fake_root, tmp_path / "a", n=20, seed=3)
    assert first["target_nearest_other"]["similarity"] < 0.95
    f = dict(np.load(fake_root / "breastmnist.npz"))
    twin = f["train_images"][first["target_source_index"]].astype(int) + 2
    f["val_images"][0] = np.clip(twin, 0, 255).astype(np.uint8)
    np.savez(fake_root / "breastmnist.npz", **f)
    second = run_prepare(fake_root, tmp_path / "b", n=20, seed=3)
    assert second["target_source_index"] != first["target_source_index"]
    saved = json.loads((tmp_path / "b" / "target.json").read_text())
    assert saved["target_nearest_other"]["similarity"] < 0.95


def test_no_unique_candidate_is_one_clear_error(fake_root, tmp_path):
    with pytest.raises(DataError, match="saf.max_twin_similarity = -1"):
        prepare_data_stage(flag="breastmnist", size=28, root=str(fake_root), download=False,
                           n_train=8, seed=0, saf_radius=3.5, saf_grey=0.5, to_rgb=False,
                           out_train=tmp_path / "t.npz", out_target=tmp_path / "x.npz",
                           out_target_json=tmp_path / "x.json", out_heldout=tmp_path / "h.npz",
                           out_figure=tmp_path / "x.png", max_twin_similarity=-1.0)


def test_the_seed_0_breastmnist_target_has_no_twin(data_root, tmp_path):
    """The old seed-0 target (three frames at Pearson ≥ 0.99) is no longer drawn."""
    meta = run_prepare(data_root, tmp_path / "r", n=546, seed=0)
    assert meta["target_source_index"] != 540
    assert meta["target_nearest_other"]["similarity"] < 0.95


def brute_force_twins(train: np.ndarray, heldout: np.ndarray, shift: int, mirror: bool):
    """The near-duplicate counts the README quotes, derived in plain numpy apart from the
    library: every pair's smallest RMS difference in grey levels over the shifts of up to
    ``shift`` pixels (a query's window against the reference's centre crop) and the mirror,
    in either direction; twins within 5 grey levels; groups as connected components."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x = np.concatenate([train, heldout]).astype(np.float64)
    n, s, h = len(x), shift, x.shape[1]
    ref = x[:, s:h - s, s:h - s].reshape(n, -1)
    best = np.full((n, n), np.inf)
    for q in (x, x[:, :, ::-1]) if mirror else (x,):
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                w = q[:, s + dy:h - s + dy, s + dx:h - s + dx].reshape(n, -1)
                d2 = (w ** 2).sum(1)[:, None] + (ref ** 2).sum(1)[None] - 2 * w @ ref.T
                best = np.minimum(best, np.sqrt(np.maximum(d2, 0) / ref.shape[1]))
    near = (best <= 5.0) | (best.T <= 5.0)
    np.fill_diagonal(near, False)
    _, label = connected_components(coo_matrix(near), directed=False)
    tl, hl = label[:len(train)], label[len(train):]
    sizes = np.bincount(tl, minlength=label.max() + 1)
    return {"train_with_a_twin_in_train": int((sizes[tl] > 1).sum()),
            "heldout_sharing_a_group_with_train": int(np.isin(hl, tl).sum())}


@pytest.mark.parametrize("shift,mirror,twins,shared,ams,ams_free,carlini,carlini_free", [
    (2, True, 112, 50, 0.385, 0.217, 0.226, 0.038),   # the audit's matching
    (0, False, 110, 46, 0.385, 0.234, 0.244, 0.064),  # pixel to pixel
])
def test_the_readme_s_breastmnist_near_duplicate_figures(data_root, shift, mirror, twins, shared,
                                                         ams, ams_free, carlini, carlini_free):
    """The README's figures on the shared BreastMNIST file: training images with a twin in the
    training split and held-out images sharing a group with a training image, derived by brute
    force and equal to the library's groups (no chain was split); the held-out images' share
    with a training image at cosine ≥ 0.95 and passing Carlini's criterion, with and without
    those twins."""
    import math

    from diffmem.data.duplicates import near_duplicate_groups
    from diffmem.metrics.memorization import carlini_extracted
    from diffmem.metrics.similarity import Matching, nearest

    with np.load(data_root / "breastmnist.npz") as f:
        tr, ho = f["train_images"], np.concatenate([f["val_images"], f["test_images"]])
    counts = brute_force_twins(tr, ho, shift, mirror)
    assert counts == {"train_with_a_twin_in_train": twins,
                      "heldout_sharing_a_group_with_train": shared}
    match = Matching(shift, mirror)
    res = near_duplicate_groups(tr, ho, metric="rms", threshold=5.0, max_diameter=None,
                                matching=match)
    assert res["summary"]["chains_split"] == 0
    assert res["summary"]["heldout_images_sharing_a_group_with_train"] == shared
    free = ~np.isin(res["heldout_group"], res["train_group"])
    assert free.sum() == len(ho) - shared  # 184 (188 pixel to pixel) twin-free held-out images
    cos = nearest(ho, tr, kind="cosine", top_k=1, matching=match)["sim"][:, 0]
    l2 = nearest(ho, tr, kind="l2", top_k=50, matching=match)
    ex = carlini_extracted((1 - l2["sim"]) * math.sqrt(match.compared_pixels(tr.shape[1:])),
                           alpha=0.5, delta=0.333)
    assert round(float((cos >= 0.95).mean()), 3) == ams
    assert round(float((cos[free] >= 0.95).mean()), 3) == ams_free
    assert round(float(ex.mean()), 3) == carlini and round(float(ex[free].mean()), 3) == \
        carlini_free
