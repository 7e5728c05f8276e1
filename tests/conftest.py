"""Shared test set-up: offline, no telemetry, fresh random seeds that a failure reports."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test (or `PROOFKD_TEST_SEED`), printed when the test fails."""
    value = int(os.environ.get("PROOFKD_TEST_SEED", random.randrange(2**31)))
    request.node.user_properties.append(("seed", value))
    return value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            report.sections.append(("seed", f"reproduce with PROOFKD_TEST_SEED={seeds[0]}"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny tokenizer, teacher (2 layers, hidden 64, pre-trained a little), student (1 layer, hidden 32), data."""
    from proofkd.core.data.stem import generate
    from tests.helpers import make_model, make_tokenizer, pretrain, write_stage1_jsonl

    root = tmp_path_factory.mktemp("tiny")
    make_tokenizer(root / "tokenizer")
    teacher = make_model(root / "teacher", root / "tokenizer", hidden=64, layers=2, seed=1)
    pretrain(teacher, generate("train", 200, seed=4))
    student = make_model(root / "student", root / "tokenizer", hidden=32, layers=1, seed=2)
    train = write_stage1_jsonl(root / "train.jsonl", generate("train", 48, seed=3))
    heldout = write_stage1_jsonl(root / "heldout.jsonl", generate("heldout", 8, seed=3))
    return {
        "root": root,
        "tokenizer": root / "tokenizer",
        "teacher": teacher,
        "student": student,
        "train": train,
        "heldout": heldout,
    }


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct teacher (materialised once into the user cache)."""
    from proofkd.core import embedded

    return embedded.resolve("proofkd:smollm2-135m-instruct")


@pytest.fixture(autouse=True)
def fresh_axolotl_plugins():
    """Axolotl keeps registered plugins in a process-wide singleton; each test starts with none, as a run does."""
    from axolotl.integrations.base import PluginManager

    PluginManager.get_instance().plugins.clear()
    yield
    PluginManager.get_instance().plugins.clear()
