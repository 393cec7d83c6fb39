"""Config checks: the schema and the cross-field rules give one line naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from diffmem.errors import ConfigError
from diffmem.stages.config import check_config, runs

from .conftest import ROOT

SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


@pytest.fixture
def default():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def bad(config, match):
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)
    msg = str(err.value)
    assert "\n" not in msg
    assert match in msg, msg


def test_default_and_test_configs_are_valid(default, test_config):
    assert runs(check_config(default, SCHEMA)) == [("breastmnist", 546, 0)]
    assert runs(check_config(copy.deepcopy(test_config), SCHEMA)) == [("breastmnist", 64, 0)]


def test_unknown_key(default):
    default["train"]["stepz"] = 10
    bad(default, "config error at train: Additional properties are not allowed ('stepz'")


def test_wrong_type(default):
    default["sample"]["num_samples"] = "many"
    bad(default, "config error at sample.num_samples: value 'many' is invalid")


def test_out_of_range(default):
    default["saf"]["grey"] = 1.5
    bad(default, "config error at saf.grey: value 1.5 is invalid")


def test_unknown_sampler(default):
    default["sample"]["sampler"] = "euler"
    bad(default, "config error at sample.sampler: value 'euler' is invalid")


def test_train_size_above_split(default):
    default["train_sizes"] = [600]
    bad(default, "600 for breastmnist exceeds its 546 training images; the maximum is 546")


def test_unknown_dataset(default):
    default["datasets"] = ["nosuchmnist"]
    bad(default, "unknown MedMNIST flag 'nosuchmnist'")


def test_attention_level_out_of_range(default):
    default["model"]["attention_levels"] = [3]
    bad(default, "config error at model.attention_levels: [3] out of range")


def test_per_dataset_sizes_and_all(default):
    default["datasets"] = ["breastmnist", "pneumoniamnist"]
    default["train_sizes"] = {"breastmnist": ["all", 100], "pneumoniamnist": [1000]}
    default["seeds"] = [0, 1]
    got = runs(check_config(default, SCHEMA))
    assert ("breastmnist", 546, 1) in got and ("breastmnist", 100, 0) in got
    assert ("pneumoniamnist", 1000, 0) in got and len(got) == 6


def test_command_line_strings_are_coerced_where_the_schema_wants_scalars(default):
    default["download"] = "false"
    default["sample"]["num_samples"] = "3000"
    default["saf"]["grey"] = "0.25"
    default["train_sizes"] = ["all", "100"]
    default["data_root"] = "123"
    check_config(default, SCHEMA)
    assert default["download"] is False and default["sample"]["num_samples"] == 3000
    assert default["saf"]["grey"] == 0.25 and default["train_sizes"] == ["all", 100]
    assert default["data_root"] == "123"
    default["sample"]["num_samples"] = "lots"
    bad(default, "config error at sample.num_samples: value 'lots' is invalid")


def test_baseline_needs_as_many_samples_as_side(default):
    default["sample"]["num_samples"] = 500
    bad(default, "sample.num_samples: 500 is below side.clusters x side.per_cluster = 1000")


def test_sub_vp_settings(default):
    default["diffusion"]["process"] = "subvp"
    default["sample"]["sampler"] = "euler_maruyama"
    check_config(default, SCHEMA)
    default["diffusion"]["beta_min"] = 30.0
    bad(default, "config error at diffusion.beta_min: 30.0 must be below beta_max 20.0")


def test_euler_maruyama_needs_the_sub_vp_process(default):
    default["sample"]["sampler"] = "euler_maruyama"
    bad(default, "config error at sample.sampler: 'euler_maruyama' integrates the sub-VP SDE")
    default["diffusion"]["process"] = "vp"
    bad(default, "config error at diffusion.process: value 'vp' is invalid")


def test_paper_config_is_the_papers_study():
    """workflow/configs/paper.yaml: PathMNIST 1k-50k plus Table 2's six sets on their whole
    training splits, sub-VP SDE, 30k steps, 150k samples."""
    paper = yaml.safe_load((ROOT / "workflow/configs/paper.yaml").read_text())
    got = runs(check_config(paper, SCHEMA))
    path_sizes = sorted(n for d, n, _ in got if d == "pathmnist")
    assert path_sizes[0] == 1000 and path_sizes[-1] == 50000
    whole = {d: n for d, n, _ in got if d != "pathmnist"}
    assert whole == {"breastmnist": 546, "retinamnist": 1080, "pneumoniamnist": 4708,
                     "bloodmnist": 11959, "organsmnist": 13932, "chestmnist": 78468}
    assert paper["diffusion"]["process"] == "subvp"
    assert paper["sample"]["sampler"] == "euler_maruyama"
    assert paper["train"]["steps"] == 30000 and paper["sample"]["num_samples"] == 150000
    assert paper["classifiers"]["depth"] == 50
    assert paper["boundary"]["trajectories"] == 16 and paper["boundary"]["t_step"] == 10


def test_fid_weights_must_be_an_existing_safetensors_file(default, tmp_path):
    default["fid"]["inception_weights"] = str(tmp_path / "inception.pth")
    bad(default, "is not a .safetensors file")
    default["fid"]["inception_weights"] = str(tmp_path / "inception.safetensors")
    bad(default, f"fid.inception_weights: file not found: {tmp_path / 'inception.safetensors'}")
    (tmp_path / "inception.safetensors").write_bytes(b"x")
    check_config(default, SCHEMA)


def test_a_saf_that_cannot_fit_is_refused_before_any_job(default):
    default["saf"]["radius"] = 14
    bad(default, "config error at saf.radius: a disc of radius 14 does not fit wholly inside a "
                 "28x28 image")


def test_boundary_euler_maruyama_needs_sub_vp(default):
    default["boundary"]["sampler"] = "euler_maruyama"
    bad(default, "config error at boundary.sampler")


def test_a_process_that_never_reaches_noise_is_refused_before_any_job(default):
    """T = 100 with β up to 0.02 keeps 0.60 of the image at its last step (0.66 where 10 DDIM
    steps start): its samples are noise. The test config's β_end 0.2 passes."""
    default["diffusion"].update(num_train_timesteps=100, beta_end=0.02)
    default["sample"].update(sampler="ddim", steps=10)
    bad(copy.deepcopy(default), "config error at diffusion: a DDPM chain with T = 100 and linear "
                                "beta from 0.0001 to 0.02 keeps 0.66 of the image where sampling "
                                "starts (step 90 with ddim, 10 steps); expected at most 0.1")
    default["diffusion"]["beta_end"] = 0.2
    check_config(copy.deepcopy(default), SCHEMA)
    # the cosine schedule keeps 0.14 where 10 DDIM steps start at T = 100, and 0.15 at T = 1000
    # (step 900); 50 steps start at step 980, where it keeps 0.03
    default["diffusion"].update(beta_schedule="squaredcos_cap_v2")
    bad(copy.deepcopy(default), "keeps 0.14 of the image")
    default["diffusion"]["num_train_timesteps"] = 1000
    bad(copy.deepcopy(default), "keeps 0.15 of the image where sampling starts (step 900")
    default["sample"]["steps"] = 50
    check_config(default, SCHEMA)


def test_the_matching_section(default):
    default["matching"] = {"shift": 9}
    bad(copy.deepcopy(default), "config error at matching.shift: value 9 is invalid")
    default["matching"] = {"shift": 0, "mirror": False}
    check_config(default, SCHEMA)


def test_entries_share_a_copy_embedding_only_when_it_would_be_the_same_one():
    """The copy embedding's key: the same training and held-out images read the same way under
    the same mirror share one; other held-out images (the near-duplicate groups are made over
    both), no held-out images, a model trained with random flips (its pixel match mirrors) or
    other training images each get their own."""
    from diffmem.stages.config import copy_key

    def key(entry=None, matching=None, kind="generated", **digests):
        config = {kind: {"e": {"resize": True, **(entry or {})}}}
        if matching is not None:
            config["matching"] = matching
        info = {"images_digest": {"train": "t", "heldout": "h"} | digests, "size": 28,
                "channels": 1}
        info["images_digest"] = {k: v for k, v in info["images_digest"].items() if v}
        return copy_key(config, kind, "e", info)

    base = key()
    assert key() == base and key(entry={"images": "elsewhere"}) == base
    assert len({base, key(heldout="other"), key(heldout=None), key(train="other"),
                key(entry={"resize": False})}) == 5
    # the mirror: on by default; off when matching says so, unless a model flips in training
    assert key(matching={"mirror": False}) != base
    assert key(kind="models", matching={"mirror": False}) != \
        key(kind="models", matching={"mirror": False}, entry={"random_flip": True})
    assert key(kind="models", entry={"random_flip": True}) == key(kind="models")
