"""cprfl_repro/analysis/semantics.py, for notebook 02: the encoders side by side, the neighbour analysis, its plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from matplotlib.figure import Figure

from cprfl_repro.analysis import semantics
from cprfl_repro.plots import semantics as ps

pytestmark = pytest.mark.usefixtures("private_cache", "close_figures")


# Four classes: two "head" (a, b), two "tail" (t1, t2); t1 points at b, t2 at a.
EMB = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.1, 0.9, 0.1], [0.8, 0.0, 0.6]])
GROUPS = np.array(["head", "head", "tail", "tail"])


def _info(supers=("x", "y", "y", "y")) -> semantics.ClassInfo:
    return semantics.ClassInfo(dataset="toy", names=["a", "b", "t1", "t2"], train_counts=np.array([200, 150, 5, 3]),
                        groups=GROUPS, super_categories=list(supers) if supers else None)


def _result(emb: np.ndarray = EMB, name: str = "toy") -> semantics.EncoderResult:
    return semantics.EncoderResult(encoder=name, available=True, reason="given", dim=emb.shape[1], embeddings=emb)


def test_cosine_matrix_known_values() -> None:
    sim = semantics.cosine_matrix(np.array([[3.0, 0.0], [1.0, 1.0], [0.0, -2.0]]))
    np.testing.assert_allclose(sim, [[1, 2 ** -0.5, 0], [2 ** -0.5, 1, -(2 ** -0.5)], [0, -(2 ** -0.5), 1]],
                               atol=1e-12)


def test_nearest_heads_orders_head_classes_by_cosine_and_needs_one() -> None:
    near = semantics.nearest_heads(semantics.cosine_matrix(EMB), GROUPS, k=2)
    assert list(near) == [2, 3]
    assert [h for h, _ in near[2]] == [1, 0] and [h for h, _ in near[3]] == [0, 1]
    assert near[3][0][1] == pytest.approx(0.8)
    assert len(semantics.nearest_heads(semantics.cosine_matrix(EMB), GROUPS, k=10)[2]) == 2  # only two head classes
    one_line_error(lambda: semantics.nearest_heads(semantics.cosine_matrix(EMB), np.array(["tail"] * 4), k=1),
                   "no head class")


def test_summary_agreement_and_chance() -> None:
    row = semantics.neighbour_summary({"toy": _result()}, _info(supers=("x", "y", "y", "z"))).iloc[0]
    # t1 -> b (both "y": agree); t2 ("z") has no head class of its super-category: not counted
    assert row["tail→head agreement"] == pytest.approx(1.0)
    assert row["tail→head chance"] == pytest.approx(0.5)  # one of the two head classes is a "y"
    # every class's nearest other class: only b and t1 have a partner of their super-category; they agree
    assert row["neighbour agreement"] == pytest.approx(1.0) and row["neighbour chance"] == pytest.approx(1 / 3)
    row = semantics.neighbour_summary({"toy": _result()}, _info(supers=("y", "x", "x", "x"))).iloc[0]
    assert row["tail→head agreement"] == pytest.approx(0.5)  # t1 -> b agrees, t2 -> a does not
    assert row["mean tail→nearest-head cos"] == pytest.approx((0.9 / np.linalg.norm(EMB[2]) + 0.8) / 2)
    onehot = semantics.neighbour_summary({"1hot": _result(np.eye(4))}, _info(supers=("x", "y", "y", "z"))).iloc[0]
    assert onehot["tail→head agreement"] == pytest.approx(onehot["tail→head chance"])  # all tied: chance
    assert onehot["neighbour agreement"] == pytest.approx(onehot["neighbour chance"])
    none = semantics.neighbour_summary({"toy": _result()}, _info(supers=None)).iloc[0]
    assert np.isnan(none["tail→head agreement"])


def test_tail_neighbours_table_is_wide_per_encoder_and_tail_class() -> None:
    table = semantics.tail_neighbours_table({"toy": _result()}, _info(), k=2)
    assert table["tail class"].tolist() == ["t1", "t2"]
    assert table["head 1"].tolist() == ["b", "a"] and table["head 2"].tolist() == ["a", "b"]
    assert table["same super-category"].tolist() == [True, False]
    table = semantics.tail_neighbours_table({"toy": _result()}, _info(supers=("x", "y", "y", "z")), k=1)
    assert table["same super-category"].tolist() == [True, None]  # no "z" head class to agree with
    both = semantics.tail_neighbours_table({"toy": _result(), "flip": _result(EMB[[1, 0, 2, 3]], "flip")}, _info(), k=1)
    overview = semantics.nearest_head_overview(both)
    assert overview.columns.tolist() == ["toy", "flip"] and overview.index.tolist() == ["t1", "t2"]
    assert overview.loc["t1", "toy"] == "b (0.99)" and overview.loc["t1", "flip"] == "a (0.99)"


def test_encode_all_lists_unavailable_encoders_with_reasons_and_refuses_unknown_ones(offline, tmp_path: Path) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("cat 1 0 0\ndog 0.9 0.1 0\n")  # no vector for "car"
    results = semantics.encode_all(["randn", "onehot", "glove", "word2vec", "clip-rn50"], ["cat", "dog", "car"],
                            clip_weights="openai", encoder_options={"glove": {"path": glove}, "randn": {"dim": 8}})
    assert [r.encoder for r in results.values()] == ["randn", "onehot", "glove", "word2vec", "clip-rn50"]
    assert results["randn"].available and results["randn"].embeddings.shape == (3, 8)
    assert results["onehot"].dim == 3 and results["onehot"].available
    assert not results["glove"].available and "'car'" in results["glove"].reason
    assert not results["word2vec"].available and "CPRFL_WORD2VEC" in results["word2vec"].reason
    assert not results["clip-rn50"].available and "offline" in results["clip-rn50"].reason
    assert results["clip-rn50"].dim == 1024  # known from the config even without weights
    full = semantics.encode_all(["glove"], ["cat", "dog"], encoder_options={"glove": {"path": glove}})["glove"]
    assert full.available and full.embeddings.shape == (2, 3) and full.dim == 3
    table = semantics.availability_table(results)
    assert table.columns.tolist() == ["encoder", "available", "dimension", "reason"]
    assert table["available"].tolist() == [True, True, False, False, False]
    one_line_error(lambda: semantics.encode_all(["bert"], ["cat"]), "'bert'")
    one_line_error(lambda: semantics.encode_all(["glove"], ["cat"], encoder_options={"glvoe": {"path": "x"}}), "'glvoe'")


def test_class_info_of_generated_and_real_datasets(shared_data: Path) -> None:
    info = semantics.class_info("synth-voc-lt")
    assert len(info.names) == 20 and info.super_categories[info.names.index("cow")] == "animal"
    assert (info.groups == "tail").sum() == 8
    real = semantics.class_info("voc-lt", list_dir=shared_data / "voc_lt")
    assert real.names == info.names and real.train_counts.tolist() == info.train_counts.tolist()
    assert real.super_categories == info.super_categories
    one_line_error(lambda: semantics.class_info("imagenet"), "'imagenet'")


def test_semantics_plots_and_metrics() -> None:
    results = {"toy": _result(), "other": _result(EMB[:, ::-1].copy(), "other"),
               "off": semantics.EncoderResult("off", False, "no file", None, None)}
    info = _info()
    assert isinstance(ps.plot_similarity(results["toy"], info), Figure)
    fig = ps.plot_projection(results, info)
    assert isinstance(fig, Figure) and len([a for a in fig.axes if a.has_data()]) == 2  # available ones only
    metrics = semantics.semantics_metrics(results, semantics.neighbour_summary(results, info))
    assert set(metrics["encoders"]) == {"toy", "other"} and metrics["unavailable"] == {"off": "no file"}
    assert metrics["encoders"]["toy"]["dim"] == 3
    assert set(metrics["encoders"]["toy"]) == {"dim", "mean_cos", "tail_nearest_head_cos", "tail_head_agreement",
                                               "tail_head_chance", "neighbour_agreement", "neighbour_chance"}
