"""The `soulray` command as a user meets it: clear one-line errors, working subcommands."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from soulray.cli import main


def soulray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soulray", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("setup, overrides, expected", [
    (None, ["sources.0.path=/no/such/file.parquet"], "/no/such/file.parquet: source path does not exist"),
    ("corrupt", [], "corrupt.parquet: not a readable Parquet file"),
    ("wrong_column", [], "missing column 'answer'"),
    (None, ["storage.rows_per_shard=lots"], "storage.rows_per_shard"),
    (None, ["sources.0.colums.answer=x"], "sources.0.colums: unknown key"),
])
def test_user_mistakes_give_one_clear_line(tmp_path, setup, overrides, expected):
    if setup == "corrupt":
        (tmp_path / "corrupt.parquet").write_bytes(b"PAR1garbage")
        overrides = [f"sources.0.path={tmp_path / 'corrupt.parquet'}"]
    elif setup == "wrong_column":
        pq.write_table(pa.table({"question": ["问"], "reply": ["答"]}), tmp_path / "w.parquet")
        overrides = [f"sources.0.path={tmp_path / 'w.parquet'}"]
    args = ["regenerate", "--set", f"storage.root={tmp_path / 'out'}"]
    for override in overrides:
        args += ["--set", override]
    result = soulray(*args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_import_synth_inspect_export_gc(ray_local, tmp_path, capsys):
    psyqa = [{"question": "睡不着", "description": "", "keywords": "情绪",
              "answers": [{"answer_text": "抱抱你", "has_label": False, "labels_sequence": None}], "questionID": 1}]
    (tmp_path / "psyqa.json").write_text(json.dumps(psyqa, ensure_ascii=False), encoding="utf-8")
    assert main(["import", "psyqa", str(tmp_path / "psyqa.json"), str(tmp_path / "psyqa.parquet")]) == 0
    assert main(["synth", str(tmp_path / "syn.parquet"), "--rows", "500", "--seed", "3"]) == 0
    assert pq.read_table(tmp_path / "syn.parquet").num_rows == 500

    root = tmp_path / "store"
    # without filters and dedup, so every row comes out: the synthetic text is real SMILECHAT sentences,
    # some with crisis terms (source filters send those to review), its offline rewrites can trip the
    # dialogue screens, and 10% of its answers are planted near duplicates (tests/filters, tests/dedup
    # and bench/e2e.py run them on synthetic sources)
    assert main(["regenerate", "--set", f"storage.root={root}", "--set", f"sources.0.path={tmp_path / 'syn.parquet'}",
                 "--set", "dataset=syn", "--set", "filters.source=[]", "--set", "filters.dialogue=[]",
                 "--set", "dedup.source.enabled=false", "--set", "dedup.dialogue.enabled=false"]) == 0
    out = capsys.readouterr().out
    # the offline rewrite of a real sentence can come back unparseable (a repeated role): a named reject
    counted = re.search(r"500 in = (\d+) out \+ (\d+) rejected", out)
    assert counted, out
    published, rejected = int(counted[1]), int(counted[2])
    assert published + rejected == 500 and published >= 490

    assert main(["inspect", "--root", str(root), "--dataset", "syn", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "checksums verified" in out and "500 in" in out
    assert main(["export", "--root", str(root), "--dataset", "syn", "--output", str(tmp_path / "x.jsonl")]) == 0
    lines = (tmp_path / "x.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert len(lines) == published and first["messages"][0]["role"] == "user" and len(first["messages"]) >= 8
    assert first["topic"] and first["id"].startswith(first["question_id"] + "-")
    source = pq.read_table(tmp_path / "syn.parquet")  # ids are the source's answer ids, as given
    assert {json.loads(line)["id"] for line in lines} <= set(source["answer_id"].to_pylist())

    assert main(["gc", "--root", str(root), "--dataset", "syn", "--min-age-s", "0"]) == 0
    assert "0 orphaned files" in capsys.readouterr().out


def test_inspect_missing_version_is_an_error(tmp_path, capsys):
    assert main(["inspect", "--root", str(tmp_path), "--dataset", "nothing"]) == 2
    assert "no published version yet" in capsys.readouterr().err


def test_a_missing_api_key_is_one_line_before_ray_starts(tmp_path):
    result = soulray("regenerate", "--set", f"storage.root={tmp_path}", "--set", "limit=5",
                     "--set", "rewrite.keys=[{name: real, api_key_env: SOULRAY_NOT_SET_ANYWHERE}]")
    assert result.returncode == 2
    # checked on the driver before Ray or the pipeline start (workers check again: tests/test_secrets.py)
    assert result.stderr.splitlines() == [
        "soulray: error: secrets named in the config are not available here (set them on every node, the driver's "
        "included): rewrite.keys.0.api_key_env: environment variable SOULRAY_NOT_SET_ANYWHERE is not set"]


def test_an_error_inside_a_ray_task_is_one_line(tmp_path):
    """Issue 17, defect 5: a corrupt data page behind an intact footer fails inside a Ray task; the user
    sees the SourceError's one line (no RayTaskError text, no Ray Data tracebacks, no retry note); with
    --verbose the traceback comes too."""
    from tests.filters.tables import good_dialogue

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(50)], "topic": ["成长"] * 50,
                             "messages": [good_dialogue(8)] * 50}), good, compression="none")
    data = bytearray(good.read_bytes())
    data[200:600] = b"\xab" * 400  # the pages; the footer at the end stays readable
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(bytes(data))
    pq.read_metadata(corrupt)  # the footer is intact: the damage is only found when a task reads the pages

    result = soulray("clean", "--input", str(corrupt), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [line for line in result.stderr.splitlines() if line.startswith("soulray: error:")]
    assert len(errors) == 1 and re.match(rf"soulray: error: {re.escape(str(corrupt))}: cannot read row group 0: ",
                                         errors[0]), result.stderr
    assert "Traceback" not in result.stderr and "RayTaskError" not in result.stderr
    assert "Failed to apply UDF" not in result.stderr

    verbose = soulray("-v", "clean", "--input", str(corrupt), "--output", str(tmp_path / "out"))
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == errors[0]
