"""The scoring module on stand-ins whose answer is known: hand-computed bands, planted twins,
and generators that copy training images or return unseen ones, on the real BreastMNIST file."""

from __future__ import annotations

import numpy as np
import pytest

from diffmem.data.duplicates import group_images
from diffmem.metrics.memorization import band_scores, carlini_extracted
from diffmem.metrics.null import null_pool
from diffmem.metrics.scores import NULL, PLAIN, SIDE_BEST, cluster_halves, score_run
from diffmem.metrics.similarity import Matching, mirrored, nearest
from diffmem.metrics.stats import (
    NO_NULL,
    UNLIKE,
    auc_test,
    decide,
    detectable_rate,
    holm,
    rate_excess,
    tpr_at_fpr,
)


def test_similarities_are_one_for_identical_and_ordered_by_difference():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)
    near = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    far = rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)
    refs = np.concatenate([a, near, far])
    for kind in ("cosine", "l2"):
        nn_ = nearest(a, refs, kind=kind, top_k=3)
        assert nn_["index"][0].tolist() == [0, 1, 2]
        assert nn_["sim"][0, 0] == pytest.approx(1.0, abs=1e-5)
        assert 1 > nn_["sim"][0, 1] > nn_["sim"][0, 2]
    # normalised l2: 1 - RMS in [0, 1] pixel units
    rms = np.sqrt(((a.astype(float) - far) ** 2).mean()) / 255
    assert nearest(a, far, kind="l2", top_k=1)["sim"][0, 0] == pytest.approx(1 - rms, abs=1e-4)


def _nn(sim_rows, idx_rows):
    return {"sim": np.array(sim_rows, float), "index": np.array(idx_rows), "kind": "cosine"}


def test_band_ams_ums_equal_hand_computed_values():
    # 4 generated images, their 3 most similar of 5 training images; bands [.5,.8) [.8,.95) ≥.95
    nn_ = _nn([[0.99, 0.97, 0.6], [0.96, 0.85, 0.82], [0.9, 0.7, 0.2], [0.4, 0.3, 0.1]],
              [[0, 1, 2], [3, 0, 4], [2, 4, 1], [1, 2, 3]])
    groups = np.arange(5)
    s = band_scores(nn_, groups, [0.5, 0.8, 0.95])
    # AMS: nearest in band — high: images 0, 1; mid: image 2; low: none
    assert (s["ams_high"], s["ams_mid"], s["ams_low"]) == (0.5, 0.25, 0.0)
    # UMS: every training image in the band for some generated image (SIDE's union)
    # high: {0, 1, 3} → 3/4; mid: {0, 4, 2} → 3/4; low: {2 (0.6), 4 (0.7)} → 2/4
    assert (s["ums_high"], s["ums_mid"], s["ums_low"]) == (0.75, 0.75, 0.5)
    # planted twins: training images 0 and 1 are one patient → one group
    twins = np.array([0, 0, 2, 3, 4])
    assert band_scores(nn_, twins, [0.5, 0.8, 0.95])["ums_high"] == 0.5


def test_carlini_criterion_flags_copies_not_unrelated_images():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    near = np.clip(train[1].astype(int) + rng.integers(-3, 4, (28, 28)), 0, 255)
    gen = np.stack([train[0], near.astype(np.uint8), rng.integers(0, 256, (28, 28), np.uint8)])
    nn_ = nearest(gen, train, kind="l2", top_k=50)
    l2 = (1 - nn_["sim"]) * 28
    assert (np.diff(l2, axis=1) >= -1e-6).all()
    assert carlini_extracted(l2, alpha=0.5, delta=1 / 3).tolist() == [True, True, False]


def test_planted_twins_form_one_group_and_chains_are_bounded():
    rng = np.random.default_rng(1)
    base = rng.integers(40, 200, (6, 28, 28)).astype(float)
    twin = base[2] + rng.normal(0, 2, (28, 28))          # RMS ≈ 2 grey levels
    # a chain: each link 4 grey levels RMS from the next, the ends 16 apart
    step = rng.choice([-1, 1], (28, 28)) * 4.0
    chain = [base[5] + k * step for k in range(5)]
    images = np.clip(np.stack([*base, twin, *chain[1:]]), 0, 255).astype(np.uint8)
    res = group_images(images, metric="rms", threshold=5.0)
    g = res["groups"]
    assert g[2] == g[6] and len(set(g[:5])) == 5          # the twin joins its original only
    chain_ids = [5, 7, 8, 9, 10]
    assert res["chains_split"] == 1 and len({g[i] for i in chain_ids}) > 1
    for grp in {g[i] for i in chain_ids}:                  # every part within 2 × threshold
        members = images[g == grp].reshape(-1, 784).astype(float)
        d = np.sqrt(((members[:, None] - members[None]) ** 2).mean(-1))
        assert d.max() <= 2 * 5.0 + 1e-6


def test_holm_rate_excess_and_auc():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    t = rate_excess(50, 100, 5, 100)
    assert t["effect"] == pytest.approx(0.45) and t["ci_low"] > 0.3 and t["p_value"] < 1e-10
    same = rate_excess(5, 100, 5, 100)
    assert same["p_value"] > 0.4 and same["ci_low"] < 0 < same["ci_high"]
    rng = np.random.default_rng(0)
    a = auc_test(rng.normal(1, 1, 300), rng.normal(0, 1, 300), boot=200)
    assert 0.7 < a["effect"] < 0.82 and a["ci_low"] > 0.6 and a["p_value"] < 1e-6
    r = tpr_at_fpr(np.arange(100.0), np.arange(200.0) - 150, 0.01)
    assert r["fpr_achieved"] <= 0.01 and r["tpr"] == pytest.approx(0.52)


def test_decide():
    kw = dict(alpha=0.05, margin=0.05)
    assert decide({"p_value": 0.001, "ci_low": 0.1, "ci_high": 0.3}, **kw) == "yes"
    assert decide({"p_value": 0.5, "ci_low": -0.02, "ci_high": 0.03}, **kw) == "no"
    assert decide({"p_value": 0.5, "ci_low": -0.1, "ci_high": 0.2}, **kw) == "inconclusive"
    assert decide({"p_value": 0.5, "ci_low": 0.4, "ci_high": 0.54}, null_effect=0.5,
                     **kw) == "no"


def test_cluster_halves_split_every_cluster():
    labels = np.repeat(np.arange(3), 5)
    sel, ev = cluster_halves(labels, seed=0)
    assert len(set(sel) & set(ev)) == 0 and len(sel) + len(ev) == 15
    assert [int((labels[sel] == c).sum()) for c in range(3)] == [2, 2, 2]


@pytest.fixture(scope="module")
def breast(data_root):
    """BreastMNIST with its near-duplicate groups; a 273-image training set; unseen images with
    no twin among them split into a null pool and a disjoint set for a stand-in generator."""
    f = np.load(data_root / "breastmnist.npz")
    tr = f["train_images"]
    ho = np.concatenate([f["val_images"], f["test_images"]])
    # grouped as the audit matches (the best over shifts of up to 2 pixels and the mirror)
    g = group_images(np.concatenate([tr, ho]), matching=Matching.from_config(None, 28))["groups"]
    tg, hg = g[: len(tr)], g[len(tr):]
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(tr), 273, replace=False))
    seen = set(tg[idx].tolist())
    unused = np.array([u for u in np.setdiff1d(np.arange(len(tr)), idx) if tg[u] not in seen])
    order = rng.permutation(unused)
    gen_unseen, pool_unused = order[:96], order[96:]
    pool = null_pool(heldout=ho, heldout_groups=hg, unused=tr[pool_unused],
                     unused_groups=tg[pool_unused], train_groups=tg[idx], max_images=10000,
                     seed=1)
    return {"train": tr[idx], "groups": tg[idx], "pool": pool, "heldout": ho,
            "unseen": tr[gen_unseen], "rng": rng}


CFG = {"carlini": {"alpha": 0.5, "n": 50, "delta": 0.333}, "subsets": 20, "permutations": 100,
       "bootstrap": 100}


def _run(b, gen):
    labels = np.repeat(np.arange(3), 16)
    side = {1.0: (gen[:48], labels), 3.0: (gen[48:96], labels)}
    return score_run(train=b["train"], groups=b["groups"], plain=gen, side_sets=side,
                     pool=b["pool"], heldout=b["heldout"], cfg=CFG)


def test_null_leaves_out_twins_of_training_images(breast):
    c = breast["pool"]["counts"]
    assert c["heldout_twins_excluded"] > 0 and c["pool"] == c["heldout"] - \
        c["heldout_twins_excluded"] + c["unused_train"] - c["unused_train_twins_excluded"]
    assert c["calibrate"] + c["score"] == c["used"]
    pool = breast["pool"]
    cal, sco = set(pool["groups"][pool["calibrate"]]), set(pool["groups"][pool["score"]])
    assert not cal & sco  # two frames of one unseen patient never sit in both halves


def test_a_generator_that_copies_training_images_gets_yes(breast):
    rng = breast["rng"]
    picks = breast["train"][rng.integers(0, len(breast["train"]), 96)].astype(float)
    copies = np.clip(picks + rng.normal(0, 3, picks.shape), 0, 255).astype(np.uint8)
    res = _run(breast, copies)
    t = res["tests"]["plain_copies"]
    assert decide(t, alpha=0.05, margin=0.05) == "yes"
    assert t["value"] > 0.9 and t["null_value"] < 0.1
    table = res["table"]
    null = table[(table.method == NULL) & (table.similarity == "cosine")].iloc[0]
    plain = table[(table.method == PLAIN) & (table.similarity == "cosine")].iloc[0]
    assert plain["ams_high"] > 0.9 > 0.1 > null["ams_high"]
    assert plain["carlini_rate"] > 0.9 and (table.equal_size == res["equal_size"]).all()


def test_a_generator_of_unseen_images_gets_no_yes_on_this_draw(breast):
    """One seeded draw (the known-truth study measures the rate over 20: 1 "yes" in 20 at
    α = 0.05)."""
    res = _run(breast, breast["unseen"])
    assert decide(res["tests"]["plain_copies"], alpha=0.05, margin=0.05) != "yes"
    assert decide(res["tests"]["side_extracts_more"], alpha=0.05, margin=0.05) != "yes"
    assert (res["table"].method == SIDE_BEST).any()


def test_without_unseen_images_scores_are_reported_and_nothing_is_decided(breast):
    """No held-out images (an imported model audited on its training images alone): the
    bands come from the training images themselves, and no question that needs unseen images
    is answered, whether the generator copies or not."""
    b = breast
    empty = null_pool(heldout=b["heldout"][:0], heldout_groups=np.zeros(0, int),
                      unused=b["heldout"][:0], unused_groups=np.zeros(0, int),
                      train_groups=b["groups"], max_images=10000, seed=1)
    rng = np.random.default_rng(5)
    picks = b["train"][rng.integers(0, len(b["train"]), 96)].astype(float)
    copies = np.clip(picks + rng.normal(0, 3, picks.shape), 0, 255).astype(np.uint8)
    answers = {}
    for name, gen in (("copies", copies), ("unseen", b["unseen"])):
        res = score_run(train=b["train"], groups=b["groups"], plain=gen, side_sets={},
                        pool=empty, heldout=None, cfg=CFG)
        t = res["tests"]["plain_copies"]
        answers[name] = (decide(t, alpha=0.05, margin=0.05), t["value"])
        assert t["null_value"] is None and t["p_value"] is None and res["secondary"] == []
        assert "reference, not a null" in res["bands"]["cosine"]["kind"]
        assert NULL not in set(res["table"].method)
    assert answers["copies"][0] == answers["unseen"][0] == NO_NULL
    # the score itself is still measured: copies land in the high band, unseen images rarely
    assert answers["copies"][1] > 0.9 > 0.2 > answers["unseen"][1]


def _copies(b, seed=7, n=96):
    rng = np.random.default_rng(seed)
    return b["train"][rng.integers(0, len(b["train"]), n)]


@pytest.mark.parametrize("move", ["shift 1", "shift 2", "mirror"])
def test_copies_moved_or_mirrored_get_yes(breast, move):
    """A stand-in that emits nothing but training images shifted by 1 or 2 pixels, or mirrored:
    the plain pixel match put them below unseen images (the old verdict's false "no"); the
    audit's matching finds them."""
    picks = _copies(breast)
    gen = {"shift 1": np.roll(picks, 1, axis=2), "shift 2": np.roll(picks, (2, -1), axis=(1, 2)),
           "mirror": mirrored(picks)}[move]
    res = _run(breast, gen)
    t = res["tests"]["plain_copies"]
    assert decide(t, alpha=0.05, margin=0.05) == "yes", t
    assert t["value"] > 0.9 and t["matching"] == {"shift": 2, "mirror": True}
    table = res["table"].set_index(["method", "similarity"])
    # the plain pixel match, reported beside: these copies barely reach its high band
    assert table.loc[(PLAIN, "pixel"), "ams_high"] < 0.2 < table.loc[(PLAIN, "cosine"), "ams_high"]


def test_pure_noise_is_named_samples_unlike_the_training_data(breast):
    noise = np.random.default_rng(3).integers(0, 256, (96, 28, 28), dtype=np.uint8)
    t = _run(breast, noise)["tests"]["plain_copies"]
    assert t["unlike_p_value"] < 1e-6 and decide(t, alpha=0.05, margin=0.05) == UNLIKE


def test_a_copy_answer_says_what_rate_it_could_have_detected(breast):
    """The rate is computed at the run's own sizes: the 96 generated images and the null's
    scoring half (counted here from the pool, not read back from the answer)."""
    t = _run(breast, breast["unseen"])["tests"]["plain_copies"]
    assert t["n"] == 96 and t["null_n"] == len(breast["pool"]["score"])
    assert 0 < t["null_rate_calibration"] < 0.2 and 0 < t["detectable_rate"] < 1
    assert t["detectable_rate"] == pytest.approx(
        detectable_rate(96, len(breast["pool"]["score"]), t["null_rate_calibration"]))


def test_the_readme_s_detectable_rates():
    """The README's examples of what a small null can see."""
    assert round(detectable_rate(126, 40, 0.05), 2) == 0.18
    assert round(detectable_rate(10_000, 94, 5 / 94), 2) == 0.09


def test_the_detectable_rate_equals_a_hand_worked_value():
    """10 generated against 10 null images with no null image in the high band (p0 = 0): by
    hand, Fisher's one-sided p for k of 10 against 0 of 10 is C(10, k)/C(20, k): 0.105 at k = 3,
    0.043 at k = 4; at k = 4 Newcombe's lower bound is 0.4 − √((0.4 − 0.168)² + 0.2775²) =
    0.038 > 0 (Wilson 4/10: 0.168; Wilson upper of 0/10: 0.2775). So "yes" from 4 hits on, and
    the detectable excess δ solves P(Bin(10, δ) ≥ 4) = 0.8, i.e. the 0.8 quantile of
    Beta(4, 7): 0.48366."""
    assert detectable_rate(10, 10, 0.0) == pytest.approx(0.48366, abs=1e-4)


def test_no_needs_the_power_to_have_seen_the_margin():
    quiet = {"p_value": 0.5, "ci_low": -0.02, "ci_high": 0.03, "unlike_p_value": 0.4}
    assert decide(quiet | {"detectable_rate": 0.04}, alpha=0.05, margin=0.05) == "no"
    assert decide(quiet | {"detectable_rate": 0.3}, alpha=0.05, margin=0.05) == "inconclusive"
    assert decide(quiet | {"detectable_rate": None}, alpha=0.05, margin=0.05) == "inconclusive"


def test_the_size_that_would_decide_an_inconclusive_test_by_hand():
    """Half-width 0.2 around an excess of 0.1 (margin 0.05): a yes needs the interval's lower
    end above 0, i.e. half-width 0.1, so (0.2 / 0.1)² = 4 times the sizes; an estimate of 0
    needs a no (upper end below 0.05): (0.1 / 0.05)² = 4 times; an estimate of 0.025, as far from
    both boundaries, needs (0.1 / 0.025)² = 16 times, on the no side; one on a boundary (the
    yes side's 0 with margin 0) has no size that decides it."""
    from diffmem.metrics.stats import size_to_decide

    base = {"margin": 0.05, "null_effect": 0.0, "n": 100, "null_n": 50, "p_value": 0.2}
    s = size_to_decide(base | {"effect": 0.1, "ci_low": -0.1, "ci_high": 0.3})
    assert (s["direction"], s["factor"], s["n"], s["null_n"]) == ("yes", 4.0, 400, 200)
    s = size_to_decide(base | {"effect": 0.0, "ci_low": -0.1, "ci_high": 0.1})
    assert (s["direction"], s["factor"]) == ("no", 4.0)
    s = size_to_decide(base | {"effect": 0.025, "ci_low": -0.075, "ci_high": 0.125})
    assert s["direction"] == "no" and s["factor"] == pytest.approx(16.0)
    # membership's AUC: null effect 0.5, so 0.56 [0.48, 0.64] needs (0.08 / 0.06)² on the yes side
    s = size_to_decide(base | {"null_effect": 0.5, "effect": 0.56, "ci_low": 0.48,
                               "ci_high": 0.64})
    assert s["direction"] == "yes" and s["factor"] == pytest.approx((0.08 / 0.06) ** 2)
    s = size_to_decide(base | {"margin": 0.0, "effect": 0.0, "ci_low": -0.1, "ci_high": 0.1})
    assert s["direction"] is None and "boundary" in s["why"]
    # a bootstrap interval leaning up: a no needs its upper side, 0.12 above the estimate, to
    # come within 0.087 of it: (0.12 / 0.087)² (the walk-back of N = 64, seed 0, in the trend)
    s = size_to_decide(base | {"margin": 0.0, "effect": -0.087, "ci_low": -0.117,
                               "ci_high": 0.033})
    assert s["direction"] == "no" and s["factor"] == pytest.approx((0.12 / 0.087) ** 2)


def test_a_copy_no_also_needs_the_sizes_at_which_the_margin_is_detectable():
    """The interval alone would decide this copy test at 1× (factor 1), but 40 generated against
    30 unseen images cannot see a 0.05 excess: the sizes grow until the exact detectable rate
    reaches the margin, and not much further (a step of 1.25× less would not)."""
    from diffmem.metrics.stats import size_to_decide

    t = {"margin": 0.05, "null_effect": 0.0, "n": 40, "null_n": 30, "effect": -0.01,
         "ci_low": -0.03, "ci_high": 0.01, "detectable_rate": detectable_rate(40, 30, 0.05),
         "null_rate_calibration": 0.05}
    s = size_to_decide(t)
    assert s["direction"] == "no" and s["factor"] > 10
    assert detectable_rate(s["n"], s["null_n"], 0.05) <= 0.05
    f = s["factor"] / 1.25
    assert detectable_rate(int(np.ceil(40 * f)), int(np.ceil(30 * f)), 0.05) > 0.05


@pytest.mark.parametrize("n1,n2,p0", [(60, 80, 0.05), (200, 40, 0.1)])
def test_the_detectable_rate_matches_a_simulation_of_the_yes_rule(n1, n2, p0):
    """At the detectable rate δ the verdict's yes-rule (Fisher p < α and Newcombe's lower bound
    > 0) holds in 80 % of simulated runs; a little below δ it holds less often."""
    delta = detectable_rate(n1, n2, p0)
    rng = np.random.default_rng(0)

    def power(d, runs=3000):
        k1 = rng.binomial(n1, p0 + d, runs)
        k2 = rng.binomial(n2, p0, runs)
        return np.mean([decide(rate_excess(a, n1, b, n2), alpha=0.05, margin=0.05) == "yes"
                        for a, b in zip(k1, k2, strict=True)])

    assert abs(power(delta) - 0.8) < 0.03
    assert power(delta - 0.04) < 0.77


def test_a_study_whose_stand_in_leaves_no_null_is_refused_in_one_line(data_root, tmp_path,
                                                                       test_config):
    """500 training images leave about 270 unseen images; a stand-in of 260 leaves too few for
    the null, and the study says so instead of scoring every stand-in against nothing."""
    from diffmem.errors import ConfigError
    from diffmem.stages.study import known_truth_study_stage

    out = {k: str(tmp_path / f"{k}.out") for k in ("runs", "csv", "md", "json")}
    with pytest.raises(ConfigError, match=r"config error at study.generated: 260 unseen "
                                          r"stand-in images of breastmnist .* expected at least "
                                          r"20 there"):
        known_truth_study_stage(dataset="breastmnist", entry=None, image_size=28,
                                root=str(data_root), download=False,
                                study={"n_train": 500, "generated": 260, "seeds": 1},
                                scoring=test_config["scoring"],
                                duplicates=test_config["duplicates"], device="cpu",
                                out_runs=out["runs"], out_table_csv=out["csv"],
                                out_table_md=out["md"], out_json=out["json"])
    assert not any((tmp_path / f"{k}.out").exists() for k in out)
