"""The import rules of scripts/import_graph.py hold for the project, and the checker catches a
breach of each rule in a small made-up tree."""

from __future__ import annotations

import pytest

from scripts.import_graph import graph


def test_the_project_keeps_its_imports_pointing_one_way():
    _, breaches = graph()
    assert breaches == []


@pytest.mark.parametrize(
    "path, source, rule",
    [
        ("utils/metrics.py", "from models.arch.base import HashModel\n", "leaf of utils/"),
        ("utils/plots2.py", "def f():\n    from utils.compose import build\n", "leaf of utils/"),
        ("datasets/x.py", "import models.backbone.simple\n", "datasets/ must not import models/"),
        ("models/arch/x.py", "from utils.compose.build import build_data\n", "composing layer"),
        ("models/loss/x.py", "from utils.errors import ConfigError\n", "ValueError"),
        ("models/layers/x.py", "from utils import errors\n", "ValueError"),
    ],
)
def test_each_rule_is_checked(tmp_path, path, source, rule):
    target = tmp_path / path
    target.parent.mkdir(parents=True)
    target.write_text(source)
    (tmp_path / "utils").mkdir(exist_ok=True)
    (tmp_path / "utils" / "compose").mkdir(exist_ok=True)
    (tmp_path / "utils" / "compose" / "build.py").write_text("from models.arch import base\n")
    edges, breaches = graph(tmp_path)
    assert len(breaches) == 1 and rule in breaches[0], breaches
    assert edges["utils/compose", "models"] == 1  # the composing layer may import models
