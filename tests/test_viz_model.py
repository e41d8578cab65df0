"""Notebooks 03 and 06: the traced forward pass, the two gradient paths, the parameter count; the figures of trained runs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from cprfl_lib import model_analysis as vm
from cprfl_lib import semantics
from cprfl_lib.errors import CprflError  # noqa: E402
from cprfl_lib.losses import build_loss  # noqa: E402
from cprfl_lib.model import count_parameters  # noqa: E402
from cprfl_lib.train import factory, recipes
from cprfl_repro import studies
from cprfl_repro.analysis import model as mt
from cprfl_repro.analysis import predictions as vp  # noqa: E402
from cprfl_repro.plots import model as pm
from cprfl_repro.plots import predictions as pp

NAMES = ["cat", "dog", "bus", "car", "sofa"]
GROUPS = np.array(["head", "head", "medium", "tail", "tail"])


pytestmark = pytest.mark.usefixtures("private_cache", "close_figures")


@pytest.fixture
def model():
    """The tiny recipe's model (tiny trunk, d = 32, randn W with m = 16), in train mode as built."""
    torch.manual_seed(0)
    return factory.model_from(recipes.load_recipe("tiny"), NAMES)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    targets = torch.zeros(3, len(NAMES))
    targets[0, [0, 3]] = targets[1, 1] = targets[2, [2, 4]] = 1
    return torch.randn(3, 3, 32, 40, generator=g), targets


def test_trace_shapes_follow_the_equations(model, batch) -> None:
    images, _ = batch
    t = vm.trace(model, images)
    b, c, (h, w) = 3, len(NAMES), (4, 5)  # tiny trunk: stride 8
    v, cb, d, m = h * w, 64, 32, 16
    assert vm.shape_metrics(t) == {"feature_map": [b, cb, h, w], "tokens": [b, v, cb], "F": [b, v, d], "W": [c, m],
                                   "P": [c, d], "Z": [b, v + c, d], "P_refined": [b, c, d], "logits": [b, c],
                                   "attention": [b, c, h, w]}
    assert t.grid == (h, w)
    # the traced tensors are those of the real forward pass
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(t.logits, model(images))
        torch.testing.assert_close(t.P, model.head.prompts())
    assert t.eq6_max_abs_diff < 1e-5
    torch.testing.assert_close(t.Z[:, v:], t.P.expand(b, -1, -1))  # prompts last in Z
    torch.testing.assert_close(t.Z[:, :v], t.F)
    # attention of each prompt over the visual tokens: a part of a softmax over v + c tokens
    assert (t.attention >= 0).all() and (t.attention.sum((2, 3)) <= 1 + 1e-5).all()
    table = mt.shapes_table(t)
    assert list(table["measured"]) == [str(s) for s in [(b, cb, h, w), (b, v, cb), (b, v, d), (c, m), (c, d),
                                                       (b, v + c, d), (b, v + c, d), (b, c, d), (b, c), (b, c, h, w)]]


def test_trace_restores_train_mode_and_rejects_the_linear_baseline(model, batch) -> None:
    model.train()
    vm.trace(model, batch[0])
    assert model.training and model.head.vsi[0].attn.to_out[1].training
    linear = factory.model_from(recipes.load_recipe("tiny", {"model.head": "linear"}), NAMES)
    with pytest.raises(CprflError, match="LinearHead"):
        vm.trace(linear, batch[0])
    with pytest.raises(CprflError, match=r"\(B, 3, H, W\)"):
        vm.trace(model, batch[0][0])


def test_full_gradient_is_the_sum_of_the_two_paths(model, batch) -> None:
    images, targets = batch
    model.train()  # dropout 0.1 would make the three runs differ: the function must switch it off
    loss = build_loss("asl", reduction="mean")
    r = vm.dual_path_gradients(model, images, targets, loss)
    full, p1, p2 = vm.PATHS
    assert r.max_abs_diff_P < 1e-6 * max(1.0, float(r.grad_P[full].abs().max()))
    assert r.max_abs_diff_PI < 1e-5
    # both paths carry gradient, and neither alone is the full one
    for key in (p1, p2):
        assert r.grad_P[key].norm() > 0
        assert (r.grad_P[key] - r.grad_P[full]).abs().max() > 1e3 * max(r.max_abs_diff_P, 1e-12)
    table = mt.dual_path_table(r)
    assert list(table["gradient"]) == [full, p1, p2, "P1 + P2"]
    assert table["‖dL/dP‖"].iloc[0] == pytest.approx(table["‖dL/dP‖"].iloc[3], rel=1e-6)
    # the switches and the mode are back as they were
    head = model.head
    assert (head.cut_p1, head.cut_p2, head.no_feature_grad) == (False, False, False) and model.training
    assert isinstance(pm.plot_dual_path(r, NAMES, GROUPS), Figure)


def test_dual_path_gradient_matches_a_hand_computation(model, batch) -> None:
    """P1 alone: dL/dP = Σ_b dL/dlogit_b ⊙ P'_b (Eq. 6 with P' held fixed)."""
    images, targets = batch
    loss = torch.nn.BCEWithLogitsLoss()
    r = vm.dual_path_gradients(model, images, targets, loss)
    t = vm.trace(model, images)
    logits = t.logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(logits, targets), logits)
    expected = (g[:, :, None] * t.P_refined).sum(0).double()
    torch.testing.assert_close(r.grad_P["P1 only (cut P2)"], expected, rtol=1e-4, atol=1e-7)


def test_prompt_similarity_and_plots(model, batch) -> None:
    t = vm.trace(model, batch[0])
    sim = vm.prompt_similarity(t)
    assert sim["cos_W"].shape == sim["cos_P_centred"].shape == (len(NAMES),) * 2
    np.testing.assert_allclose(np.diag(sim["cos_P"]), 1.0)
    assert -1 <= sim["pearson_r"] <= 1
    # a shared offset (the PI output bias) makes raw cosines near 1; centring removes it
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shifted = vm.prompt_similarity(vm.Trace(*[torch.zeros(1)] * 3, w, w + 100.0, *[torch.zeros(1)] * 5))
    assert shifted["mean_cos_P"] > 0.99 and shifted["pearson_r"] == pytest.approx(1.0)
    np.testing.assert_allclose(shifted["cos_P_centred"], shifted["cos_W_centred"], atol=1e-9)
    assert isinstance(pm.plot_prompt_init(t, NAMES, GROUPS, title="x"), Figure)
    image = Image.new("RGB", (40, 32), (10, 200, 10))
    assert isinstance(pm.plot_attention(image, t.attention[0], NAMES, [0, 3], GROUPS, scores=np.ones(5)), Figure)


def test_take_batch(model) -> None:
    data = [(torch.full((3, 4, 4), float(i)), torch.tensor([i % 2, 1.0])) for i in range(6)]
    images, targets, idx = vm.take_batch(data, 2, start=3)
    assert images.shape == (2, 3, 4, 4) and idx == [3, 4] and images[1, 0, 0, 0] == 4
    with pytest.raises(CprflError, match="batch_size must be between 1 and 6"):
        vm.take_batch(data, 7)


def test_paper_parameter_counts_as_in_method_md() -> None:
    table = mt.paper_parameter_table("paper-coco")
    counts = mt.parameter_metrics(table)
    assert counts == {"backbone": 42_500_160, "phi": 4_196_352, "vsi": 41_957_376, "pi": 3_148_800,
                      "text": 63_690_240, "trainable_paper": 91_802_688, "trainable_official_code": 155_492_928}
    assert table["method.md §2"].iloc[:5].tolist() == table["parameters"].iloc[:5].tolist()


def test_meta_text_tower_counts_what_the_model_trains() -> None:
    """The meta-device count equals the trainable CLIPTextEncoder that semantics builds."""
    built = semantics.build_text_encoder("clip-tiny", NAMES, frozen=False, weights=None)
    assert count_parameters(vm.text_tower("clip-tiny")) == count_parameters(built) > 0


def _prompts_built_by_hand(config: dict, names: list[str]) -> torch.Tensor:
    """What engine.train does before training: seed, then build the model with factory.model_from."""
    from cprfl_lib.train.engine import seed_everything

    seed_everything(config["train"]["seed"], config["train"]["deterministic"])
    model = factory.model_from(config, names)
    with torch.no_grad():
        return model.head.prompts().detach().cpu()


def test_initial_prompts_are_those_of_the_seeded_model() -> None:
    config = recipes.load_recipe("tiny", {"train.seed": 3})
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        got = vm.initial_prompts(config, NAMES)
        again = vm.initial_prompts(config, NAMES)
        want = _prompts_built_by_hand(config, NAMES)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert got.shape == (len(NAMES), config["model"]["dim"]) and not got.requires_grad
    assert torch.equal(got, again) and torch.equal(got, want)
    other = vm.initial_prompts(recipes.load_recipe("tiny", {"train.seed": 4}), NAMES)
    assert not torch.allclose(other, got)  # the PI network's initialisation follows the run's seed
    scaled = vm.initial_prompts(recipes.load_recipe("tiny", {"train.seed": 3, "semantics.centre": True}), NAMES)
    assert not torch.allclose(scaled, got)  # and the prompts follow the embeddings W
    assert -1 <= semantics.mean_cosine(got) <= 1
    with pytest.raises(CprflError, match="model.head='linear' has no prompts"):
        vm.initial_prompts(recipes.load_recipe("tiny", {"model.head": "linear"}), NAMES)


def test_initial_prompts_leave_the_callers_torch_rng_alone() -> None:
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    vm.initial_prompts(recipes.load_recipe("tiny"), NAMES)
    assert torch.equal(torch.rand(4), expected)


def test_initial_prompts_leave_the_callers_numpy_rng_alone() -> None:
    """seed_everything also seeds numpy's global generator, which torch.random.fork_rng does not restore."""
    np.random.seed(11)
    expected = np.random.rand(4)
    np.random.seed(11)
    vm.initial_prompts(recipes.load_recipe("tiny"), NAMES)
    np.testing.assert_array_equal(np.random.rand(4), expected)


def test_initial_prompts_equal_the_prompts_a_training_run_starts_from(tmp_path, monkeypatch) -> None:
    from cprfl_lib.data.benchmarks import benchmark_class_names
    from cprfl_lib.train import engine

    config = recipes.load_recipe("tiny", {"data.synthetic_limit": 16, "optim.epochs": 1, "train.max_steps_per_epoch": 1,
                                           "train.device": "cpu", "train.seed": 2, "train.save_weights": False})
    built = []
    real = factory.model_from

    def keep(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            built.append(model.head.prompts().detach().clone())
        return model

    monkeypatch.setattr(factory, "model_from", keep)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        engine.train(config, tmp_path / "run", progress=False)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    monkeypatch.setattr(factory, "model_from", real)
    names = benchmark_class_names("synth-voc-lt")
    assert len(built) == 1 and torch.equal(vm.initial_prompts(config, names), built[0])


# ---------------------------------------------------------------- notebook 06 (viz_predictions)


@pytest.fixture
def labelled():
    """6 test images over 5 classes; classes 3 and 4 are tail."""
    targets = np.array([[1, 0, 0, 0, 0],   # 0: one label
                        [1, 1, 0, 0, 0],   # 1: two labels, no tail
                        [1, 0, 0, 1, 0],   # 2: tail 3
                        [0, 1, 0, 1, 0],   # 3: tail 3 again
                        [0, 0, 1, 0, 1],   # 4: tail 4
                        [0, 0, 0, 0, 1]], dtype=np.uint8)
    return targets, GROUPS


def test_choose_images(labelled) -> None:
    targets, groups = labelled
    assert vp.choose_images(targets, groups, 2) == [2, 4]  # each adds a new tail class
    assert vp.choose_images(targets, groups, 4) == [2, 4, 3, 1]  # then tail, then >= 2 labels
    assert vp.choose_images(targets, groups, 6) == [2, 4, 3, 1, 0, 5]
    assert vp.choose_images(targets, groups, 2, image_ids=[5, 0]) == [5, 0]
    with pytest.raises(CprflError, match=r"test indices in 0\.\.5, got \[1, 6\]"):
        vp.choose_images(targets, groups, 2, image_ids=[1, 6])
    with pytest.raises(CprflError, match="n_images must be at least 1"):
        vp.choose_images(targets, groups, 0)


def test_top_k_colours(labelled) -> None:
    targets, groups = labelled
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2])
    assert vp.top_k(scores, targets[2], groups, NAMES) == [("cat", 0.9, "head"), ("bus", 0.8, "incorrect"),
                                                           ("car", 0.7, "tail")]


def _fake_run(folder, logits, targets, metrics):
    folder.mkdir(parents=True)
    np.savez(folder / "predictions.npz", model=logits, targets=targets, class_names=np.array(NAMES),
             train_counts=np.array([200, 150, 50, 5, 2]))
    (folder / "metrics.json").write_text(json.dumps({"last_epoch": {"model": metrics}}))


def test_predictions_seeds_and_group_table(tmp_path, labelled) -> None:
    targets, _ = labelled
    rng = np.random.default_rng(0)
    m0 = {"mAP": 50.0, "head": 60.0, "medium": 40.0, "tail": 30.0}
    m1 = {"mAP": 54.0, "head": 62.0, "medium": 44.0, "tail": 38.0}
    variant = {"model.head": "linear", "loss.name": "bce"}
    configs = {seed: studies.run_config("tiny", variant, seed) for seed in range(4)}
    folders = {seed: studies.run_dir_for(c, tmp_path) for seed, c in configs.items()}
    folders[2] = studies.run_dir_for(studies.run_config("tiny", {**variant, "optim.lr": 0.5}, 2), tmp_path)
    for seed, m in ((0, m0), (1, m1), (2, m1), (3, m1)):
        _fake_run(folders[seed], rng.normal(size=targets.shape).astype(np.float32), targets, m)
    for seed in (0, 1, 2):  # seed 2: another configuration; seed 3: no stamp at all
        (folders[seed] / "run.json").write_text(json.dumps(studies.stamp(configs[seed])))
    study = studies.Study("tiny", {"ERM": variant})
    assert studies.finished_seeds(tmp_path, study, "ERM") == [folders[0], folders[1]]
    runs = pd.DataFrame([{"variant": "ERM", "status": "ok", "run_dir": str(folders[3])}])
    found = studies.seeds_of(runs, tmp_path, study)
    assert found == {"ERM": [folders[0], folders[1], folders[3]]}

    table = vp.group_map_table({"ERM": found["ERM"][:2]}, {"ERM": ("ERM", {"mAP": 70.0, "head": 69.0, "medium": 80.0,
                                                                           "tail": 65.0})}, "synth", "VOC-LT")
    assert table["source"].tolist() == ["ours, synth", "paper (ERM), VOC-LT"]
    assert table.loc[0, "tail"] == pytest.approx(34.0) and table.loc[0, "tail std"] == pytest.approx(np.sqrt(32))
    assert vp.group_map_metrics(table)["ERM"] == {"ours": {"mAP": 52.0, "head": 61.0, "medium": 42.0, "tail": 34.0,
                                                           "seeds": 2},
                                                  "paper": {"mAP": 70.0, "head": 69.0, "medium": 80.0, "tail": 65.0}}
    assert isinstance(pp.group_map_vs_paper(table, title="x"), Figure)

    run = vp.load_predictions(folders[0], "ERM")
    assert run.probabilities.shape == targets.shape and ((run.probabilities > 0) & (run.probabilities < 1)).all()
    assert list(run.groups) == ["head", "head", "medium", "tail", "tail"]
    bench = SimpleNamespace(name="b", class_names=NAMES, test=SimpleNamespace(targets=targets[::-1]))
    with pytest.raises(CprflError, match="other classes or test images than b"):
        vp.load_predictions(folders[0], "ERM", bench)
    with pytest.raises(CprflError, match="run the study first"):
        vp.load_predictions(tmp_path, "ERM")
    with pytest.raises(CprflError, match="runs not available"):
        vp.study_runs(pd.DataFrame([{"variant": "X", "status": "not available: no weights", "run_dir": None}]))
    fig = pp.per_class_ap_vs_count([run, vp.load_predictions(folders[1], "CPRFL")], title="t")
    assert isinstance(fig, Figure)


def test_figure4_and_attention_figures(labelled) -> None:
    targets, groups = labelled
    images = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(2)]
    scores = np.random.default_rng(0).random((2, 5))
    fig = pp.figure4_predictions(images, [2, 4], targets[[2, 4]], NAMES, groups,
                                 {"ERM": scores, "zero-shot CLIP": "no weights here", "CPRFL": scores})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("zero-shot CLIP: not available (no weights here)" in t.replace("\n", " ") for t in texts)
    assert sum(t.startswith("1. ") for t in texts) == 4  # two methods x two images
    attn = torch.rand(2, 5, 4, 4)
    assert isinstance(pp.attention_maps(images, [2, 4], attn, targets[[2, 4]], scores, NAMES, groups), Figure)


def test_zero_shot_column(monkeypatch, tmp_path) -> None:
    images = [Image.new("RGB", (40, 30), (0, 90, 0))]
    missing = vp.zero_shot_column(NAMES, images, tmp_path / "none.bin")
    assert not missing.available and missing.scores is None and "not found" in missing.column
    tiny = vp.zero_shot_column(NAMES, images, None, encoder="clip-tiny")
    assert tiny.available and tiny.column.shape == (1, 5)
    np.testing.assert_allclose(tiny.scores.sum(1), 1.0, rtol=1e-5)
