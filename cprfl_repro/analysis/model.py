"""Tables of the model walk-through (notebook 03): shapes, the gradient paths, the paper model's size."""

from __future__ import annotations

import pandas as pd
import torch

from cprfl_lib.model import count_parameters
from cprfl_lib.model_analysis import PATHS, DualPath, Trace, text_tower

METHOD_MD_COUNTS = {"backbone": 42_500_160, "phi": 4_196_352, "vsi": 41_957_376, "pi": 3_148_800,
                    "text": 63_690_240}


def shapes_table(t: Trace) -> pd.DataFrame:
    """One row per step of the method with its symbolic and measured shape."""
    rows = [
        ("backbone", "f_loc", "(B, C_b, h, w)", t.feature_map, "feature map of the last conv stage"),
        ("flatten", "tokens", "(B, v, C_b)", t.tokens, "v = h·w visual tokens"),
        ("Eq. 1", "F = φ(f_loc)", "(B, v, d)", t.F, "linear projection to the model width d"),
        ("text encoder", "W", "(c, m)", t.W, "class-name embeddings of the text encoder"),
        ("Eq. 2", "P = PI(W)", "(c, d)", t.P, "prompts: GELU MLP, hidden τ·d"),
        ("Eq. 3", "Z = [F; P]", "(B, v + c, d)", t.Z, "visual tokens first, prompts last"),
        ("Eqs. 4-5", "VSI(Z)", "(B, v + c, d)", t.vsi_out, "pre-LN attention + FFN, no residual"),
        ("slice", "P' = VSI(Z)[:, v:]", "(B, c, d)", t.P_refined, "category-specific features"),
        ("Eq. 6", "logit_i = p'_i · p_i", "(B, c)", t.logits, "sigmoid in the loss / metrics"),
        ("attention", "α (prompt → visual)", "(B, c, h, w)", t.attention, "first VSI layer, mean over heads"),
    ]
    return pd.DataFrame([{"step": a, "tensor": b, "shape": c, "measured": str(tuple(x.shape)), "what": d}
                         for a, b, c, x, d in rows])


def paper_parameter_table(recipe: str = "paper-coco") -> pd.DataFrame:
    """Parameters of the paper's model per component, built from ``recipe`` without any weights.

    The backbone and head come from :mod:`cprfl_lib.factory` with the text embeddings W as a
    (c, m) buffer (the paper: text tower frozen, embeddings precomputed); the text tower is
    open_clip's (the official code trains it inside the model). Everything is built on the meta
    device: shapes only, so the count takes a second. Counts are measured from the modules.
    """
    from cprfl_lib import semantics
    from cprfl_lib.data import synthetic
    from cprfl_lib.train import factory
    from cprfl_lib.train.recipes import load_recipe

    config = load_recipe(recipe, {"model.backbone_weights": None, "semantics.weights": None,
                                  "semantics.trainable": False})
    dataset, encoder = config["data"]["dataset"], config["semantics"]["encoder"]
    names = synthetic.class_names(dataset if dataset.startswith("synth-") else f"synth-{dataset}")  # same names
    m = semantics.embedding_dim(encoder)
    with torch.device("meta"):
        backbone = factory.backbone_from(config)
        head = factory.head_from(config, backbone.out_channels, names, class_embeddings=torch.zeros(len(names), m))
    text = text_tower(encoder) if encoder.startswith("clip") else None
    parts = [("backbone", f"{config['model']['backbone']} convs (gives f_loc)", backbone),
             ("phi", "φ, visual projection (Eq. 1)", head.visual_proj),
             ("vsi", f"VSI, {config['model']['depth']} Transformer layer (Eqs. 4-5)", head.vsi),
             ("pi", "PI network (Eq. 2)", head.prompt_init),
             ("text", f"{encoder} text tower (open_clip)", text)]
    rows = []
    for key, label, module in parts:
        if module is None:
            continue
        n = count_parameters(module, trainable_only=False)
        rows.append({"component": label, "parameters": n,
                     "trainable in the paper (frozen text)": 0 if key == "text" else count_parameters(module),
                     "trainable as the official code runs": count_parameters(module),
                     "method.md §2": METHOD_MD_COUNTS[key] if recipe.startswith("paper-") else None})
    df = pd.DataFrame(rows)
    total = {"component": "total", **{c: int(df[c].sum()) for c in df.columns[1:4]}, "method.md §2": None}
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)


def parameter_metrics(table: pd.DataFrame) -> dict[str, int]:
    """The counts of :func:`paper_parameter_table` by component key, and the two trainable totals."""
    keys = ["backbone", "phi", "vsi", "pi", "text"][: len(table) - 1]
    out = {k: int(v) for k, v in zip(keys, table["parameters"])}
    total = table.iloc[-1]
    out["trainable_paper"] = int(total["trainable in the paper (frozen text)"])
    out["trainable_official_code"] = int(total["trainable as the official code runs"])
    return out


def dual_path_table(result: DualPath) -> pd.DataFrame:
    """Per gradient (both paths, each path alone, their sum): its norms and its cosine with the full gradient."""
    full = next(iter(PATHS))
    return pd.DataFrame([{"gradient": k, "‖dL/dP‖": float(result.grad_P[k].norm()),
                          "‖dL/dθ_PI‖": float(result.grad_PI[k].norm()),
                          "cos with full (dL/dP)": float(torch.nn.functional.cosine_similarity(
                              result.grad_P[k].flatten(), result.grad_P[full].flatten(), dim=0))}
                         for k in result.grad_P])
