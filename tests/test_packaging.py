"""pyproject ships every package and data folder of the layout, and declares what the code imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib

from tests.helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
DATA_SUFFIXES = {".yml", ".yaml", ".jsonl"}


def _dotted(folder) -> str | None:
    for name, root in SETUPTOOLS["package-dir"].items():
        root = REPO / root
        if folder == root or root in folder.parents:
            return ".".join([name, *folder.relative_to(root).parts])
    return None


def _folders():
    for root in SETUPTOOLS["package-dir"].values():
        root = REPO / root
        yield root
        yield from (p for p in root.rglob("*") if p.is_dir() and "__pycache__" not in p.parts)


def test_every_folder_with_code_or_data_is_a_shipped_package():
    packages = set(SETUPTOOLS["packages"])
    missing = []
    for folder in _folders():
        has_code = (folder / "__init__.py").is_file()
        has_data = any(p.suffix in DATA_SUFFIXES for p in folder.iterdir() if p.is_file())
        if (has_code or has_data) and _dotted(folder) not in packages:
            missing.append(_dotted(folder))
    assert missing == [], f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_data_file_matches_a_package_data_pattern():
    patterns = SETUPTOOLS["package-data"]
    unshipped = []
    for folder in _folders():
        for path in (p for p in folder.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES):
            if not any(path.match(glob) for glob in patterns.get(_dotted(folder), [])):
                unshipped.append(str(path.relative_to(REPO)))
    assert unshipped == [], f"add to [tool.setuptools.package-data] in pyproject.toml: {unshipped}"


# The import name of each declared distribution, where the two differ.
IMPORT_NAMES = {
    "pyyaml": "yaml",
    "llama-cpp-python": "llama_cpp",
    "math-verify": "math_verify",
    "huggingface-hub": "huggingface_hub",
    "lm-eval": "lm_eval",
    "rouge-score": "rouge_score",
}
# Imported only where an optional extra is installed.
OPTIONAL = {"deepspeed"}


def test_every_third_party_import_of_the_shipped_code_is_a_declared_dependency():
    declared = set()
    for requirement in PYPROJECT["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        declared.add(IMPORT_NAMES.get(name, name.replace("-", "_")))
    undeclared = {}
    for root in SETUPTOOLS["package-dir"].values():
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module]
                else:
                    continue
                for top in {name.split(".")[0] for name in names}:
                    if top in sys.stdlib_module_names or top in declared | OPTIONAL | {"proofkd"}:
                        continue
                    undeclared.setdefault(top, str(path.relative_to(REPO)))
    assert undeclared == {}, f"declare in pyproject.toml [project] dependencies: {undeclared}"
