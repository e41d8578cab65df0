"""The benchmark names, in a module that imports nothing: ``cprfl --help`` offers them without numpy or torch.

``voc-lt`` and ``coco-lt`` are the published split lists (:mod:`cprfl_lib.data.lists` pins their files),
``synth-voc-lt`` and ``synth-coco-lt`` the generated look-alikes (:mod:`cprfl_lib.data.synthetic`), ``own`` a
user's dataset (:mod:`cprfl_lib.data.own`; ``own:<folder>`` once loaded).
"""

PUBLISHED_BENCHMARKS = ("voc-lt", "coco-lt")
SYNTHETIC = ("synth-voc-lt", "synth-coco-lt")
OWN = "own"
BENCHMARKS = (*PUBLISHED_BENCHMARKS, *SYNTHETIC, OWN)
