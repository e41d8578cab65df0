"""Recipes: every shipped recipe loads, the paper and code recipes say what method.md §3 says the
paper and the official code do, and overrides are parsed, type-checked and rejected by name."""

from __future__ import annotations

import pytest

from cprfl_lib.errors import CprflError
from cprfl_lib.train.recipes import apply_overrides, available_recipes, defaults, dump, load_recipe

ASL_PAPER = {"gamma_neg": 4, "gamma_pos": 0, "clip": 0.05}


def test_the_seven_recipes_are_listed_and_load():
    names = available_recipes()
    assert {"paper-voc", "paper-coco", "code-voc", "code-coco", "cpu-voc", "cpu-coco", "tiny"} <= set(names)
    assert "defaults" not in names
    for name in names:
        config = load_recipe(name)
        assert config["recipe"] == name
        assert set(config) - {"recipe"} == set(defaults())  # no section lost or added
        assert config["description"], f"recipe {name} has no description"


@pytest.mark.parametrize("name, dataset, lr", [("paper-voc", "voc-lt", 5e-5), ("paper-coco", "coco-lt", 1e-5)])
def test_paper_recipes_state_what_the_paper_states(name, dataset, lr):
    c = load_recipe(name)
    assert c["data"]["dataset"] == dataset and c["data"]["image_size"] == 448
    assert c["model"]["backbone"] == "resnet101" and c["model"]["backbone_weights"] == "IMAGENET1K_V1"
    assert c["model"]["freeze_backbone"] is False and c["model"]["head"] == "cprfl"
    assert (c["model"]["dim"], c["model"]["tau"], c["model"]["depth"]) == (2048, 0.5, 1)
    assert c["model"]["residual"] is False  # Eqs. 3-5 have no residual connection
    assert c["semantics"]["encoder"] == "clip-rn50" and c["semantics"]["weights"] == "openai"
    assert c["semantics"]["trainable"] is False  # "the parameters of the text encoder are kept frozen"
    o = c["optim"]
    assert o["optimizer"] == "adam" and o["weight_decay"] == 1e-4 and o["lr"] == lr
    assert o["batch_size"] == 32 and o["epochs"] == 30
    assert o["schedule"] == "constant" and o["schedule_epochs"] is None and o["grad_accum"] == 1
    assert c["loss"]["name"] == "asl"
    assert {k: c["loss"]["params"][k] for k in ASL_PAPER} == ASL_PAPER
    assert c["train"]["ema"] is None


@pytest.mark.parametrize("name, dataset, lr", [("code-voc", "voc-lt", 5e-5), ("code-coco", "coco-lt", 1e-5)])
def test_code_recipes_state_what_the_official_code_does(name, dataset, lr):
    c = load_recipe(name)
    assert c["data"]["dataset"] == dataset and c["data"]["image_size"] == 448
    assert c["data"]["transform"] == "official"  # Cutout + RandAugment, no normalisation
    assert c["model"]["backbone"] == "resnet101" and c["model"]["freeze_backbone"] is False
    assert c["model"]["dim"] == 2048 and c["model"]["dropout"] == 0.1
    assert c["semantics"]["encoder"] == "clip-rn50" and c["semantics"]["trainable"] is True
    o = c["optim"]
    assert o["optimizer"] == "adamw" and o["weight_decay"] == 1e-4 and o["lr"] == lr
    assert o["schedule"] == "onecycle" and o["schedule_epochs"] == 80 and o["epochs"] == 79
    assert o["pct_start"] == 0.1 and o["batch_size"] == 16
    assert o["backbone_lr_mult"] == 1.0  # the intended 0.1x never happened in the official code
    t = c["train"]
    assert t["ema"] == 0.998 and t["amp"] is True and t["amp_dtype"] == "float16"
    assert t["eval_start"] == 11  # evaluated on the test set after every epoch > 10
    assert {k: c["loss"]["params"][k] for k in ASL_PAPER} == ASL_PAPER


@pytest.mark.parametrize("name, dataset", [("cpu-voc", "synth-voc-lt"), ("cpu-coco", "synth-coco-lt")])
def test_cpu_recipes_use_generated_data_minilm_and_a_frozen_lite0(name, dataset):
    c = load_recipe(name)
    assert c["data"]["dataset"] == dataset and c["data"]["image_size"] == 224  # 7 x 7 Lite0 tokens
    assert c["data"]["eval_splits"] is None  # validation and test
    assert c["semantics"]["encoder"] == "minilm" and c["semantics"]["trainable"] is False
    assert c["model"]["backbone"] == "efficientnet-lite0" and c["model"]["freeze_backbone"] is True
    assert c["train"]["cache_features"] in ("auto", True)  # a frozen backbone trains on cached features


def test_the_tiny_recipe_is_small():
    c = load_recipe("tiny")
    assert c["data"]["dataset"].startswith("synth-") and c["data"]["synthetic_limit"]
    assert c["model"]["backbone"] == "tiny" and c["model"]["backbone_weights"] is None
    assert c["semantics"]["weights"] is None and c["train"]["max_steps_per_epoch"]


def test_dotted_string_overrides_are_parsed_as_yaml_values():
    c = load_recipe("tiny", ["optim.lr=3e-4", "optim.epochs=7", "train.ema=0.9", "model.backbone_weights=null",
                              "train.amp=false", "data.dataset=synth-coco-lt", "semantics.template=a {} here"])
    assert c["optim"]["lr"] == 3e-4 and isinstance(c["optim"]["lr"], float)  # YAML 1.1 alone reads a string
    assert c["optim"]["epochs"] == 7 and isinstance(c["optim"]["epochs"], int)
    assert c["train"]["ema"] == 0.9 and c["model"]["backbone_weights"] is None and c["train"]["amp"] is False
    assert c["data"]["dataset"] == "synth-coco-lt" and c["semantics"]["template"] == "a {} here"
    assert c["recipe"] == "tiny" and c["model"]["dim"] == 32  # the rest of the recipe is kept


def test_dict_overrides_dotted_and_nested():
    c = load_recipe("tiny", {"optim.lr": 1e-2, "model": {"dim": 64}, "loss.params": {"gamma_neg": 2}})
    assert c["optim"]["lr"] == 1e-2 and c["model"]["dim"] == 64 and c["model"]["heads"] == 2
    assert c["loss"]["params"] == {"gamma_neg": 2}  # loss parameters are free-form
    again = apply_overrides(c, {"optim.epochs": 4})
    assert again is c and c["optim"]["epochs"] == 4


def test_an_int_where_a_float_is_expected_is_accepted():
    assert load_recipe("tiny", {"optim.lr": 1})["optim"]["lr"] == 1


def test_dump_round_trips():
    import yaml

    c = load_recipe("code-voc", ["optim.lr=2e-5"])
    assert yaml.safe_load(dump(c)) == c


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=1", "optim.lrr"),
    ("optimizer.lr=1", "optimizer"),
    ("model.dimm=3", "model.dimm"),
])
def test_an_unknown_key_is_rejected_by_name(override, needle):
    with pytest.raises(CprflError, match=needle.replace(".", r"\.")):
        load_recipe("tiny", [override])


def test_an_unknown_key_in_a_dict_is_rejected_by_name():
    with pytest.raises(CprflError, match="train.emma"):
        load_recipe("tiny", {"train": {"emma": 0.9}})


@pytest.mark.parametrize("override, needle", [
    ("optim.epochs=abc", "optim.epochs"),
    ("optim.epochs=2.5", "optim.epochs"),
    ("optim.lr=abc", "optim.lr"),
    ("train.deterministic=3", "train.deterministic"),
    ("model=3", "model"),
])
def test_a_value_of_the_wrong_type_is_rejected(override, needle):
    with pytest.raises(CprflError, match=needle) as info:
        load_recipe("tiny", [override])
    assert "\n" not in str(info.value)


def test_an_override_without_equals_sign_is_rejected():
    with pytest.raises(CprflError, match="optim.lr"):
        load_recipe("tiny", ["optim.lr"])


def test_an_unknown_recipe_lists_the_available_ones():
    with pytest.raises(CprflError) as info:
        load_recipe("paper-vocc")
    message = str(info.value)
    assert "paper-vocc" in message
    for name in available_recipes():
        assert name in message


@pytest.mark.parametrize("old, new", [("smoke", "tiny"), ("quick-voc", "cpu-voc"), ("quick-coco", "cpu-coco"),
                                      ("own-cpu", "cpu-own"), ("own-paper", "paper-own")])
def test_the_old_recipe_names_are_unknown_recipes_and_no_recipe_is_named_like_a_profile(old, new):
    from cprfl_repro.context import PROFILES

    with pytest.raises(CprflError, match=f"^unknown recipe '{old}'; available: .*{new}"):
        load_recipe(old)
    assert not set(available_recipes()) & set(PROFILES)


def test_a_recipe_file_outside_the_package(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim: {lr: 0.25}\n")
    c = load_recipe(str(path))
    assert c["recipe"] == "mine" and c["optim"]["lr"] == 0.25
    with pytest.raises(CprflError, match="missing.yaml"):
        load_recipe(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lrr: 1}\n")
    with pytest.raises(CprflError, match="optim.lrr"):
        load_recipe(str(bad))


def test_a_runs_config_yaml_loads_back_as_the_same_configuration(tmp_path):
    config = load_recipe("code-coco", ["optim.lr=2e-5", "train.seed=3"])
    path = tmp_path / "config.yaml"
    path.write_text(dump(config))  # what a run writes
    assert load_recipe(str(path)) == config  # keeps the recipe's name, not "config"


def test_the_paper_recipes_evaluate_after_the_last_epoch_and_the_code_recipes_from_epoch_11():
    from cprfl_lib.train.engine import is_eval_epoch

    paper, code = load_recipe("paper-voc"), load_recipe("code-coco")
    assert [e for e in range(1, 31) if is_eval_epoch(e, paper)] == [30]
    assert [e for e in range(1, 80) if is_eval_epoch(e, code)] == list(range(11, 80))


# --- the splits a run evaluates, the generated scenes, the embedding scale -----------------------------

def test_eval_splits_defaults_to_every_split_and_takes_a_list_of_val_and_test():
    assert defaults()["data"]["eval_splits"] is None
    assert load_recipe("tiny")["data"]["eval_splits"] is None
    assert load_recipe("tiny", ["data.eval_splits=[val]"])["data"]["eval_splits"] == ["val"]
    assert load_recipe("tiny", {"data.eval_splits": ["val", "test"]})["data"]["eval_splits"] == ["val", "test"]
    assert load_recipe("tiny", {"data.eval_splits": ["test"]})["data"]["eval_splits"] == ["test"]


@pytest.mark.parametrize("value", [[], ["train"], ["val", "val"], "val", ["val", "dev"], {"val": 1}])
def test_a_bad_eval_splits_is_rejected(value):
    with pytest.raises(CprflError, match=r"data\.eval_splits"):
        load_recipe("tiny", {"data.eval_splits": value})


def test_synthetic_scene_is_a_mapping_replaced_whole_by_an_override():
    from cprfl_lib.train import recipes

    assert defaults()["data"]["synthetic_scene"] == {} and "synthetic_scene" in recipes.OPAQUE
    c = load_recipe("tiny", ["data.synthetic_scene={decoys: 0, clutter: [2, 4]}"])
    assert c["data"]["synthetic_scene"] == {"decoys": 0, "clutter": [2, 4]}
    again = apply_overrides(c, {"data.synthetic_scene": {"occluders": 0.1}})
    assert again["data"]["synthetic_scene"] == {"occluders": 0.1}  # replaced, not merged
    nested = load_recipe("tiny", {"data": {"synthetic_scene": {"extra_instances": 0.0}}})
    assert nested["data"]["synthetic_scene"] == {"extra_instances": 0.0}


@pytest.mark.parametrize("overrides, needle", [
    ({"data.synthetic_scene": {"decoy": 0}}, r"unknown field\(s\) \['decoy'\]"),
    ({"data.synthetic_scene": 3}, r"data\.synthetic_scene"),
    ({"data.synthetic_scene": [1, 2]}, r"data\.synthetic_scene"),
])
def test_a_bad_synthetic_scene_is_rejected(overrides, needle):
    with pytest.raises(CprflError, match=needle):
        load_recipe("tiny", overrides)


def test_synthetic_scene_on_a_published_benchmark_is_refused():
    with pytest.raises(CprflError, match=r"synthetic_scene applies only to the generated datasets.*voc-lt"):
        load_recipe("paper-voc", {"data.synthetic_scene": {"decoys": 0}})
    assert load_recipe("paper-voc", {"data.synthetic_scene": {}})["data"]["synthetic_scene"] == {}  # nothing changed


def test_centre_and_norm_values():
    sem = defaults()["semantics"]
    assert sem["centre"] is False and sem["norm"] is None
    for norm in (None, "sqrt_m", 1, 2.5):
        assert load_recipe("tiny", {"semantics.centre": True, "semantics.norm": norm})["semantics"]["norm"] == norm
    assert load_recipe("tiny", ["semantics.norm=sqrt_m"])["semantics"]["norm"] == "sqrt_m"


@pytest.mark.parametrize("overrides, needle", [
    ({"semantics.norm": 0}, r"semantics\.norm"),
    ({"semantics.norm": -1.0}, r"semantics\.norm"),
    ({"semantics.norm": "sqrt"}, r"semantics\.norm"),
    ({"semantics.norm": True}, r"semantics\.norm"),
    ({"semantics.norm": float("inf")}, r"semantics\.norm"),
    ({"semantics.centre": 1}, r"semantics\.centre"),
    ({"semantics.centre": "yes"}, r"semantics\.centre"),
    ({"semantics.centre": True, "semantics.trainable": True, "semantics.encoder": "clip-tiny"}, "trainable"),
    ({"semantics.norm": "sqrt_m", "semantics.trainable": True, "semantics.encoder": "clip-tiny"}, "trainable"),
    ({"semantics.norm": 1.0, "semantics.normalize": True}, r"normalize=true and semantics\.norm=1\.0"),
])
def test_bad_embedding_scales_are_refused(overrides, needle):
    with pytest.raises(CprflError, match=needle):
        load_recipe("tiny", overrides)


def test_centre_with_normalize_is_allowed():
    c = load_recipe("tiny", {"semantics.centre": True, "semantics.normalize": True})
    assert c["semantics"]["centre"] is True and c["semantics"]["normalize"] is True


def test_every_configuration_key_has_a_rule():
    """validate checks every value, not only those whose default is not null (a null default admits any type)."""
    from cprfl_lib.train.recipes import _rules

    keys = {f"{s}.{k}" if k else s for s, v in defaults().items() for k in (v if isinstance(v, dict) else [None])}
    assert not keys - set(_rules()), sorted(keys - set(_rules()))


@pytest.mark.parametrize("params, needle", [
    ({"gamma_neg": -4}, r"'loss\.params\.gamma_neg' must be a finite number >= 0 for loss 'asl', got -4"),
    ({"clip": 1}, r"'loss\.params\.clip' must be a finite number in \[0, 1\)"),
    ({"reduction": "avg"}, r"'loss\.params\.reduction' must be one of \['sum', 'mean', 'batchmean'\]"),
    ({"eps": float("nan")}, r"'loss\.params\.eps'"),
])
def test_loss_parameters_are_checked_by_their_dotted_key(params, needle):
    with pytest.raises(CprflError, match=needle):
        load_recipe("tiny", {"loss.params": params})
    with pytest.raises(CprflError, match=r"'loss\.params\.cb_beta' must be a finite number in \[0, 1\)"):
        load_recipe("tiny", {"loss.name": "cb_focal", "loss.params": {"cb_beta": 1.0}})
