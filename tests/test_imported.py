"""Your own images and models: reading image folders, the `models:` config checks, mirrored
matches and the choice of training images for the boundary search."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from diffmem.attacks.boundary import choose_images, most_copied
from diffmem.data.images import count_images, dataset_arrays, read_images
from diffmem.errors import ConfigError, DataError
from diffmem.metrics.similarity import mirrored, nearest
from diffmem.stages.config import check_config, model_info, run_seed, runs

from .conftest import ROOT
from .own_model import write_pngs
from .test_external import pipeline_dir, tiny_unet  # noqa: F401 (fixture)

SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


@pytest.fixture
def pngs(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    write_pngs(images, tmp_path / "imgs", "x")
    return tmp_path / "imgs", images


def test_a_png_folder_is_read_recursively_in_a_fixed_order_16_bit_included(pngs):
    folder, images = pngs
    got, names = read_images(folder, size=28, channels=1)
    assert names[0] == "part0/x00.png" and len(names) == 6 and count_images(folder) == 6
    order = [int(n.split("x")[1][:2]) for n in names]
    np.testing.assert_array_equal(got, images[order])  # the 16-bit one comes back exactly


def test_resize_and_centre_crop_and_rgb(tmp_path):
    from PIL import Image

    img = np.zeros((40, 60, 3), np.uint8)
    img[:, 10:50] = 200  # the centre 40x40 is bright, the side bands dark
    (tmp_path / "f").mkdir()
    Image.fromarray(img).save(tmp_path / "f/a.jpg", quality=100)
    grey, _ = read_images(tmp_path / "f", size=20, channels=1)
    assert grey.shape == (1, 20, 20) and grey.min() > 150  # resized 40 -> 20, crop of the centre
    rgb, _ = read_images(tmp_path / "f", size=20, channels=3)
    assert rgb.shape == (1, 20, 20, 3)
    with pytest.raises(DataError, match="is 60x40; expected 20x20, the size the audit reads"):
        read_images(tmp_path / "f", size=20, channels=1, resize=False)


def test_npz_sources_and_their_errors(tmp_path):
    a = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8) * 257
    np.savez(tmp_path / "ok.npz", images=a)
    got, names = read_images(tmp_path / "ok.npz", size=8, channels=1)
    assert names == ["#0", "#1"] and got.dtype == np.uint8 and got.max() == 127
    np.savez(tmp_path / "float.npz", images=a.astype(np.float32))
    with pytest.raises(DataError, match="images is float32; expected uint8 or uint16"):
        read_images(tmp_path / "float.npz", size=8, channels=1)
    np.savez(tmp_path / "empty.npz", images=np.zeros((10, 0, 0), np.uint8))
    with pytest.raises(DataError, match=r"images has shape \(10, 0, 0\); expected images of "
                                        r"at least 2 × 2 pixels"):
        count_images(tmp_path / "empty.npz")
    np.savez(tmp_path / "other.npz", x=a)
    with pytest.raises(DataError, match="has no array 'images'"):
        count_images(tmp_path / "other.npz")
    with pytest.raises(DataError, match="no PNG/JPEG images in"):
        read_images(tmp_path, size=8, channels=1)


def test_a_dataset_entry_reads_in_the_medmnist_layout(pngs):
    folder, images = pngs
    arrays = dataset_arrays("site", {"name": "site", "train": str(folder), "heldout": str(folder)},
                            28, "unused", False)
    assert arrays["train_images"].shape == (6, 28, 28) and len(arrays["test_images"]) == 0
    assert arrays["val_images"].shape == (6, 28, 28) and arrays["train_labels"].shape == (6, 1)


def test_moved_and_mirrored_copies_match_only_when_asked():
    from diffmem.metrics.similarity import Matching

    rng = np.random.default_rng(1)
    refs = rng.integers(0, 256, (5, 12, 12), dtype=np.uint8)
    moved = np.roll(refs[2:3], (1, -2), axis=(1, 2))  # 1 pixel down, 2 left
    queries = np.concatenate([mirrored(refs[2:3]), moved, mirrored(moved)])
    plain = nearest(queries, refs, top_k=1)
    assert (plain["sim"][:, 0] < 0.5).all()
    mirror_only = nearest(queries, refs, top_k=1, matching=Matching(0, True))
    assert mirror_only["sim"][0, 0] > 0.999 and (mirror_only["sim"][1:, 0] < 0.5).all()
    both = nearest(queries, refs, top_k=1, matching=Matching(2, True))
    assert (both["index"][:, 0] == 2).all() and (both["sim"][:, 0] > 0.999).all()
    how = [Matching.describe(both["transforms"][t]) for t in both["transform"][:, 0]]
    assert how == ["mirrored as is", "shifted dx=-2 dy=+1", "mirrored shifted dx=-2 dy=+1"]
    # every transform compares the same pixels: the reference's centre crop, 8x8 of 12x12
    m = Matching(2, True)
    assert len(m.transforms()) == 50 and m.compared_pixels((12, 12)) == 64
    assert {m.window(refs, t).shape for t in m.transforms()} == {m.crop(refs).shape}
    assert Matching.from_config({"shift": "auto"}, 28) == Matching(2, True)
    assert Matching.from_config({"shift": "auto", "mirror": False}, 224) == Matching(8, False)


def test_the_most_copied_training_image_is_chosen():
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (4, 10, 10), dtype=np.uint8)
    samples = np.concatenate([train[[3, 3, 3, 1]], rng.integers(0, 256, (1, 10, 10),
                                                                dtype=np.uint8)])
    mc = most_copied(samples[:4], train)
    assert mc["counts"].tolist() == [0, 1, 0, 3] and mc["order"][0] == 3
    assert choose_images([], [], samples, train, 2)[0][:2] == [3, 1]
    names = ["a.png", "b.png", "c.png", "d.png"]
    assert choose_images(["c.png", 0], names, samples, train, 1) == ([2, 0], "configured")


@pytest.fixture
def test_cfg():
    return yaml.safe_load((ROOT / "workflow/configs/test.yaml").read_text())


def test_a_models_entry_is_checked_before_any_job(test_cfg, pipeline_dir, pngs):  # noqa: F811
    folder, _ = pngs
    cfg = copy.deepcopy(test_cfg)
    cfg["datasets"] = []
    heldout = folder.parent / "heldout"
    write_pngs(np.random.default_rng(1).integers(0, 256, (12, 28, 28), dtype=np.uint8),
               heldout, "h")
    cfg["models"] = {"m": {"folder": str(pipeline_dir), "train": str(folder),
                           "heldout": str(heldout), "boundary_images": ["part1/x01.png", 2],
                           "sample": {"sampler": "ddpm", "steps": 50}}}
    check_config(cfg, SCHEMA)
    info = model_info(cfg, "m")
    assert info["size"] == 8 and info["channels"] == 1 and info["images"]["train"] == 6
    assert info["diffusion"]["prediction_type"] == "v_prediction" and runs(cfg) == []

    def refused(change, match):
        c = copy.deepcopy(cfg)
        change(c["models"]["m"])
        with pytest.raises(ConfigError) as err:
            check_config(c, SCHEMA)
        assert "\n" not in str(err.value) and match in str(err.value), str(err.value)

    refused(lambda m: m.update(boundary_images=["nope.png"]),
            "config error at models.m.boundary_images: ['nope.png'] not found")
    refused(lambda m: m.update(boundary_images=[6]), "expected indices below 6")
    refused(lambda m: m.update(folder=str(folder)), "config error at models.m.folder:")
    refused(lambda m: m.update(heldout=str(folder / "none")),
            "config error at models.m.heldout: image folder not found")
    # 6 held-out images cannot set bands at quantile 0.99 with 5 above the edge
    few = folder.parent / "few"
    write_pngs(np.random.default_rng(2).integers(0, 256, (6, 28, 28), dtype=np.uint8), few, "f")
    refused(lambda m: m.update(heldout=str(few)),
            "config error at models.m.heldout: 6 images cannot calibrate the similarity bands; "
            "expected at least 10")
    c = copy.deepcopy(cfg)
    c["models"]["m"]["heldout"] = str(few)
    c["scoring"]["fixed_bands"] = [0.5, 0.8, 0.95]
    check_config(c, SCHEMA)
    # no held-out images is allowed (the audit runs without a null), but the bands then come
    # from the training images, and 6 are too few
    refused(lambda m: m.pop("heldout"),
            "config error at models.m.heldout: none given, so the similarity bands come from "
            "the 6 training images themselves; expected at least 10")
    c = copy.deepcopy(cfg)
    c["models"]["m"].pop("heldout")
    c["models"]["m"]["train"] = str(folder.parent)  # 24 images
    c["models"]["m"]["boundary_images"] = []
    check_config(c, SCHEMA)
    refused(lambda m: m.update(sample={"steps": 51}),
            "models.m.sample.steps: 51 exceeds the model's 50 diffusion steps")
    # a process that does not reach noise where sampling starts: cosine at T = 50 with 10 DDIM
    # steps starts at step 45, where x_t keeps 0.12 of the image
    refused(lambda m: m.update(sample={"sampler": "ddim", "steps": 10}),
            "a DDPM chain with T = 50 and the squaredcos_cap_v2 (cosine) schedule keeps 0.12 "
            "of the image where sampling starts (step 45 with ddim, 10 steps); expected at most "
            "0.1")
    c = copy.deepcopy(cfg)
    c["models"]["m"].update(sample={"sampler": "ddim", "steps": 10}, allow_signal_at_start=True)
    check_config(c, SCHEMA)
    c = copy.deepcopy(cfg)
    c["models"] = {}
    with pytest.raises(ConfigError, match="no dataset, model, generated set or study"):
        check_config(c, SCHEMA)


def test_dataset_names_must_be_free_and_sizes_fit(test_cfg, pngs):
    folder, _ = pngs
    heldout = folder.parent / "heldout"
    write_pngs(np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8),
               heldout, "h")
    cfg = copy.deepcopy(test_cfg)
    cfg["datasets"] = [{"name": "site", "train": str(folder), "heldout": str(heldout)}]
    cfg["train_sizes"] = ["all"]
    assert runs(check_config(copy.deepcopy(cfg), SCHEMA)) == [("site", 6, 0)]
    cfg["train_sizes"] = [7]
    with pytest.raises(ConfigError, match="7 for site exceeds its 6 training images"):
        check_config(copy.deepcopy(cfg), SCHEMA)
    cfg["train_sizes"] = [4]
    cfg["datasets"][0]["name"] = "models"
    with pytest.raises(ConfigError, match="dataset name 'models' is reserved"):
        check_config(copy.deepcopy(cfg), SCHEMA)


def test_run_seeds():
    class W:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    cfg = {"models": {"m": {"seed": 7}, "n": {}}}
    assert run_seed(W(seed="3"), cfg) == 3
    assert run_seed(W(run="breastmnist/n64/seed5"), cfg) == 5
    assert run_seed(W(run="models/m"), cfg) == 7 and run_seed(W(name="n"), cfg) == 0


def test_moved_and_mirrored_held_out_images_are_twins(tmp_path, caplog):
    """The near-duplicate groups match as the scores do: a held-out copy of a training image
    moved by a pixel or mirrored shares its group (so it is left out of the null)."""
    from diffmem.stages.data import write_near_duplicates

    rng = np.random.default_rng(0)
    tr = rng.integers(0, 256, (6, 12, 12), dtype=np.uint8)
    ho = np.concatenate([tr[:1], mirrored(tr[1:2]), np.roll(tr[2:3], 1, axis=2),
                         rng.integers(0, 256, (3, 12, 12), np.uint8)])
    kw = dict(name="x", train=tr, heldout=ho, cfg={"metric": "rms", "threshold": 5.0},
              device="cpu", out_npz=str(tmp_path / "d.npz"), out_json=str(tmp_path / "d.json"),
              out_png=str(tmp_path / "d.png"))

    def twins(shift, mirror):
        return write_near_duplicates(**kw, matching={"shift": shift, "mirror": mirror})[
            "heldout_images_sharing_a_group_with_train"]

    assert twins(0, False) == 1 and twins(0, True) == 2 and twins(1, True) == 3
    assert "3 of 6 held-out images are near-duplicates of training images" in caplog.text


# ----------------------------------------------------------------------------- read strictly
def test_symlinked_subfolders_are_followed_once_and_broken_links_refused(pngs, tmp_path):
    import os

    from diffmem.data.images import check_images, list_image_files

    folder, images = pngs
    outside = tmp_path / "elsewhere"
    write_pngs(images[:2], outside, "o")
    os.symlink(outside, folder / "linked")  # images in a symlinked subfolder: read
    os.symlink(folder, folder / "part0" / "loop")  # a link back up the tree: read once
    names = [p.relative_to(folder).as_posix() for p in list_image_files(folder)]
    assert len(names) == 8 and "linked/part0/o00.png" in names
    assert not any("loop" in n for n in names)
    assert check_images(folder, size=28)["count"] == 8
    os.symlink(tmp_path / "gone.png", folder / "part1" / "x99.png")
    with pytest.raises(DataError, match="x99.png is a broken link; expected an image file"):
        list_image_files(folder)


def test_image_headers_are_checked_before_any_job(pngs, tmp_path):
    from diffmem.data.images import check_images

    folder, _ = pngs
    first = check_images(folder, size=28)
    assert first["count"] == 6 and first == check_images(folder, size=28)
    with pytest.raises(DataError, match="x00.png is 28x28; expected 16x16"):
        check_images(folder, size=16, resize=False)
    (folder / "part1" / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        check_images(folder, size=28)
    (folder / "part1" / "bad.png").unlink()
    # replacing an image (same name) changes the digest: the import is re-run
    write_pngs(np.zeros((1, 28, 28), np.uint8), folder, "x")
    assert check_images(folder, size=28)["digest"] != first["digest"]


def test_held_out_images_that_are_the_training_images_are_refused(test_cfg, pipeline_dir,  # noqa: F811
                                                                  pngs, tmp_path):
    import shutil

    folder, _ = pngs
    copy_ = tmp_path / "copy"
    shutil.copytree(folder, copy_)
    cfg = copy.deepcopy(test_cfg)
    cfg["datasets"] = []
    cfg["scoring"]["fixed_bands"] = [0.5, 0.8, 0.95]
    for heldout in (folder, copy_):
        cfg["models"] = {"m": {"folder": str(pipeline_dir), "train": str(folder),
                               "heldout": str(heldout)}}
        with pytest.raises(ConfigError, match="config error at models.m.heldout: .* holds the "
                                              "same images as train"):
            check_config(copy.deepcopy(cfg), SCHEMA)


def test_results_are_written_with_the_users_umask(tmp_path):
    import os
    import stat

    from diffmem.io import save_json

    old = os.umask(0o022)
    try:
        save_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        save_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_the_workflows_own_weights_with_nan_are_refused(tmp_path):
    import torch

    from diffmem.io import load_safetensors, save_safetensors

    save_safetensors(tmp_path / "w.safetensors", {"a": torch.tensor([1.0, float("nan")])})
    with pytest.raises(DataError, match="1 tensors hold NaN or infinite values \\(a\\)"):
        load_safetensors(tmp_path / "w.safetensors")


def test_a_generated_entry_is_checked_before_any_job(test_cfg, pngs, tmp_path):
    from diffmem.stages.config import generated_info

    folder, images = pngs
    heldout = tmp_path / "ho"
    write_pngs(np.random.default_rng(3).integers(0, 256, (12, 28, 28), dtype=np.uint8),
               heldout, "h")
    gen = tmp_path / "gen"
    write_pngs(np.random.default_rng(4).integers(0, 256, (5, 20, 30), dtype=np.uint8), gen, "g")
    cfg = copy.deepcopy(test_cfg)
    cfg["datasets"] = []
    cfg["generated"] = {"g": {"images": str(gen), "train": str(folder), "heldout": str(heldout)}}
    check_config(cfg, SCHEMA)
    info = generated_info(cfg, "g")
    assert info["size"] == 20 and info["channels"] == 1  # the generated images' shorter side
    assert info["images"] == {"images": 5, "train": 6, "heldout": 12}
    c = copy.deepcopy(cfg)
    c["generated"]["g"]["resize"] = False
    with pytest.raises(ConfigError, match="config error at generated.g.images: .* is 30x20; "
                                          "expected 20x20"):
        check_config(c, SCHEMA)
    c = copy.deepcopy(cfg)
    c["generated"]["g"]["heldout"] = str(folder)
    with pytest.raises(ConfigError, match="config error at generated.g.heldout: .* holds the "
                                          "same images as train"):
        check_config(c, SCHEMA)
    tiny = tmp_path / "tiny"
    write_pngs(np.zeros((2, 3, 3), dtype=np.uint8), tiny, "t")
    c = copy.deepcopy(cfg)
    c["generated"]["g"]["images"] = str(tiny)
    with pytest.raises(ConfigError, match="config error at generated.g.images: its images are "
                                          "3 px on the shorter side; expected 4 to 1024"):
        check_config(c, SCHEMA)
