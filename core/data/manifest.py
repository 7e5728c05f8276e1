"""Data manifests: what a recipe trains on, where it comes from, and how it is built.

A manifest is a YAML file (the recipes' own ship in `proofkd/data/manifests/`;
a user can copy one and change it). It names each source dataset with the
split, the columns the builder needs, and the row count the model card
publishes; the template; the filters, applied in order; the shuffle seed and
the evaluation fraction; and the tokenizer whose token counts the report
gives. `expected_rows` is the number of rows the card says the model was
trained on after filtering, which the builder's report checks the filters
against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from proofkd.core.io import YamlFileError, read_yaml_mapping

MANIFEST_DIR = Path(__file__).parent / "manifests"

# The columns each row format needs from every source.
FORMAT_COLUMNS = {
    "stage1": ("question", "CoT", "response"),
    "stage2": ("instruction", "input", "output"),
    "dapo": ("prompt", "reward_model"),
}

FILTERS = ("empty_fields", "exact_duplicates", "duplicate_prompts", "max_tokens")


class Source(BaseModel):
    id: str = Field(description="Hub dataset id (or a name under --source-root)")
    split: str = "train"
    config: str | None = None
    card_count: int | None = Field(default=None, description="rows the model card publishes for this source")
    verified: bool = Field(default=False, description="whether the id and schema were read on the Hub")
    note: str | None = None


class FilterSpec(BaseModel):
    """One filter: `name`, with `max_tokens` taking the limit in `value`."""

    name: Literal["empty_fields", "exact_duplicates", "duplicate_prompts", "max_tokens"]
    value: int | None = None

    @model_validator(mode="after")
    def _value(self) -> FilterSpec:
        if self.name == "max_tokens" and not (self.value and self.value > 0):
            raise ValueError("the max_tokens filter needs a positive limit, e.g. {max_tokens: 1024}")
        return self

    @property
    def label(self) -> str:
        return f"max_tokens {self.value}" if self.name == "max_tokens" else self.name


class Manifest(BaseModel):
    name: str
    description: str = ""
    format: Literal["stage1", "stage2", "dapo"]
    sources: list[Source]
    filters: list[FilterSpec] = Field(default_factory=list)
    tokenizer: str | None = None
    sequence_len: int = 1024
    shuffle_seed: int = 42
    eval_fraction: float = 0.05
    expected_rows: int | None = None
    notes: list[str] = Field(default_factory=list)

    @field_validator("filters", mode="before")
    @classmethod
    def _filters(cls, value: Any) -> Any:
        """Accept `empty_fields` and `{max_tokens: 1024}` as well as `{name: ..., value: ...}`."""
        out = []
        for item in value or []:
            if isinstance(item, str):
                out.append({"name": item})
            elif isinstance(item, dict) and "name" not in item and len(item) == 1:
                (name, val), *_ = item.items()
                out.append({"name": name, "value": val})
            else:
                out.append(item)
        return out

    @field_validator("eval_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {value}")
        return value

    @property
    def columns(self) -> tuple[str, ...]:
        return FORMAT_COLUMNS[self.format]


def known_manifests() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.yml"))


def load_manifest(name_or_path: str | Path) -> Manifest:
    """A manifest by recipe name (`stage1_kd`) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = MANIFEST_DIR / f"{name_or_path}.yml"
        if not path.is_file():
            raise FileNotFoundError(
                f"no manifest named {name_or_path!r}; known: {', '.join(known_manifests())}, or pass a path to a .yml"
            )
    elif path.is_dir():
        raise FileNotFoundError(f"manifest {path} is a folder: pass a manifest .yml file, or a recipe name")
    elif not path.is_file():
        raise FileNotFoundError(f"manifest file {path} does not exist")
    return _parse(path)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class ManifestError(ValueError):
    """A manifest file that is not valid YAML, or not a valid manifest; the message names the file and the place."""


def _parse(path: Path) -> Manifest:
    try:
        data = read_yaml_mapping(
            path,
            "manifest",
            needs="it needs at least `name:`, `format:` (stage1, stage2 or dapo) and `sources:` "
            "(see the shipped ones with `proofkd data list`)",
        )
    except YamlFileError as error:
        raise ManifestError(str(error)) from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or '(top level)'}: {e['msg']}"
            + (f" (got {_brief(e['input'])})" if e["type"] != "missing" and not isinstance(e["input"], dict) else "")
            for e in error.errors()
        )
        raise ManifestError(f"manifest {path} is not a valid manifest: {problems}") from None
