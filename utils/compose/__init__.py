"""The composing layer: the one part of ``utils/`` that imports ``models/`` and ``datasets/``.

Everything else in ``utils/`` is a leaf (retrieval metrics, checkpoints, config helpers, seeds,
plots, the code index) that knows nothing of methods or datasets. This package turns a config
into built objects and runs them:

- :mod:`utils.compose.build`: one builder per config group (data, backbone, model, loss,
  transforms, optimiser, scheduler, trainer class); the only place that calls ``instantiate``.
- :mod:`utils.compose.experiment`: what main_v2.py and val.py do (train, resume, validate),
  as plain functions the tests call directly.
- :mod:`utils.compose.search`: a trained run rebuilt for scripts/export.py and scripts/search.py.

``python scripts/import_graph.py`` prints the imports between the top-level packages and checks
these rules (tests/test_layout.py runs it).
"""
