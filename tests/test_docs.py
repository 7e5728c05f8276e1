"""The docs: the README's two commands, the generated key tables, and links that resolve."""

from __future__ import annotations

import re

import pytest

from proofkd.plugin import config_docs
from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_opens_with_the_install_and_the_test_command():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    assert blocks[:2] == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && proofkd quickstart",
        ". .venv/bin/activate && pytest",
    ]


def test_configuration_md_is_what_the_config_models_generate():
    path = REPO / "docs" / "configuration.md"
    text = path.read_text(encoding="utf-8")
    assert config_docs.rewrite(text) == text, "run: python -m proofkd.plugin.config_docs"
    assert config_docs.main(["--path", str(path), "--check"]) == 0


def test_the_generator_sees_drift(tmp_path):
    page = tmp_path / "configuration.md"
    stale = "| `proofkd_temperature` | float | `2.0` | T |"
    page.write_text(f"# Keys\n\n{config_docs.BEGIN}\n{stale}\n{config_docs.END}\n")
    assert config_docs.main(["--path", str(page), "--check"]) == 1
    assert config_docs.main(["--path", str(page)]) == 0
    text = page.read_text()
    assert "`proofkd_compile_loss_head` | bool | `true` |" in text and "`proofkd_opd_topk`" in text
    assert text.count("`proofkd_teacher` |") == 1  # the shared teacher keys appear once
    assert config_docs.main(["--path", str(page), "--check"]) == 0


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: {target}"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path.read_text(encoding="utf-8")), f"{page.name}: {target}"
