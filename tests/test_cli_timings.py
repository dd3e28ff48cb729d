"""benchmarks/run_cli_timings.py: the timing script behind issue 12's wall-time targets records what it ran."""

from __future__ import annotations

import csv

import pytest
from _helpers import benchmark_script


def _script():
    return benchmark_script("run_cli_timings")


def test_rows_record_the_command_its_outcome_and_the_load(tmp_path, monkeypatch, capsys):
    mod = _script()
    # two cheap real commands: one that succeeds within its target, one that fails (bad flag -> exit 2)
    monkeypatch.setattr(mod, "COMMANDS", {"version": (["--version"], 600.0), "bad": (["train", "--nope"], 600.0)})
    assert mod.main(["--only", "version,bad", "--out", str(tmp_path), "--note", "test run"]) == 0
    assert mod.main(["--only", "version", "--out", str(tmp_path)]) == 0  # appends, never overwrites
    with (tmp_path / "cli_timings.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["command"] for r in rows] == ["bioworld --version", "bioworld train --nope", "bioworld --version"]
    assert [r["met"] for r in rows] == ["yes", "no", "yes"] and [r["rc"] for r in rows] == ["0", "2", "0"]
    assert rows[0]["note"] == "test run" and float(rows[0]["wall_s"]) > 0 and float(rows[0]["cpu_s"]) > 0
    assert float(rows[0]["load1_before"]) >= 0 and "bioworld" in rows[0]["last_line"].lower()
    md = (tmp_path / "CLI_TIMINGS.md").read_text()
    body = [ln for ln in md.splitlines() if ln.startswith("| 20")]
    assert len(body) == 3 and "`bioworld train --nope`" in body[1]  # latest first: the second run's row on top
    assert "NOT met" in capsys.readouterr().out


def test_unknown_command_is_refused(tmp_path):
    with pytest.raises(SystemExit) as exc:
        _script().main(["--only", "train-everything", "--out", str(tmp_path)])
    assert exc.value.code == 2 and not (tmp_path / "cli_timings.csv").exists()
