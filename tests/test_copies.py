"""The learned copy eye: its views, its loss, both eyes' combined score, its twins and what it
finds on the real BreastMNIST file (copies a model changed, which the pixel match cannot see)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmem.attacks.copies import (
    affine_views,
    augment_settings,
    eye_twins,
    gaussian_blur,
    nt_xent,
    random_views,
    train_embedding,
    twin_threshold,
)
from diffmem.data import transforms as T
from diffmem.metrics.similarity import (
    EyeCalibration,
    Matching,
    combined_nearest,
    nearest,
)


def test_views_are_drawn_per_image():
    """One batched call gives every image its own view (torchvision's v2 transforms give a whole
    batch one draw): the same image repeated comes back as different views."""
    x = torch.linspace(-1, 1, 28 * 28).view(1, 1, 28, 28).repeat(8, 1, 1, 1)
    v = random_views(x, torch.Generator().manual_seed(0), augment_settings(None))
    assert v.shape == x.shape and v.min() >= -1 and v.max() <= 1
    flat = v.view(8, -1)
    assert all((flat[i] - flat[0]).abs().max() > 0.05 for i in range(1, 8))


def test_the_identity_affine_view_and_the_blur_of_zero_keep_the_image():
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    still = {"rotation": 0.0, "zoom": [1.0, 1.0], "translate": 0.0, "flip": False,
             "crop_area": 1.0}
    torch.testing.assert_close(affine_views(x, torch.Generator().manual_seed(0), still), x,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian_blur(x, torch.zeros(3)), x, atol=1e-6, rtol=0)
    # one image blurred, one not: per image
    out = gaussian_blur(x, torch.tensor([0.0, 2.0, 0.0]))
    torch.testing.assert_close(out[[0, 2]], x[[0, 2]], atol=1e-6, rtol=0)
    assert out[1].std() < x[1].std()


def test_nt_xent_equals_its_formula_and_twins_are_not_negatives():
    """NT-Xent by hand on four images (z1, z2 their two views), then with images 0 and 1 one
    near-duplicate group: their views leave each other's denominators."""
    g = torch.Generator().manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=1)
    tau = 0.5
    z = torch.cat([z1, z2])

    def by_hand(groups):
        total = 0.0
        for i in range(8):
            j = (i + 4) % 8
            terms = [k for k in range(8) if k != i and (k == j or groups[k % 4] !=
                                                        groups[i % 4])]
            denom = sum(math.exp(float(z[i] @ z[k]) / tau) for k in terms)
            total += -math.log(math.exp(float(z[i] @ z[j]) / tau) / denom)
        return total / 8

    assert float(nt_xent(z1, z2, torch.arange(4), tau)) == pytest.approx(
        by_hand([0, 1, 2, 3]), rel=1e-5)
    assert float(nt_xent(z1, z2, torch.tensor([0, 0, 2, 3]), tau)) == pytest.approx(
        by_hand([0, 0, 2, 3]), rel=1e-5)


def test_the_combined_score_is_each_eyes_calibration_rank_left_out_for_calibration_images():
    """Two training images, three queries; calibration similarities by hand. R(s) = #{cal ≤ s}/n;
    a calibration image's own value is left out of its CDF."""
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    queries = np.concatenate([refs[:1], rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)])
    r_emb = np.eye(2, 4, dtype=np.float32)
    q_emb = np.array([[0.6, 0.8, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)
    pix = nearest(queries, refs, kind="cosine", top_k=2)
    cal = EyeCalibration(pixel=np.array([0.1, 0.5, 0.9, 0.95]),
                         embedding=np.array([0.2, 0.7, 0.8, 0.99]))
    out = combined_nearest(queries, refs, q_emb, r_emb, cal, top_k=2)
    # query 0 is training image 0: pixel cosine 1 beats every calibration value → R = 1
    assert out["index"][0, 0] == 0 and out["sim"][0, 0] == 1.0 and out["eye"][0, 0] in (0, 2)
    # query 1: embedding 1.0 with training image 1 → R_emb = 4/4
    assert out["index"][1, 0] == 1 and out["sim"][1, 0] == 1.0
    # query 2: embedding 0 with both; its pixel R decides
    p2 = pix["sim"][2]
    want = max((cal.pixel <= s).mean() for s in p2)
    assert out["sim"][2, 0] == pytest.approx(want)
    # left out: a "calibration image" whose own values are cal[1] counts 3 others, not 4
    own = combined_nearest(queries[2:], refs, q_emb[2:], r_emb, cal, top_k=2,
                           own=np.array([1]))
    s_pix = pix["sim"][2]
    loo = max(((cal.pixel <= s).sum() - (cal.pixel[1] <= s)) / 3 for s in s_pix)
    loo = max(loo, ((cal.embedding <= 0.0).sum() - (cal.embedding[1] <= 0.0)) / 3)
    assert own["sim"][0, 0] == pytest.approx(loo)


def test_changed_copies_are_what_their_names_say():
    rng = np.random.default_rng(0)
    img = np.zeros((1, 28, 28), np.uint8)
    img[0, 10:18, 4:8] = 200
    assert np.array_equal(T.rotated(0)(img, rng), img)
    assert np.array_equal(T.zoomed(1.0)(img, rng), img)
    moved = T.shifted(4)(img, rng)
    assert moved.sum() == img.sum() and not np.array_equal(moved, img)
    turned = T.rotated(90)(img, rng)  # a vertical bar turned into a horizontal one
    ys, xs = np.nonzero(turned[0] > 100)
    assert np.ptp(xs) > np.ptp(ys)
    assert np.array_equal(T.mirrored_copy(img, rng)[0], img[0, :, ::-1])
    assert T.cutout(0.1)(img, rng).shape == img.shape
    for _, fn, _ in T.FAMILIES:
        assert fn(img, rng).shape == img.shape and fn(img, rng).dtype == np.uint8


@pytest.fixture(scope="module")
def eye(data_root):
    """The copy eye of 200 BreastMNIST training images at the default settings, trained on them
    alone, with its twin threshold; unseen images: the held-out split and the unused train
    images."""
    from diffmem.data.duplicates import near_duplicate_groups
    from diffmem.stages.config import COPIES_DEFAULTS

    with np.load(data_root / "breastmnist.npz") as f:
        tr, ho = f["train_images"], np.concatenate([f["val_images"], f["test_images"]])
    match = Matching.from_config(None, 28)
    groups = near_duplicate_groups(tr, ho, metric="rms", threshold=5.0, max_diameter=None,
                                   matching=match)
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(tr), 200, replace=False))
    unused = np.setdiff1d(np.arange(len(tr)), idx)
    # the settings the known-truth study measured, for two thirds of the steps
    cfg = COPIES_DEFAULTS | {"steps": 400}
    net, summary = train_embedding(tr[idx], groups["train_group"][idx], cfg, seed=0,
                                   device="cpu")
    return {"net": net, "summary": summary, "cfg": cfg, "train": tr[idx],
            "train_groups": groups["train_group"][idx], "groups": groups, "heldout": ho,
            "unused": tr[unused], "unused_idx": unused, "match": match,
            "twins": twin_threshold(net, tr[idx], cfg, seed=1)}


def test_the_eye_learns_its_task_and_finds_the_copies_the_pixel_match_cannot(eye):
    """Trained on the training images alone, the loss falls, and a training image rotated by
    15°, moved 4 px or zoomed 1.2 finds its own original as its nearest training image far more
    often than the pixel match does."""
    from diffmem.attacks.copies import embed

    losses = [loss for _, loss in eye["summary"]["losses"]]
    assert losses[-1] < 0.5 * losses[0]
    train = eye["train"]
    emb = embed(eye["net"], train, "cpu")
    rng = np.random.default_rng(3)
    for fn in (T.rotated(15), T.shifted(4), T.zoomed(1.2)):
        pick = rng.choice(len(train), 60, replace=False)
        x = fn(train[pick], rng)
        by_eye = (embed(eye["net"], x, "cpu") @ emb.T).argmax(1)
        by_pixels = nearest(x, train, kind="cosine", top_k=1,
                            matching=eye["match"])["index"][:, 0]
        groups = eye["train_groups"]
        eye_hit = (groups[by_eye] == groups[pick]).mean()
        pixel_hit = (groups[by_pixels] == groups[pick]).mean()
        assert eye_hit > 0.8 and eye_hit > pixel_hit, (eye_hit, pixel_hit)


def test_twins_need_both_eyes(eye):
    """The eye's twins of training images among unseen images: only where the pixel match (mean-
    centred cosine at its best shift and mirror) agrees, so an image that is not near-identical
    to a training image is never left out of the null however the embedding maps it; a training
    image's own copy with new brightness is one."""
    from diffmem.attacks.copies import embed

    net, train = eye["net"], eye["train"]
    t = eye["twins"]["twin_threshold"]
    assert 0 < t < 1 and eye["twins"]["own_view_similarity_quantiles"]["0.5"] == t
    emb = embed(net, train, "cpu")
    brighter = np.clip(train[:10].astype(int) * 0.8 + 30, 0, 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    kw = dict(threshold=t, pixel_cosine=0.95, matching=eye["match"])
    assert eye_twins(train, emb, brighter, embed(net, brighter, "cpu"), **kw).all()
    assert not eye_twins(train, emb, noise, embed(net, noise, "cpu"), **kw).any()
    # with the pixel condition off (cosine ≥ -1) the embedding alone decides
    loose = eye_twins(train, emb, eye["heldout"], embed(net, eye["heldout"], "cpu"),
                      threshold=t, pixel_cosine=-1.0, matching=eye["match"])
    strict = eye_twins(train, emb, eye["heldout"], embed(net, eye["heldout"], "cpu"), **kw)
    assert strict.sum() <= loose.sum() and (strict <= loose).all()


def test_rotated_copies_get_yes_where_the_pixel_match_says_otherwise(eye):
    """A generator of nothing but training images turned by 15° (or 25°): the pixel
    match alone does not answer yes; both eyes together do, against a null of unseen images
    without either eye's twins; unseen images themselves do not get yes."""
    from diffmem.attacks.copies import embed_fn, eye_twins
    from diffmem.metrics.null import null_pool
    from diffmem.metrics.scores import score_generated
    from diffmem.metrics.stats import decide

    net, train, g = eye["net"], eye["train"], eye["groups"]
    embed = embed_fn(net, "cpu")
    train_emb = embed(train)
    seen = set(eye["train_groups"].tolist())

    def twins(x):
        return eye_twins(train, train_emb, x, embed(x), threshold=eye["twins"]["twin_threshold"],
                         pixel_cosine=0.95, matching=eye["match"])

    unused_groups = g["train_group"][eye["unused_idx"]]
    free = np.array([u not in seen for u in unused_groups]) & ~twins(eye["unused"])
    stand_in = eye["unused"][free][:96]  # unseen images outside the null
    rest = np.flatnonzero(free)[96:]
    pool = null_pool(heldout=eye["heldout"], heldout_groups=g["heldout_group"],
                     unused=eye["unused"][rest], unused_groups=unused_groups[rest],
                     train_groups=eye["train_groups"], max_images=10000, seed=1,
                     heldout_eye_twin=twins(eye["heldout"]))
    assert pool["counts"]["heldout_eye_twins_excluded"] > 0
    cfg = {"carlini": {"alpha": 0.5, "n": 50, "delta": 0.333}, "subsets": 10,
           "permutations": 50, "bootstrap": 50}
    rng = np.random.default_rng(5)
    picks = train[rng.choice(len(train), 96)]
    for name, images in [("rotated 15°", T.rotated(15)(picks, rng)),
                         ("rotated 25°, a turn it never trained with", T.rotated(25)(picks, rng)),
                         ("unseen", stand_in)]:
        tests = score_generated(train=train, groups=eye["train_groups"], generated=images,
                                pool=pool, cfg=cfg, embed=embed)["tests"]
        both = decide(tests["plain_copies"], alpha=0.05, margin=0.05)
        pixel = decide(tests["plain_copies_pixel"], alpha=0.05, margin=0.05)
        if name == "unseen":
            assert both != "yes" and pixel != "yes"
        else:
            assert both == "yes" and pixel != "yes", (name, both, pixel)
            t = tests["plain_copies"]
            assert t["effect"] > t["detectable_rate"]  # an excess the test sees with power


def test_the_eyes_own_check_counts_a_hit_only_at_its_source():
    """A changed copy that lands in the high band at *another* training image (as unseen images
    do at the null's false-positive rate) is no recall; at its source, or at a near-duplicate
    twin of it, it is. A stand-in scorer puts every image at training image 0 in the high band:
    with four singleton groups the first family's recall is the share of its picks that were
    image 0 (the check's own seeded draw); with one group of four, every pick."""
    from types import SimpleNamespace

    from diffmem.attacks.copies import retrieval_check

    train = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)

    def nn(images):
        hit = {"sim": np.ones((len(images), 1)), "index": np.zeros((len(images), 1), int)}
        return {"combined": hit, "embedding": hit, "cosine": hit}

    def check(groups):
        scorer = SimpleNamespace(edges={k: (0.0, 0.5, 0.9) for k in ("combined", "embedding",
                                                                       "cosine")},
                                 groups=np.asarray(groups), pixel_kind="cosine", nn=nn)
        return retrieval_check(scorer, train, per_family=64, seed=3)

    picks = np.random.default_rng(3).choice(4, 64, replace=True)
    rows = check([0, 1, 2, 3])
    assert rows[0]["recall_combined"] == pytest.approx(np.mean(picks == 0))
    assert 0 < rows[0]["recall_combined"] < 0.5
    assert all(r["recall_combined"] == 1.0 for r in check([0, 0, 0, 0]))
    assert [r["family"] for r in rows if not r["trained"]] == [
        "shifted 4 px", "gamma 0.7", "elastic warp", "rotated 25°", "cutout of 10 %"]
