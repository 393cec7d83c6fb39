"""On demand (``DIFFMEM_SLOW_TESTS=1``; its model trains for about 3 minutes on one core, too
long for the suite's budget): the copy verdict on a real model that copies the way augmented
medical training makes models copy (tests/rotation_model.py), against an oracle that knows the
augmentation. ``DIFFMEM_ROTATION_STEPS`` trains it for other than 2,500 steps (the README's
1,200-step figures)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("DIFFMEM_SLOW_TESTS"),
                                reason="on demand: DIFFMEM_SLOW_TESTS=1 (about 4 minutes)")


def test_a_model_trained_with_rotations_is_found_to_copy_and_its_copies_are_flagged(data_root):
    """Each audit as a run of the workflow would make it (its own copy eye, its own null of
    every unseen BreastMNIST image outside the training images' near-duplicate groups and the
    eye's twins). The model against its training images: yes, and the per-image copy flags find
    at least 90 % of the oracle's copies and of those turned by 10° or more, where the pixel
    match alone finds fewer, and flag at most 10 % of the samples the oracle calls new (when it
    calls at least 20 new). The same samples against training images the model never saw (the
    negative control): no yes, and at most 10 % of the samples its oracle calls new flagged."""
    from diffmem.attacks.copies import embed_fn, retrieval_check, train_embedding
    from diffmem.diffusion.denoiser import Denoiser
    from diffmem.diffusion.sampler import sample
    from diffmem.metrics.scores import per_image, score_generated
    from diffmem.metrics.stats import decide
    from diffmem.stages.config import COPIES_DEFAULTS

    from .rotation_model import SIZE, images, null_of, oracle, train_model

    d = images(data_root)
    unet, process = train_model(d["train"],
                                steps=int(os.environ.get("DIFFMEM_ROTATION_STEPS", 2500)))
    samples = sample(Denoiser(unet, process), process,
                     300, shape=(1, SIZE, SIZE), sampler="ddpm", steps=100,
                     batch_size=300, seed=0, progress=False)
    cfg = {"carlini": {"alpha": 0.5, "n": 8, "delta": 0.333}, "top_k": 8, "subsets": 10,
           "permutations": 50, "bootstrap": 50}
    out = {}
    for name, idx in (("model", d["train_idx"]), ("negative control", d["other_idx"])):
        train = d["split"][idx]
        net, _ = train_embedding(train, d["duplicates"]["train_group"][idx],
                                 dict(COPIES_DEFAULTS), seed=0, device="cpu")
        pool, groups = null_of(d, idx, net)
        unseen = pool["images"]
        truth = oracle(samples, train, unseen)
        res = score_generated(train=train, groups=groups, generated=samples, pool=pool,
                              cfg=cfg, embed=embed_fn(net, "cpu"))
        table = per_image(res)
        flags, eye = table["copy"].to_numpy(), table["eye"].to_numpy()
        pixel = res["nns"]["generated images"]["cosine"]["sim"][:, 0] >= \
            res["bands"]["cosine"]["edges"][2]
        new = ~truth["copy"]
        check = {r["family"]: r["recall_combined"]
                 for r in retrieval_check(res["scorer"], train, seed=4)}
        out[name] = {"answer": decide(res["tests"]["plain_copies"], alpha=0.05, margin=0.05),
                     "truth": truth, "flags": flags, "pixel": pixel, "new": new,
                     "check": check}
        print(f"{name}: {out[name]['answer']}; null of {len(unseen)} unseen images "
              f"({len(pool['calibrate'])} calibrating, high edge at their "
              f"{res['bands']['combined']['quantiles_used'][2]:.3f} quantile); the oracle "
              f"calls {truth['copy'].sum()} of {len(samples)} samples copies and {new.sum()} "
              f"new, of which {flags[new].sum()} flagged (by eye: "
              f"{dict(zip(*np.unique(eye[new & flags], return_counts=True), strict=True))})")
    m = out["model"]
    copies, flags, pixel = m["truth"]["copy"], m["flags"], m["pixel"]
    turned = copies & (np.abs(m["truth"]["angle"]) >= 10)
    print(f"model: {turned.sum()} copies turned by ≥ 10°; flagged {flags[copies].mean():.3f} of "
          f"the copies, {flags[turned].mean():.3f} of the turned ones (pixel match alone "
          f"{pixel[copies].mean():.3f}, {pixel[turned].mean():.3f})")
    print("model: the eye's own check (recall of changed training images):",
          ", ".join(f"{k} {v:.2f}" for k, v in m["check"].items()))
    # the oracle-new samples by how close the oracle puts them to a training image: its
    # scores of the unseen images themselves give the scale
    unseen_scores = m["truth"]["unseen_score"]
    for q in (0.5, 0.9, 0.95):
        low = m["truth"]["score"] <= np.quantile(unseen_scores, q)
        print(f"model: samples at or below the unseen images' {q:.2f} quantile of the oracle's "
              f"score: {low.sum()}, flagged {flags[low].sum()}")
    assert copies.mean() > 0.5 and turned.sum() >= 10
    assert m["answer"] == "yes"
    assert pixel[turned].mean() < flags[turned].mean()
    # a weak eye shows as weak in its own check: where the flags miss turned copies, so does
    # the check's recall of turned training images (the check a "no" cites)
    assert min(m["check"]["rotated 10°"], m["check"]["rotated 15°"]) < 0.9 or \
        flags[turned].mean() >= 0.8
    c = out["negative control"]
    assert c["answer"] != "yes"
    assert c["new"].sum() >= 20 and c["flags"][c["new"]].mean() <= 0.1
    # issue 28's criteria for the per-image flags, last: on 2026-12-08 the turned copies' one
    # does not hold (63.8 % at the run's own cut; README, "A real model, trained with
    # rotations")
    assert flags[copies].mean() >= 0.9 and flags[turned].mean() >= 0.9
    if m["new"].sum() >= 20:  # a share of a handful says nothing
        assert flags[m["new"]].mean() <= 0.1
