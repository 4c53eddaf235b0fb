"""The import contract between our packages, read from the source (every import, also inside functions).

bot → training.lifecycle (+ MLX-free training top-level modules) → inference, data → common
training.lifecycle: no training.trainer / training.evaluation, no MLX, not even through the
                    training top-level modules it imports (the bot imports it)
training.trainer:   no training.lifecycle / training.evaluation
training top level (errors, runs, files, settings, cli): none of the three parts, no MLX
inference, data:    nothing of ours but `common`; `common` nothing of ours at all
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("bot", "training", "inference", "data", "common")
MLX = ("mlx", "mlx_lm")
PARTS = ("training.trainer", "training.evaluation", "training.lifecycle")

# (importing module, imported module) pairs allowed against the rules, and why.
EXCEPTIONS = {
    # `python -m bot doctor` checks that training fits in memory: its own process, which loads the
    # model anyway, never the serving bot.
    ("bot.doctor", "training.trainer"),
    ("bot.doctor", "training.trainer.memory"),
    ("bot.doctor", "training.trainer.lora"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []:
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in ([prefixes] if isinstance(prefixes, str) else prefixes))


@cache
def imports(module: str) -> tuple[tuple[str, int], ...]:
    """(imported module, line) for every import statement in `module`, relative ones resolved."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from pkg import module` imports pkg.module
                found.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, node.lineno))
    # importing a.b.c runs a/__init__ and a/b/__init__ first
    with_parents = []
    for name, line in found:
        parts = name.split(".")
        with_parents += [(".".join(parts[:i]), line) for i in range(1, len(parts))] + [(name, line)]
    return tuple((name, line) for name, line in with_parents if name != module)


def reach(start: str, follow) -> list[tuple[str, str]]:
    """Chains "a:line → b:line → ..." to every module imported from `start`, following only modules
    for which `follow(name)` holds. Returns (imported module, chain)."""
    seen, result, todo = {start}, [], [(start, start)]
    while todo:
        module, chain = todo.pop()
        for name, line in imports(module):
            step = f"{chain}:{line} → {name}"
            result.append((name, step))
            if name in MODULES and name not in seen and follow(name):
                seen.add(name)
                todo.append((name, step))
    return result


def _top_level(name: str) -> bool:
    return _under(name, "training") and not _under(name, PARTS) and name != "training.__main__"


def _violations(modules, follow, forbidden) -> list[str]:
    bad = []
    for module in modules:
        for name, chain in reach(module, follow):
            if forbidden(name) and (module, name) not in EXCEPTIONS:
                bad.append(chain)
    return sorted(set(bad))


def test_the_walk_sees_our_packages_and_function_level_imports():
    assert {"training.lifecycle.pipeline", "training.trainer.loop", "bot.app", "inference.engine"} <= set(MODULES)
    # training.evaluation.evaluate imports gate_items inside a function (gate imports evaluate)
    assert "training.evaluation.gate" in {name for name, _ in imports("training.evaluation.evaluate")}


def test_lifecycle_imports_neither_trainer_nor_evaluation_nor_mlx():
    lifecycle = [m for m in MODULES if _under(m, "training.lifecycle")]
    assert (
        _violations(
            lifecycle,
            lambda n: _under(n, "training.lifecycle") or _top_level(n),
            lambda n: _under(n, ("training.trainer", "training.evaluation", *MLX)),
        )
        == []
    )


def test_trainer_imports_neither_lifecycle_nor_evaluation():
    trainer = [m for m in MODULES if _under(m, "training.trainer")]
    assert (
        _violations(
            trainer,
            lambda n: _under(n, "training.trainer") or _top_level(n),
            lambda n: _under(n, ("training.lifecycle", "training.evaluation")),
        )
        == []
    )


def test_training_top_level_modules_import_no_part_and_no_mlx():
    top = [m for m in MODULES if _top_level(m)]
    assert {"training", "training.cli", "training.errors", "training.runs"} <= set(top)
    assert _violations(top, _top_level, lambda n: _under(n, (*PARTS, *MLX))) == []


def test_inference_and_data_import_nothing_of_ours_but_common():
    for package, other in (("inference", "data"), ("data", "inference")):
        modules = [m for m in MODULES if _under(m, package)]
        assert _violations(modules, lambda n: False, lambda n, other=other: _under(n, ("bot", "training", other))) == []
    common = [m for m in MODULES if _under(m, "common")]
    assert _violations(common, lambda n: False, lambda n: _under(n, ("bot", "training", "inference", "data"))) == []


def test_training_does_not_import_bot():
    training = [m for m in MODULES if _under(m, "training")]
    assert _violations(training, lambda n: False, lambda n: _under(n, "bot")) == []


def test_bot_imports_only_the_lifecycle_and_mlx_free_top_level_of_training():
    bot = [m for m in MODULES if _under(m, "bot")]
    allowed = ("training.lifecycle", "training.errors", "training.runs", "training.settings")
    assert (
        _violations(
            bot, lambda n: False, lambda n: _under(n, "training") and n != "training" and not _under(n, allowed)
        )
        == []
    )
