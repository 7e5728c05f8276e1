"""`proofkd plot`: a run's log drawn as one PNG, with a panel for each group of values the run logged."""

from __future__ import annotations

import json

from proofkd.cli import main
from proofkd.cli.plot import panels_for, plot_run
from proofkd.core.run_log import LOG_FILE, read_run_log

PNG = b"\x89PNG\r\n\x1a\n"


def write_log(folder, records, tail: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (folder / LOG_FILE).write_text(text, encoding="utf-8")
    return folder


STAGE1 = [
    {"step": 0, "eval_loss": 3.0, "eval_proofkd/kl": 1.0, "eval_proofkd/derivation/ce": 2.0},
    *(
        {
            "step": s,
            "loss": 3.0 - s / 4,
            "learning_rate": 1e-4,
            "proofkd/kl": 1.0 / s,
            "proofkd/derivation/ce": 2.0,
            "proofkd/answer/ce": 2.5,
            "proofkd/derivation/kl": 1.2 / s,
            "proofkd/proof_weight": 2.5 - s / 4,
        }
        for s in range(1, 5)
    ),
    {"step": 4, "train_runtime": 12.0, "train_loss": 2.4},
]


def test_a_stage1_run_is_drawn_with_its_own_panels(tmp_path):
    run = write_log(tmp_path / "run", STAGE1)
    titles = [title for title, _ in panels_for(read_run_log(run))]
    assert titles == [
        "loss",
        "cross-entropy per span",
        "KL(teacher || student) at T, per span",
        "KL(teacher || student) at T",
        "proof weight",
        "learning rate",
    ]
    path = plot_run(run)
    assert path == run / "proofkd_log.png" and path.read_bytes().startswith(PNG)


def test_an_opd_run_gets_the_opd_panels():
    records = [{"step": 1, "loss": 0.5, "opd/k1": 0.4, "opd/k3": 0.3, "reward": -1.0, "opd/clip_ratio/low": 0.0}]
    titles = [title for title, _ in panels_for(records)]
    assert titles == ["loss", "OPD reverse-KL estimates", "OPD clipped fraction", "reward"]


def test_a_line_cut_short_by_a_killed_run_is_skipped(tmp_path, capsys):
    run = write_log(tmp_path / "run", STAGE1[:3], tail='{"step": 3, "loss": 2.')
    assert [r["step"] for r in read_run_log(run)] == [0, 1, 2]
    assert main(["plot", str(run), "--out", str(tmp_path / "plots" / "run.png")]) == 0
    assert (tmp_path / "plots" / "run.png").read_bytes().startswith(PNG)


def test_a_folder_without_a_log_or_an_unwritable_destination_is_refused(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("proofkd plot: ") and f"{LOG_FILE} does not exist" in err
    run = write_log(tmp_path / "run", STAGE1)
    (tmp_path / "file").write_text("x")
    assert main(["plot", str(run), "--out", str(tmp_path / "file" / "x.png")]) == 2
    assert "proofkd plot: " in capsys.readouterr().err
    assert not (run / "proofkd_log.png").exists()
