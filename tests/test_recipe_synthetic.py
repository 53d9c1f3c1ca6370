"""Smoke test of recipes/synthetic/run.sh, run stage range by stage range as ESPnet's CI does.

A tiny espeak-ng corpus (24/6/6 utterances) and conf/tiny.yaml (six training steps) keep the whole
recipe to about a minute on two cores. Each range is a subprocess; after each we check what it must
have left under the work dir, and that running it again skips the finished work.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from asr.cli import build_parser
from asr.data.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
RUN_SH = ROOT / "recipes" / "synthetic" / "run.sh"
TINY = ["--train-utts", "24", "--dev-utts", "6", "--test-utts", "6", "--config", "conf/tiny.yaml"]
SETS = ("dev", "test")
DECODERS = ("greedy", "beam-4gram")  # beam-<LM file stem>, see asr.evaluate.decoder_label
VTLN_DECODERS = ("greedy-vtln", "beam-4gram-vtln")  # test only: asr decode --vtln

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (make setup, or apt-get install espeak-ng)")


def run_recipe(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run run.sh from the repository root with this interpreter's bin/ (where `asr` is) on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"  # tiny tensors: threads only add overhead on a shared machine
    proc = subprocess.run(["bash", str(RUN_SH), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"run.sh {' '.join(args)} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


@needs_espeak
def test_recipe_stage_by_stage(tmp_path):
    work = tmp_path / "work"
    recipe = ["--work-dir", str(work), *TINY]
    manifests = work / "data" / "manifests"
    exp = work / "exp" / "demo"

    # --- 0-1: corpus and manifests
    run_recipe(*recipe, "--stage", "0", "--stop-stage", "1")
    expected = {"train": 24, "dev": 6, "test": 6}
    for split, n in expected.items():
        assert len(list((work / "data" / "corpus" / split).rglob("*.flac"))) == n
        assert count_lines(manifests / f"{split}.jsonl") == n
        assert (manifests / f".{split}.done").is_file()
    outputs = [manifests / f"{split}.jsonl" for split in expected]
    before = mtimes(outputs)
    again = run_recipe(*recipe, "--stage", "0", "--stop-stage", "1")
    assert "0 chapters written" in again.stdout + again.stderr  # asr synth resumes
    assert again.stdout.count("already done (") == 3
    assert mtimes(outputs) == before

    # --- 2-3: tokens, CMVN, LM
    run_recipe(*recipe, "--stage", "2", "--stop-stage", "3")
    assert (exp / "tokens.txt").is_file() and (exp / "cmvn.pt").is_file()
    arpa = work / "data" / "lm" / "4gram.arpa"
    text = arpa.read_text(encoding="utf-8")
    assert text.lstrip().startswith("\\data\\") and "\\4-grams:" in text and text.rstrip().endswith("\\end\\")
    outputs = [exp / "tokens.txt", exp / "cmvn.pt", arpa]
    before = mtimes(outputs)
    again = run_recipe(*recipe, "--stage", "2", "--stop-stage", "3")
    assert again.stdout.count("already done (") == 2
    assert mtimes(outputs) == before

    # --- 4-5: train, average
    run_recipe(*recipe, "--stage", "4", "--stop-stage", "5")
    checkpoints = exp / "checkpoints"
    assert (checkpoints / "last.pt").is_file()
    assert (checkpoints / "avg-3.pt").is_file()
    assert (exp / "config.yaml").is_file()
    before = mtimes([checkpoints / "last.pt"])
    again = run_recipe(*recipe, "--stage", "4", "--stop-stage", "4")
    assert "already done (" in again.stdout and "+ asr train" not in again.stdout
    assert mtimes([checkpoints / "last.pt"]) == before

    # --- 6-8: decode, RESULTS.md, transcribe
    out = run_recipe(*recipe, "--stage", "6", "--stop-stage", "8").stdout
    decoded = [(s, d) for s in SETS for d in DECODERS] + [("test", d) for d in VTLN_DECODERS]
    for set_name, decoder in decoded:
        results = json.loads((exp / "decode" / set_name / decoder / "results.json").read_text())
        assert results["utterances"] == expected[set_name]
        assert 0 <= results["wer"] and 0 <= results["cer"]
        assert results["checkpoint"].endswith("avg-3.pt")
        if decoder in VTLN_DECODERS:  # one warp per test speaker, from the grid
            speakers = {r["speaker"] for r in read_manifest(work / "data" / "manifests" / "test.jsonl")}
            assert set(results["vtln"]["speakers"]) == {str(s) for s in speakers}
            assert set(results["vtln"]["speakers"].values()) <= set(results["vtln"]["warps"])
    assert (exp / "decode" / "dev" / "beam-4gram" / "tuned.json").is_file()
    tuned = json.loads((exp / "decode" / "test" / "beam-4gram" / "results.json").read_text())
    assert tuned["tuned_from"].endswith("dev/beam-4gram/tuned.json")

    rows = [line.split("|") for line in (work / "RESULTS.md").read_text().splitlines()
            if line.startswith("| demo |")]
    assert sorted((r[2].strip(), r[3].strip()) for r in rows) == sorted(decoded)

    transcripts = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(transcripts) == 1
    transcript = transcripts[0]
    audio = work / transcript["audio"]
    assert audio.is_file() and audio.is_relative_to(work / "data" / "corpus" / "test")
    duration = soundfile.info(str(audio)).duration
    assert transcript["duration"] == pytest.approx(duration, abs=0.01)
    # An untrained model may say nothing; whatever it says must lie inside the file.
    assert transcript["text"] == " ".join(w["word"] for w in transcript["words"])
    for word in transcript["words"]:
        assert 0 <= word["start"] <= word["end"] <= duration + 0.01, word


def test_dry_run_prints_every_stage_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    proc = run_recipe("--work-dir", str(work), "--dry-run", *TINY)
    for n in range(9):
        assert f"stage {n}:" in proc.stdout
    commands = [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]
    verbs = [argv[1] for argv in commands]
    assert verbs == ["synth", *["prepare"] * 3, "stats", "lm", "train", "average", "calibrate", *["decode"] * 6,
                     "results", "transcribe"]
    parser = build_parser()
    for argv in commands:
        assert argv[0] == "asr"
        parser.parse_args(argv[1:])  # every option the recipe passes exists in the CLI
    assert not work.exists()


def test_unknown_option_is_one_line_and_fails(tmp_path):
    proc = run_recipe("--work-dir", str(tmp_path / "work"), "--no-such-option", "1", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--no-such-option" in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("args, message", [
    (["--avg", "4"], "--avg 4 needs 4 step checkpoints but tiny.yaml keeps train.keep_last=3: pass --avg 3"),
    (["--train-args", "model.hiden=4"], "override 'model.hiden=4'"),
    (["--stage", "2"], "stage 2 needs data/manifests/train.jsonl, made by stage 1: run stage 1 first (--stage 1)"),
    (["--stage", "1"], "stage 1 needs data/corpus/train, made by stage 0"),
    (["--stage", "8"], "stage 8 needs data/lm/4gram.arpa, made by stage 3"),
])
def test_options_and_inputs_are_checked_before_anything_runs(tmp_path, args, message):
    work = tmp_path / "work"
    work.mkdir()
    proc = run_recipe("--work-dir", str(work), *TINY, *args, check=False)  # would run if the checks passed
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert list(work.iterdir()) == []
