"""The recipes that ship with proofkd: the `proofkd.yaml` data package (`yaml/` in a clone).

A recipe's name is its path under that folder without `.yml`: `stage1_kd`,
`quickstart/stage1_kd`. The one-line description is the recipe's first comment line.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from proofkd.core.io import YamlFileError, read_yaml_mapping, unwritable_reason

PACKAGE = "proofkd.yaml"


class UnknownRecipeError(LookupError):
    """A name that is not a shipped recipe; the message lists the ones that are."""


class CopyRefusedError(ValueError):
    """The destination of a copy exists (and --force was not given), or cannot be written."""


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    description: str


def recipes_dir() -> Path:
    """The folder the recipes are read from, for an editable install (the clone's `yaml/`) or a wheel.

    `proofkd.yaml` has no `__init__.py`, and `importlib.resources.files` does not
    resolve such a package under setuptools' editable finder; its spec's search
    locations do, in both kinds of install.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if Path(location).is_dir():
            return Path(location)
    raise FileNotFoundError(f"the recipes package {PACKAGE} is not installed with proofkd (searched {locations})")


def _description(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and stripped.lstrip("#").strip():
            return stripped.lstrip("#").strip()
        if stripped and not stripped.startswith("#"):
            break
    return ""


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, top-level ones first, each group sorted by name."""
    root = recipes_dir()
    paths = sorted(root.rglob("*.yml"), key=lambda p: (len(p.relative_to(root).parts), p.relative_to(root).as_posix()))
    return [Recipe(p.relative_to(root).with_suffix("").as_posix(), p, _description(p)) for p in paths]


def find_recipe(name: str) -> Recipe:
    """The recipe called `name` (`stage1_kd`, `quickstart/stage1_kd`; a trailing `.yml` is allowed)."""
    wanted = name.removesuffix(".yml").removesuffix(".yaml").strip("/")
    recipes = list_recipes()
    for recipe in recipes:
        if recipe.name == wanted:
            return recipe
    known = ", ".join(r.name for r in recipes)
    raise UnknownRecipeError(f"unknown recipe {name!r}; the recipes that ship with proofkd are: {known}")


class RecipeError(ValueError):
    """A recipe file that is missing or cannot be read; the message names it and the fix."""


def read_recipe(recipe: str | Path) -> tuple[Path, dict]:
    """The file and keys of `recipe`: a recipe file, or the name of a shipped one (`stage1_kd`)."""
    path = Path(recipe).expanduser()
    if not path.is_file():
        try:
            path = recipe_path(str(recipe))
        except UnknownRecipeError as error:
            if path.exists():
                raise RecipeError(f"recipe {recipe} is a folder: pass the recipe's .yml file") from None
            if path.suffix in (".yml", ".yaml") or len(path.parts) > 1:
                raise RecipeError(
                    f"recipe {recipe} does not exist; pass a recipe file, or a shipped recipe's name "
                    "(`proofkd recipes list`; copy one with `proofkd recipes copy NAME`)"
                ) from None
            raise RecipeError(str(error)) from None
    try:
        return path, read_yaml_mapping(path, "recipe", needs="it needs at least base_model: and datasets:")
    except YamlFileError as error:
        raise RecipeError(str(error)) from None


def recipe_path(name: str) -> Path:
    """The installed file of a shipped recipe."""
    return find_recipe(name).path


def copy_recipe(name: str, dest: str | Path = ".", *, force: bool = False) -> Path:
    """Copy a shipped recipe to `dest`: into it if it is a folder (or ends with a separator), else to that file.

    An existing file is kept unless `force`. Returns the path written.
    """
    recipe = find_recipe(name)
    dest_text = str(dest)
    target = Path(dest)
    if target.is_dir() or dest_text.endswith(("/", "\\")):
        target = target / recipe.path.name
    if target.exists() and not force:
        raise CopyRefusedError(f"{target} exists; pass --force to overwrite it")
    reason = unwritable_reason(target.parent, option="destination")
    if reason:
        raise CopyRefusedError(f"cannot copy to {target}: {reason}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe.path, target)
    return target
