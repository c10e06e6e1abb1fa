"""Config helpers: safe resolvers, loading and saving run configs.

No resolver evaluates Python. ``calc`` parses a small arithmetic language (numbers, + - * / // %
**, parentheses, int/float/round/min/max) with :mod:`ast` and rejects everything else, so a
config or a command line cannot run code. Use it quoted: ``${calc:'int(0.8 * ${epochs})'}``.
"""

from __future__ import annotations

import ast
import operator
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from utils.errors import CheckpointError, ConfigError

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"int": int, "float": float, "round": round, "min": min, "max": max}


def safe_calc(expression: str) -> int | float:
    """Evaluate an arithmetic expression such as ``"int(0.8 * 100)"`` without ``eval``.

    Raises ConfigError for anything that is not plain arithmetic on numbers.
    """

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool)
        ):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ConfigError(f"calc: exponent {right} too large in {expression!r}")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            return _FUNCTIONS[node.func.id](*[walk(a) for a in node.args])
        raise ConfigError(f"calc: only arithmetic on numbers is allowed, got {expression!r}")

    try:
        tree = ast.parse(str(expression), mode="eval")
    except SyntaxError as error:
        raise ConfigError(f"calc: cannot parse {expression!r}: {error.msg}") from None
    return walk(tree)


def _first_set(*values: Any) -> Any:
    """Return the first argument that is not None (used for ``resume`` -> run dir)."""
    for value in values:
        if value is not None and value != "":
            return value
    return None


def _hydra_subdir(resume: Any) -> str:
    """Hydra's output subfolder: ``.hydra`` for a new run; a resumed run writes its own
    ``.hydra/resumed_<time>`` so that the original run's overrides.yaml is never replaced."""
    if resume in (None, ""):
        return ".hydra"
    from datetime import datetime

    return f".hydra/resumed_{datetime.now():%y%m%d_%H%M%S_%f}"


#: The launch time shared by the processes of one torchrun launch (set by utils.distributed),
#: so that all of them compose the same run folder.
RUN_TIME_ENV = "HASHING_RUN_TIME"


def _run_time(pattern: str) -> str:
    """The run's start time formatted with ``pattern`` (as Hydra's ``now``): the shared launch
    time under torchrun, else the current time (cached per pattern, like ``now``)."""
    from datetime import datetime

    shared = os.environ.get(RUN_TIME_ENV)
    return (datetime.fromisoformat(shared) if shared else datetime.now()).strftime(pattern)


def register_resolvers() -> None:
    """Register the project's resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("run_time"):
        OmegaConf.register_new_resolver("run_time", _run_time, use_cache=True)
    if not OmegaConf.has_resolver("hydra_subdir"):
        OmegaConf.register_new_resolver("hydra_subdir", _hydra_subdir)
    if not OmegaConf.has_resolver("calc"):
        OmegaConf.register_new_resolver("calc", safe_calc)
    if not OmegaConf.has_resolver("first_set"):
        OmegaConf.register_new_resolver("first_set", _first_set)


register_resolvers()


def to_plain(cfg: DictConfig) -> DictConfig:
    """Resolve every interpolation (Hydra's included) and return a detached plain config; a
    required value left unset (``???``) is one ConfigError naming the key to set."""
    import re

    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    try:
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except (MissingMandatoryValue, InterpolationToMissingValueError) as error:
        match = re.search(r"Missing mandatory value: ([\w.]+)", str(error))
        interpolated = isinstance(error, InterpolationToMissingValueError) and match
        key = match.group(1) if interpolated else error.full_key  # the key that is ??? itself
        raise ConfigError(
            f"{key} has no value (??? in its config file): set it on the command "
            f"line, e.g. {key}=<value> (the config's comments say what it "
            "needs)"
        ) from None


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write a resolved config as YAML atomically (utils.checkpoint.atomic_write)."""
    from utils.checkpoint import write_text

    write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def load_run_config(logdir: str | os.PathLike) -> DictConfig:
    """Load ``<logdir>/config.yaml`` of a training run, or say clearly that there is no run."""
    path = Path(logdir) / "config.yaml"
    if not Path(logdir).is_dir():
        raise CheckpointError(
            f"{logdir} is not a directory: pass logdir=<run directory> "
            "(a folder written by main_v2.py holding config.yaml)"
        )
    if not path.is_file():
        raise CheckpointError(
            f"No run in {logdir}: config.yaml is missing; pass the run "
            "directory printed at the end of main_v2.py"
        )
    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # yaml errors come in many types
        raise CheckpointError(
            f"{path} is not a readable config ({error.__class__.__name__}); "
            "the run directory is damaged"
        ) from None
    if not isinstance(cfg, DictConfig) or "model" not in cfg:
        raise CheckpointError(f"{path} is not a training config of this project")
    return cfg


def progress_bars(setting: Any) -> bool:
    """Whether to draw tqdm bars for ``progress`` = auto | true | false.

    auto (default): only when stderr is a terminal; in a log file or a cluster job a bar would
    write thousands of carriage-return updates, so the engine logs one line per epoch instead.
    """
    import sys

    if isinstance(setting, str) and setting.lower() == "auto":
        return sys.stderr.isatty()
    if isinstance(setting, str):
        return setting.lower() in ("true", "on", "1", "yes")
    return bool(setting)
