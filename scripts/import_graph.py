"""Print the imports between the project's parts and check that they point one way.

    python scripts/import_graph.py            # the graph (edges with counts) and the verdict
    python scripts/import_graph.py --dot      # Graphviz source of the same graph

Parts: the entry points (main_v2.py, val.py), scripts/, utils/compose/ (the composing layer),
the leaves of utils/, datasets/, models/ (with models/loss and models/layers apart, since they
have a rule of their own). Every ``import`` and ``from ... import`` counts, including the ones
inside functions (read with the standard library's ``ast``, nothing is imported). The rules
(exit status 1 and one line per breach when one is broken):

- the leaves of utils/ import no models/, datasets/ or utils/compose/;
- datasets/ and models/ import no utils/compose/ and no scripts/; datasets/ imports no models/;
- models/loss and models/layers raise shape errors (ValueError), never the config-worded
  errors of utils.errors: they do not import it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("utils", "datasets", "models", "scripts")


def part_of(module: str) -> str | None:
    """The part a dotted module name (``utils.compose.build``) or file module belongs to."""
    head = module.split(".")
    if head[0] in ("main_v2", "val"):
        return "entry points"
    if head[0] not in FIRST_PARTY:
        return None
    if head[0] == "utils":
        return "utils/compose" if len(head) > 1 and head[1] == "compose" else "utils (leaves)"
    if head[0] == "models" and len(head) > 1 and head[1] in ("loss", "layers"):
        return f"models/{head[1]}"
    return head[0]


def file_module(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[str]:
    """Every first-party module name ``path`` imports (``from utils import x`` -> utils.x)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return [n for n in names if n.split(".")[0] in FIRST_PARTY]


def project_files(root: Path = ROOT) -> list[Path]:
    files = [path for path in (root / "main_v2.py", root / "val.py") if path.exists()]
    for package in FIRST_PARTY:
        files += sorted((root / package).rglob("*.py"))
    return files


def graph(root: Path = ROOT) -> tuple[Counter, list[str]]:
    """(edge counts {(from part, to part): n}, breaches of the rules, one line each) of the
    project under ``root``."""
    edges: Counter = Counter()
    breaches = []
    for path in project_files(root):
        source = part_of(file_module(path, root))
        if source is None:  # not a project file
            continue
        for name in imports_of(path):
            target = part_of(name)
            if target is None or target == source:
                continue
            edges[source, target] += 1
            where = f"{path.relative_to(root)} imports {name}"
            if source == "utils (leaves)" and target in (
                "models",
                "models/loss",
                "models/layers",
                "datasets",
                "utils/compose",
            ):
                breaches.append(f"{where}: a leaf of utils/ must not import {target}")
            if (
                source != "utils (leaves)"
                and source.startswith(("datasets", "models"))
                and target in ("utils/compose", "scripts", "entry points")
            ):
                breaches.append(f"{where}: {source} must not import the composing layer or scripts")
            if source == "datasets" and target.startswith("models"):
                breaches.append(f"{where}: datasets/ must not import models/")
            if source in ("models/loss", "models/layers") and name.startswith("utils.errors"):
                breaches.append(f"{where}: losses and layers raise ValueError on bad shapes")
    return edges, breaches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dot", action="store_true", help="print Graphviz source instead")
    args = parser.parse_args()
    edges, breaches = graph()
    if args.dot:
        print("digraph imports {")
        for (a, b), n in sorted(edges.items()):
            print(f'  "{a}" -> "{b}" [label={n}];')
        print("}")
    else:
        width = max(len(a) for a, _ in edges)
        for (a, b), n in sorted(edges.items()):
            print(f"{a:<{width}} -> {b}  ({n})")
    for line in breaches:
        print("breach:", line, file=sys.stderr)
    print(f"{len(breaches)} breach(es) of the import rules", file=sys.stderr)
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
