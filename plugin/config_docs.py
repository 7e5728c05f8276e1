"""Writes the key tables of docs/configuration.md from the config models in `proofkd.plugin.args`.

    python -m proofkd.plugin.config_docs            # rewrite the tables in docs/configuration.md
    python -m proofkd.plugin.config_docs --check    # exit 1 if the committed tables differ

The models are the only definition of each `proofkd_*` key; the tables (key,
type, default, description) are rendered from them between two markers, and
the rest of the page is prose written by hand. tests/test_docs.py runs the
check.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic.fields import FieldInfo

from proofkd.plugin.args import OPDArgs, ProofKDArgs, TeacherArgs

BEGIN = "<!-- BEGIN generated key tables: python -m proofkd.plugin.config_docs (do not edit by hand) -->"
END = "<!-- END generated key tables -->"
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

SECTIONS = [
    ("Teacher keys (both plugins)", TeacherArgs, None),
    ("Stage 1: `proofkd.plugin.ProofKDPlugin`", ProofKDArgs, TeacherArgs),
    ("On-policy distillation: `proofkd.plugin.OPDPlugin`", OPDArgs, TeacherArgs),
]


def render() -> str:
    """The tables, one per section; keys both plugins share appear once, in the first."""
    parts = []
    for title, model, shared in SECTIONS:
        parts += [f"### {title}", "", "| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if shared is not None and name in shared.model_fields:
                continue
            if not field.description:
                raise ValueError(f"{model.__name__}.{name} has no description")
            cells = [f"`{name}`", _type(field), _default(field), field.description]
            parts.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        parts.append("")
    return "\n".join(parts)


def rewrite(text: str) -> str:
    """`text` with everything between the markers replaced by `render()`."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the page needs the markers {BEGIN!r} and {END!r}")
    return f"{head}{BEGIN}\n\n{render()}\n{END}{tail}"


def _type(field: FieldInfo) -> str:
    """The annotation with the Field's bounds: `float in [0, 1]`, `int >= 1 or null`."""
    bounds = {type(m): m for m in field.metadata}
    low = bounds.get(annotated_types.Ge) or bounds.get(annotated_types.Gt)
    high = bounds.get(annotated_types.Le) or bounds.get(annotated_types.Lt)
    low_value = getattr(low, "ge", getattr(low, "gt", None))
    high_value = getattr(high, "le", getattr(high, "lt", None))
    if low is not None and high is not None:
        left = "[" if isinstance(low, annotated_types.Ge) else "("
        right = "]" if isinstance(high, annotated_types.Le) else ")"
        bound = f" in {left}{low_value}, {high_value}{right}"
    elif low is not None:
        bound = f" {'>=' if isinstance(low, annotated_types.Ge) else '>'} {low_value}"
    elif high is not None:
        bound = f" {'<=' if isinstance(high, annotated_types.Le) else '<'} {high_value}"
    else:
        bound = ""
    args = typing.get_args(field.annotation)
    if typing.get_origin(field.annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        return " or ".join(_annotation(arg) for arg in rest) + bound + " or null"
    return _annotation(field.annotation) + bound


def _annotation(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        names = [f"`{value}`" for value in args]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_annotation(arg) for arg in args)
    if origin is dict or annotation is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == {}:
        return "`{}`"
    return f"`{value}`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proofkd.plugin.config_docs", description=__doc__.split("\n")[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help="the page to rewrite (%(default)s)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the page is out of date")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    wanted = rewrite(text)
    if args.check:
        if wanted != text:
            print(f"{args.path} is out of date: run python -m proofkd.plugin.config_docs", file=sys.stderr)
            return 1
        return 0
    if wanted != text:
        args.path.write_text(wanted, encoding="utf-8")
        print(f"rewrote the key tables in {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
