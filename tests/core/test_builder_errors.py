"""`proofkd data build` and `data list` on bad input, as a new user would meet it.

Each case goes through the command line (`proofkd.cli.main`) and checks three
things: one message on stderr that names the input, what is wrong and the fix;
exit code 2 and no traceback; and no partial output under --out. The table in
docs/errors.md is written from these cases.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from proofkd.cli import main
from proofkd.core.data import builder
from proofkd.core.data import manifest as manifest_module


def good_row(i: int) -> dict:
    return {"question": f"What is {i} + {i}?", "CoT": f"{i} + {i} = {2 * i}", "response": str(2 * i)}


def write_rows(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_manifest(path, *, filters=("empty_fields",), eval_fraction=0.25, sources=("local/set",)) -> str:
    """A stage1 manifest named `tiny` (filters must be non-empty)."""
    lines = [
        "name: tiny",
        "format: stage1",
        f"eval_fraction: {eval_fraction}",
        "sources:",
        *[f"  - id: {s}" for s in sources],
        "filters:",
        *[f"  - {f}" for f in filters],
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def case(tmp_path):
    """A manifest over one local source `local/set`, a good copy of it, and where the build goes."""
    root = tmp_path / "sources"
    source = root / "local" / "set.jsonl"
    write_rows(source, [good_row(i) for i in range(8)])
    out = tmp_path / "out"

    class Case:
        pass

    c = Case()
    c.root, c.source, c.out, c.tmp = root, source, out, tmp_path
    c.manifest = write_manifest(tmp_path / "tiny.yml")
    c.args = lambda *extra: ["data", "build", c.manifest, "--source-root", str(root), "--out", str(out), *extra]
    return c


def run(capsys, args) -> tuple[int, str]:
    code = main([*args, "--no-tokens"] if args[:2] == ["data", "build"] and "--tokenizer" not in args else args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def files_under(folder) -> list[str]:
    """Every file under `folder` (none if it does not exist): a failed build must leave this empty."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def one_message(err: str) -> str:
    lines = [line for line in err.splitlines() if "proofkd data" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_the_good_case_builds(case, capsys):
    code = main(case.args("--no-tokens"))
    assert code == 0
    assert files_under(case.out) == [f"tiny/{f}" for f in sorted(builder.OUTPUT_FILES)]


def test_a_non_utf8_byte_names_the_file_line_and_reencoding(case, capsys):
    lines = case.source.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"What", b"Wh\xffat")
    case.source.write_bytes(b"".join(lines))
    code, err = run(capsys, case.args())
    message = one_message(err)
    assert code == 2
    assert str(case.source) in message and "is not UTF-8: line 3, column 17 has the byte 0xff" in message
    assert "re-encode it as UTF-8" in message and "codec can't decode" not in message
    assert files_under(case.out) == []


def test_a_truncated_last_line_names_the_local_file_not_the_hub(case, capsys):
    case.source.write_bytes(case.source.read_bytes()[:-15])
    code, err = run(capsys, case.args())
    message = one_message(err)
    assert code == 2
    assert f"the local file {case.source} ends in a line cut short: line 8" in message
    assert "truncated" in message and "Hub" not in message
    assert files_under(case.out) == []


def test_invalid_json_mid_file_names_the_line_and_column(case, capsys):
    lines = case.source.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('", "CoT"', '" "CoT"')
    case.source.write_text("".join(lines))
    code, err = run(capsys, case.args())
    assert code == 2
    assert "has invalid JSON at line 4, column" in one_message(err)
    assert files_under(case.out) == []


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_file_says_it_is_empty(case, capsys, content):
    case.source.write_text(content)
    code, err = run(capsys, case.args())
    message = one_message(err)
    assert code == 2
    assert str(case.source) in message and ("is empty (no rows)" in message or "has no rows" in message)
    assert "StopIteration" not in message
    assert files_under(case.out) == []


def run_with_manifest(case, capsys, name: str, text: str) -> tuple[Path, int, str]:
    """`proofkd data build` on a manifest file holding `text`: its path, the exit code and the one message."""
    path = case.tmp / name
    path.write_text(text, encoding="utf-8")
    args = case.args()
    args[2] = str(path)
    code, err = run(capsys, args)
    return path, code, one_message(err)


def test_broken_yaml_names_the_manifest_line_and_column(case, capsys):
    path, code, message = run_with_manifest(
        case, capsys, "broken.yml", 'name: tiny\nformat: stage1\nsources:\n  - {id: "local/set\n'
    )
    assert code == 2
    assert f"manifest {path} is not valid YAML at line 5, column 1" in message
    assert "while scanning a quoted scalar" in message and "quotes closed" in message
    assert files_under(case.out) == []


def test_a_manifest_that_is_not_a_manifest_names_the_key(case, capsys):
    path, code, message = run_with_manifest(
        case, capsys, "wrong.yml", "name: tiny\nformat: stage3\nsources:\n  - split: train\n"
    )
    assert code == 2
    assert f"manifest {path} is not a valid manifest: format: Input should be" in message
    assert "(got 'stage3')" in message and "sources.0.id: Field required" in message
    empty, code, message = run_with_manifest(case, capsys, "empty.yml", "# nothing yet\n")
    assert code == 2 and f"manifest {empty} is empty: it needs at least `name:`" in message


def test_out_below_a_regular_file_names_the_file(case, capsys):
    blocker = case.tmp / "notes.txt"
    blocker.write_text("my notes\n")
    args = case.args()
    args[args.index("--out") + 1] = str(blocker / "data")
    code, err = run(capsys, args)
    message = one_message(err)
    assert code == 2
    assert f"{blocker} is a file, not a folder" in message and "NotADirectoryError" not in message
    assert blocker.read_text() == "my notes\n"
    assert files_under(case.out) == []


def test_out_whose_build_folder_is_a_file_is_refused(case, capsys):
    case.out.mkdir()
    (case.out / "tiny").write_text("keep me\n")
    code, err = run(capsys, case.args())
    assert code == 2 and f"{case.out / 'tiny'} is a file, not a folder" in one_message(err)
    assert (case.out / "tiny").read_text() == "keep me\n"


def test_filters_that_drop_every_row_say_which_dropped_how_many(case, capsys):
    write_manifest(case.tmp / "tiny.yml", filters=("exact_duplicates", "empty_fields", "duplicate_prompts"))
    no_derivation = {**good_row(1), "CoT": ""}
    write_rows(case.source, [no_derivation, no_derivation, {**good_row(2), "response": ""}])
    code, err = run(capsys, case.args())
    message = one_message(err)
    assert code == 2
    assert "tiny: the filters dropped every row of 3: exact_duplicates dropped 1, empty_fields dropped 2" in message
    assert "duplicate_prompts dropped 0; nothing was written" in message and "'empty_fields'" in message
    assert files_under(case.out) == []


def test_eval_fraction_that_leaves_no_training_row_is_refused(case, capsys):
    write_rows(case.source, [good_row(1)])
    code, err = run(capsys, case.args())
    assert code == 2 and "only 1 row(s) kept, and eval_fraction 0.25 would hold out all of them" in one_message(err)
    assert files_under(case.out) == []


def test_missing_source_files_are_all_named_before_any_is_loaded(case, capsys, monkeypatch):
    write_manifest(case.tmp / "tiny.yml", sources=("local/set", "local/gone", "other/absent"))
    loaded = []
    monkeypatch.setattr(builder, "load_source", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    code, err = run(capsys, case.args())
    message = one_message(err)
    assert code == 2 and loaded == []
    assert f"local/gone, other/absent: no local copy under {case.root}" in message
    assert str(case.root / "local" / "gone") + "{.jsonl,.json,.parquet}" in message
    assert files_under(case.out) == []


def test_a_missing_source_root_is_named(case, capsys):
    args = case.args()
    args[args.index("--source-root") + 1] = str(case.tmp / "nowhere")
    code, err = run(capsys, args)
    assert code == 2 and f"--source-root {case.tmp / 'nowhere'} does not exist" in one_message(err)


@pytest.mark.parametrize(
    "value, kind",
    [(4, "a number (4)"), (["4", "5"], 'a list (["4", "5"])'), ({"text": "4"}, 'an object ({"text": "4"})')],
)
def test_a_column_of_the_wrong_type_names_the_line(case, capsys, value, kind):
    rows = [good_row(i) for i in range(4)]
    rows[1]["response"] = value
    write_rows(case.source, rows)
    code, err = run(capsys, case.args())
    message = one_message(err)
    assert code == 2
    assert f"{case.source} has a wrong row at line 2: column 'response' holds {kind}" in message
    assert "but it must be text (a JSON string)" in message
    assert files_under(case.out) == []


def test_a_whole_column_of_numbers_names_the_first_line(case, capsys):
    write_rows(case.source, [{**good_row(i), "response": 2 * i} for i in range(4)])
    code, err = run(capsys, case.args())
    assert code == 2 and "has a wrong row at line 1: column 'response' holds a number (0)" in one_message(err)


def test_a_row_that_is_not_an_object_names_the_line(case, capsys):
    case.source.write_text(case.source.read_text() + '["What is 1 + 1?", "2"]\n')
    code, err = run(capsys, case.args())
    message = one_message(err)
    assert code == 2 and "has a wrong row at line 9: holds a list" in message and "must be a JSON object" in message


def test_a_missing_required_column_names_it_and_the_formats(case, capsys):
    write_rows(case.source, [{"question": "q", "response": "r"}] * 3)
    code, err = run(capsys, case.args())
    message = one_message(err)
    assert code == 2
    assert f"the local file {case.source}: expected the columns ['question', 'CoT', 'response']" in message
    assert "(missing ['CoT'])" in message and "stage2 ['instruction', 'input', 'output']" in message
    assert files_under(case.out) == []


def test_an_unwritable_destination_is_refused_before_the_work(case, capsys, monkeypatch):
    """Root ignores permissions, so the refusal is checked through `os.access`, and for real when not root."""
    case.out.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(case.out) else real_access(p, mode))
    monkeypatch.setattr(builder, "load_source", lambda *a, **k: pytest.fail("a source was loaded"))
    code, err = run(capsys, case.args())
    assert code == 2
    assert f"the folder {case.out} is not writable by this user" in one_message(err)
    assert files_under(case.out) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_destination_for_real(case, capsys):
    case.out.mkdir()
    case.out.chmod(0o555)
    try:
        code, err = run(capsys, case.args())
    finally:
        case.out.chmod(0o755)
    assert code == 2 and "is not writable by this user" in one_message(err)
    assert files_under(case.out) == []


def test_a_write_error_mid_build_is_one_message_and_leaves_nothing(case, capsys, monkeypatch):
    def full_disk(path, dataset):
        path.write_text("half a row")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(builder, "_write_jsonl", full_disk)
    code, err = run(capsys, case.args())
    message = one_message(err)
    assert code == 2 and "could not write" in message and "No space left on device; nothing was written" in message
    assert files_under(case.out) == []


def test_an_interrupted_build_leaves_no_partial_file_and_keeps_the_last_build(case, capsys, monkeypatch):
    assert main(case.args("--no-tokens")) == 0
    before = {p: (case.out / p).read_bytes() for p in files_under(case.out)}
    capsys.readouterr()
    write_rows(case.source, [good_row(i) for i in range(20, 30)])
    real = builder._write_jsonl

    def interrupted(path, dataset):
        if path.name == "eval.jsonl":
            with path.open("w") as handle:
                handle.write(json.dumps(dataset[0]) + "\n")
            raise KeyboardInterrupt
        real(path, dataset)

    monkeypatch.setattr(builder, "_write_jsonl", interrupted)
    code = main(case.args("--no-tokens"))
    err = capsys.readouterr().err
    assert code == 130 and "interrupted; nothing was written" in err and "Traceback" not in err
    assert {p: (case.out / p).read_bytes() for p in files_under(case.out)} == before  # no partial, nothing lost
    assert [p.name for p in case.out.iterdir()] == ["tiny"]


def test_an_interruption_while_replacing_the_last_build_keeps_it(case, capsys, monkeypatch):
    """Between setting the old folder aside and moving the new one in, an interruption puts the old one back."""
    from proofkd.core import io

    assert main(case.args("--no-tokens")) == 0
    before = {p: (case.out / p).read_bytes() for p in files_under(case.out)}
    real, calls = io.os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the second move: the new build into place
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    assert main(case.args("--no-tokens")) == 130
    assert {p: (case.out / p).read_bytes() for p in files_under(case.out)} == before
    assert [p.name for p in case.out.iterdir()] == ["tiny"]


def test_an_explicit_tokenizer_that_cannot_load_is_refused_before_the_sources(case, capsys, monkeypatch):
    monkeypatch.setattr(builder, "load_source", lambda *a, **k: pytest.fail("a source was loaded"))
    monkeypatch.setattr(builder, "_load_tokenizer", lambda name: (None, f"tokenizer {name!r} could not be loaded"))
    code, err = run(capsys, case.args("--tokenizer", str(case.tmp / "no-tokenizer")))
    assert code == 2
    assert f"tokenizer '{case.tmp / 'no-tokenizer'}' could not be loaded: pass --tokenizer a Hub id" in one_message(err)


def test_data_list_names_a_broken_manifest_and_lists_the_rest(tmp_path, capsys, monkeypatch):
    (tmp_path / "good.yml").write_text("name: good\nformat: stage1\nsources: [{id: a/b}]\ndescription: fine\n")
    (tmp_path / "bad.yml").write_text("name: bad\nformat: [stage1\n")
    monkeypatch.setattr(manifest_module, "MANIFEST_DIR", tmp_path)
    code = main(["data", "list"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert f"manifest {tmp_path / 'bad.yml'} is not valid YAML at line" in captured.err
    assert captured.out.startswith("good ") and "fine" in captured.out


def test_data_list_lists_the_shipped_manifests(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == ["opd", "stage1_kd", "stage2_sft"]
