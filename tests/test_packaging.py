"""The project as a user installs it: a built wheel in a fresh virtualenv, run from elsewhere.

The editable install of `make` reads the work tree, so it hides files the wheel leaves out and
modules imported without being declared; these tests look at what `pip install` really gives.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
OUR_PACKAGES = ("bot", "common", "data", "inference", "training")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def distribution_names(requirements: list[str]) -> set[str]:
    return {normalized(re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0]) for requirement in requirements}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(folders: list[Path]) -> dict[str, set[str]]:
    """Top-level module -> files importing it, for every absolute import that is neither ours nor stdlib."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in OUR_PACKAGES and top not in sys.stdlib_module_names and top != "tests":
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def undeclared(folders: list[Path], requirements: list[str]) -> dict[str, set[str]]:
    declared = distribution_names(requirements)
    providers = importlib.metadata.packages_distributions()
    return {
        module: files
        for module, files in third_party_imports(folders).items()
        if not declared & {normalized(name) for name in providers.get(module, [])}
    }


def test_every_imported_module_is_declared():
    runtime = PROJECT["dependencies"]
    assert undeclared([REPO / package for package in OUR_PACKAGES], runtime) == {}
    assert undeclared([REPO / "tests"], runtime + PROJECT["optional-dependencies"]["test"]) == {}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from the committed-or-staged files (a copy, so no build/ lands in the tree)."""
    root = tmp_path_factory.mktemp("wheel")
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (root / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / "src" / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(root / "dist"), str(root / "src")],
        check=True,
        timeout=600,
    )
    (built,) = (root / "dist").glob("farense_bot-*.whl")
    return built


def test_wheel_holds_every_data_file_of_the_packages(wheel):
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    listed = subprocess.run(
        ["git", "ls-files", *OUR_PACKAGES], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    data_files = [name for name in listed if not name.endswith(".py")]
    assert "data/knowledge/facts.en.jsonl" in data_files
    assert [name for name in data_files if name not in in_wheel] == []


def test_installed_wheel_answers_a_grounded_question_from_another_directory(wheel, tmp_path, tiny_model_dir):
    """pip install of the wheel into a new virtualenv; its console scripts answer on a fresh home.

    The venv reaches the already installed dependencies through a .pth line naming this venv's
    site-packages (nothing is downloaded); pip still resolves every declared dependency against them
    (`--no-index`), and the editable install's finder there is not run, so our packages come from
    the wheel alone."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-index", str(wheel)], check=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "fresh-home"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env |= {"FARENSE_HOME": str(home), "MODEL_PATH": str(tiny_model_dir)}

    def run(command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / command), *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600
        )

    located = subprocess.run(
        [str(python), "-c", "import data, bot, training; print(data.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert located.startswith(site), located
    answered = run("farense.inference", "When was Farense founded?", "--max-tokens", "3")
    assert answered.returncode == 0, answered.stderr
    out = json.loads(answered.stdout)
    assert out["status"] == "ok" and not out["declined"]
    assert 2 in [fact["fact"] for fact in out["facts"]], out["facts"]  # "founded on 1 April 1910", packaged
    assert (home / "farense.db").is_file()
    for command, args in [("farense-bot", ["version"]), ("farense.training", ["status"]), ("farense.data", ["stats"])]:
        result = run(command, *args)
        assert result.returncode == 0, (command, result.stderr)
