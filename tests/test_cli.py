"""The `midipipe` command: tokenize writes what the stage writes; info and errors are readable."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from midipipe.cli import main
from midipipe.core.params import TokenizeParams
from midipipe.data.midi import piece_id
from midipipe.tokens.tokenize import tokenize_files

ROOT = Path(__file__).resolve().parents[1]


def midipipe(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "midipipe.cli", *args], cwd=cwd, capture_output=True, text=True
    )


def test_tokenize_cli_matches_the_stage_function(make_midi, tmp_path):
    folder = tmp_path / "in"
    files = [make_midi(f"a/{i}.mid", folder=folder, n_bars=3 + i, pitch=55 + i) for i in range(4)]
    (folder / "broken.mid").write_bytes(b"MThd\x00\x00")
    proc = midipipe("tokenize", str(folder), "--out", str(tmp_path / "cli"), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["files"] == 5 and summary["remi_pieces"] == 4 and summary["rejects"] == 2

    items = sorted((piece_id(p.read_bytes()), str(p)) for p in [*files, folder / "broken.mid"])
    tokenize_files(items, tmp_path / "lib", TokenizeParams(workers=2))
    for rel in ("remi/part-00000.parquet", "musetok/part-00000.parquet"):
        cli = pq.read_table(tmp_path / "cli" / rel).sort_by("piece_id")
        lib = pq.read_table(tmp_path / "lib" / rel).sort_by("piece_id")
        assert cli.equals(lib)
    rejects = pq.read_table(tmp_path / "cli" / "rejects.parquet").to_pylist()
    assert {r["stage"] for r in rejects} == {"tokenize/remi", "tokenize/musetok"}
    assert all("broken.mid" in r["path"] and r["reason"] for r in rejects)


def test_tokenize_cli_missing_path_is_a_clear_error(tmp_path, capsys):
    """In this process (the command's start is tested above): exit 2 with the reason alone;
    any other exception would fail the test with its traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(["tokenize", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "nope" in err


def test_info_lists_versions_sources_and_outputs():
    proc = midipipe("info")
    assert proc.returncode == 0, proc.stderr
    assert "miditok:" in proc.stdout and "symusic:" in proc.stdout
    assert "music21" in proc.stdout
    assert "data/manifest.parquet" in proc.stdout and "data/tokens" in proc.stdout
