"""Recipes: every shipped recipe loads, the paper and code recipes say what method.md §3 says the
paper and the official code do, and overrides are parsed, type-checked and rejected by name."""

from __future__ import annotations

import pytest
import yaml
from conftest import one_line_error

from cprfl_lib.errors import CprflError
from cprfl_lib.train.recipes import OPAQUE, _rules, apply_overrides, available_recipes, defaults, dump, load_recipe
from cprfl_lib.train.scoring import is_eval_epoch
from cprfl_repro.context import PROFILES

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
    params = load_recipe("cpu-voc", {"loss.params.gamma_neg": 2})["loss"]["params"]  # a dotted key keeps its siblings
    assert params["gamma_neg"] == 2 and params["clip"] == 0.05 and params["gamma_pos"] == 0
    again = apply_overrides(c, {"optim.epochs": 4})
    assert again is c and c["optim"]["epochs"] == 4
    assert load_recipe("tiny", {"optim.lr": 1})["optim"]["lr"] == 1  # an int where a float is expected


@pytest.mark.parametrize("old, new", [("paper-vocc", "paper-voc"), ("smoke", "tiny"), ("quick-voc", "cpu-voc"),
                                      ("quick-coco", "cpu-coco"), ("own-cpu", "cpu-own"), ("own-paper", "paper-own")])
def test_unknown_and_old_recipe_names_list_the_available_ones_and_no_recipe_is_named_like_a_profile(old, new):
    message = one_line_error(lambda: load_recipe(old), new, *available_recipes())
    assert message.startswith(f"unknown recipe '{old}'; available: ")
    assert not set(available_recipes()) & set(PROFILES)


def test_a_recipe_file_outside_the_package(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim: {lr: 0.25}\n")
    c = load_recipe(str(path))
    assert c["recipe"] == "mine" and c["optim"]["lr"] == 0.25
    one_line_error(lambda: load_recipe(str(tmp_path / "missing.yaml")), "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lrr: 1}\n")
    one_line_error(lambda: load_recipe(str(bad)), "optim.lrr")


def test_a_runs_config_yaml_loads_back_as_the_same_configuration(tmp_path):
    config = load_recipe("code-coco", ["optim.lr=2e-5", "train.seed=3"])
    path = tmp_path / "config.yaml"
    path.write_text(dump(config))  # what a run writes
    assert yaml.safe_load(path.read_text()) == config  # dump round-trips
    assert load_recipe(str(path)) == config  # keeps the recipe's name, not "config"


def test_the_paper_recipes_evaluate_after_the_last_epoch_and_the_code_recipes_from_epoch_11():
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


def test_synthetic_scene_is_a_mapping_replaced_whole_by_an_override():
    assert defaults()["data"]["synthetic_scene"] == {} and "synthetic_scene" in OPAQUE
    c = load_recipe("tiny", ["data.synthetic_scene={decoys: 0, clutter: [2, 4]}"])
    assert c["data"]["synthetic_scene"] == {"decoys": 0, "clutter": [2, 4]}
    again = apply_overrides(c, {"data.synthetic_scene": {"occluders": 0.1}})
    assert again["data"]["synthetic_scene"] == {"occluders": 0.1}  # replaced, not merged
    nested = load_recipe("tiny", {"data": {"synthetic_scene": {"extra_instances": 0.0}}})
    assert nested["data"]["synthetic_scene"] == {"extra_instances": 0.0}


def test_synthetic_scene_on_a_published_benchmark_is_refused():
    one_line_error(lambda: load_recipe("paper-voc", {"data.synthetic_scene": {"decoys": 0}}),
                   "synthetic_scene applies only to the generated datasets", "voc-lt")
    assert load_recipe("paper-voc", {"data.synthetic_scene": {}})["data"]["synthetic_scene"] == {}  # nothing changed


def test_centre_and_norm_values():
    sem = defaults()["semantics"]
    assert sem["centre"] is False and sem["norm"] is None
    for norm in (None, "sqrt_m", 1, 2.5):
        assert load_recipe("tiny", {"semantics.centre": True, "semantics.norm": norm})["semantics"]["norm"] == norm
    assert load_recipe("tiny", ["semantics.norm=sqrt_m"])["semantics"]["norm"] == "sqrt_m"
    c = load_recipe("tiny", {"semantics.centre": True, "semantics.normalize": True})  # centre with normalize: allowed
    assert c["semantics"]["centre"] is True and c["semantics"]["normalize"] is True


def test_every_configuration_key_has_a_rule():
    """validate checks every value, not only those whose default is not null (a null default admits any type)."""
    keys = {f"{s}.{k}" if k else s for s, v in defaults().items() for k in (v if isinstance(v, dict) else [None])}
    assert not keys - set(_rules()), sorted(keys - set(_rules()))


# --- bad values: one line naming the key (the values a run's validation refuses: test_faults.py) -------------------

@pytest.mark.parametrize("overrides, needle", [
    (["optim.lrr=1"], r"optim\.lrr"),  # unknown keys, by name
    (["optimizer.lr=1"], "optimizer"),
    (["model.dimm=3"], r"model\.dimm"),
    ({"train": {"emma": 0.9}}, r"train\.emma"),
    (["optim.lr"], r"optim\.lr"),  # no equals sign
    (["optim.epochs=abc"], r"optim\.epochs"),  # values of the wrong type
    (["optim.epochs=2.5"], r"optim\.epochs"),
    (["optim.lr=abc"], r"optim\.lr"),
    (["train.deterministic=3"], r"train\.deterministic"),
    (["model=3"], "model"),
    *[({"data.eval_splits": v}, r"data\.eval_splits") for v in ([], ["train"], ["val", "val"], "val", ["val", "dev"],
                                                                  {"val": 1})],
    ({"data.synthetic_scene": {"decoy": 0}}, r"unknown field\(s\) \['decoy'\]"),
    ({"data.synthetic_scene": 3}, r"data\.synthetic_scene"),
    ({"data.synthetic_scene": [1, 2]}, r"data\.synthetic_scene"),
    *[({"semantics.norm": v}, r"semantics\.norm") for v in (0, -1.0, "sqrt", True, float("inf"))],
    ({"semantics.centre": 1}, r"semantics\.centre"),
    ({"semantics.centre": "yes"}, r"semantics\.centre"),
    ({"semantics.centre": True, "semantics.trainable": True, "semantics.encoder": "clip-tiny"}, "trainable"),
    ({"semantics.norm": "sqrt_m", "semantics.trainable": True, "semantics.encoder": "clip-tiny"}, "trainable"),
    ({"semantics.norm": 1.0, "semantics.normalize": True}, r"normalize=true and semantics\.norm=1\.0"),
    ({"loss.params": {"clip": 1}}, r"'loss\.params\.clip' must be a finite number in \[0, 1\)"),
    ({"loss.params": {"eps": float("nan")}}, r"'loss\.params\.eps'"),
    ({"loss.name": "cb_focal", "loss.params": {"cb_beta": 1.0}}, r"'loss\.params\.cb_beta' must be a finite number in "
                                                                 r"\[0, 1\)"),
])
def test_a_bad_override_is_refused_in_one_line_naming_it(overrides, needle):
    with pytest.raises(CprflError, match=needle) as info:
        load_recipe("tiny", overrides)
    assert "\n" not in str(info.value)
