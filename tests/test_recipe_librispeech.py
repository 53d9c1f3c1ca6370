"""recipes/librispeech/run.sh: stages 0-1 against a loopback mirror serving a tiny fake
LibriSpeech, a dry run of every --set, options and errors; and the `asr download` verb.

Stages 2-7 are the same `asr` calls as the synthetic recipe's, whose smoke test runs them.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.cli import _LM_FILE_NAMES, main
from asr.data import librispeech
from asr.data.manifest import read_manifest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "librispeech" / "run.sh"
RATE = 16000

# subset -> {utterance id: transcript}
FAKE = {
    "train-clean-5": {"11-100-0000": "HELLO WORLD", "11-100-0001": "it's fine", "22-200-0000": "SECOND SPEAKER"},
    "dev-clean-2": {"33-300-0000": "A DEV LINE", "33-300-0001": "ANOTHER DEV LINE"},
}


def write_split(split_dir: Path, utterances: dict[str, str]) -> None:
    """`utterances` in LibriSpeech layout under `split_dir` (short noise as audio)."""
    rng = np.random.default_rng(len(utterances))
    lines: dict[Path, list[str]] = {}
    for utt, text in utterances.items():
        speaker, chapter, _ = utt.split("-")
        chapter_dir = split_dir / speaker / chapter
        chapter_dir.mkdir(parents=True, exist_ok=True)
        soundfile.write(chapter_dir / f"{utt}.flac", (0.1 * rng.standard_normal(1600)).astype(np.float32), RATE)
        lines.setdefault(chapter_dir / f"{speaker}-{chapter}.trans.txt", []).append(f"{utt} {text}")
    for path, text in lines.items():
        path.write_text("\n".join(text) + "\n")


def tarball(tmp_path: Path, subset: str) -> bytes:
    """A `<subset>.tar.gz` laid out as openslr's: LibriSpeech/<subset>/..."""
    write_split(tmp_path / "src" / subset / "LibriSpeech" / subset, FAKE[subset])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / subset / "LibriSpeech", arcname="LibriSpeech")
    return buffer.getvalue()


def recipe(*args: str) -> subprocess.CompletedProcess:
    """Run the recipe with this interpreter's `asr` first on PATH and no mirror in the environment."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop(librispeech.MIRROR_ENV, None)
    return subprocess.run(["bash", str(RECIPE), *args], capture_output=True, text=True, env=env, timeout=120)


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def all_files(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def mirror(tmp_path, server):
    """The loopback server serving fake train-clean-5 and dev-clean-2 archives; their MD5s."""
    sums = {}
    for subset in FAKE:
        body = tarball(tmp_path, subset)
        server.files[f"/31/{subset}.tar.gz"] = body
        sums[subset] = hashlib.md5(body).hexdigest()
    return server, ",".join(f"{k}={v}" for k, v in sums.items())


def test_download_and_prepare_then_rerun_skips(tmp_path, mirror):
    server, md5 = mirror
    work = tmp_path / "work"
    args = ("--set", "mini", "--stop-stage", "1", "--work-dir", str(work), "--mirror", server.url,
            "--md5", md5, "--nj", "1")
    first = recipe(*args)
    assert first.returncode == 0, first.stderr
    assert "stage 0: download train-clean-5,dev-clean-2" in first.stdout and "stage 2" not in first.stdout
    assert sorted(path for path, _ in server.requests) == ["/31/dev-clean-2.tar.gz", "/31/train-clean-5.tar.gz"]

    manifests = work / "data" / "manifests"
    for subset, utterances in FAKE.items():
        records = read_manifest(manifests / f"{subset}.jsonl")
        assert {r["id"]: r["text"] for r in records} == {u: t.upper() for u, t in utterances.items()}
        assert all(Path(r["audio"]).is_file() and str(work / "data" / "LibriSpeech" / subset) in r["audio"]
                   for r in records)
    combined = read_manifest(manifests / "train-clean-5.combined.jsonl")
    assert combined == read_manifest(manifests / "train-clean-5.jsonl")
    assert sorted(p.name for p in work.iterdir()) == ["data"]  # everything under data/

    before = all_files(work)
    second = recipe(*args)
    assert second.returncode == 0, second.stderr
    assert len(server.requests) == 2  # the downloads' .done markers: nothing fetched again
    assert second.stdout.count("already done") == 3  # two manifests and the combined one
    assert all_files(work) == before


def test_mirror_without_md5_override_fails(tmp_path, mirror):
    server, _ = mirror
    result = recipe("--stop-stage", "0", "--work-dir", str(tmp_path / "w"), "--mirror", server.url)
    assert result.returncode != 0
    assert "MD5 mismatch" in result.stderr and "moved to" in result.stderr


EVAL = ["dev-clean", "dev-other", "test-clean", "test-other"]


@pytest.mark.parametrize("name, train, config", [
    ("mini", ["train-clean-5"], "small"),
    ("100", ["train-clean-100"], "small"),
    ("460", ["train-clean-100", "train-clean-360"], "large"),
    ("960", ["train-clean-100", "train-clean-360", "train-other-500"], "large"),
])
def test_dry_run_of_each_set(tmp_path, name, train, config):
    work = tmp_path / "never-created"
    result = recipe("--set", name, "--dry-run", "--work-dir", str(work))
    assert result.returncode == 0, result.stderr
    assert not work.exists()
    evals = ["dev-clean-2"] if name == "mini" else EVAL
    exp = f"exp/{name}-{config}"
    combined = f"data/manifests/{'+'.join(train)}.combined.jsonl"
    for n in range(8):
        assert f"stage {n}: " in result.stdout
    cmds = commands(result.stdout)
    assert cmds[0] == f"asr download librispeech --data-dir data --subsets {','.join(train + evals)}"
    prepared = [c.split()[3] for c in cmds if c.startswith("asr prepare dir")]
    assert prepared == [f"data/LibriSpeech/{s}" for s in train + evals]
    assert f"asr prepare combine --out {combined} " + " ".join(f"data/manifests/{s}.jsonl" for s in train) in cmds
    [stats] = [c for c in cmds if c.startswith("asr stats")]
    assert stats.endswith(f"conf/{config}.yaml --train {combined} --exp {exp}")
    [train_cmd] = [c for c in cmds if c.startswith("asr train")]
    assert f"conf/{config}.yaml --train {combined} --valid data/manifests/{evals[0]}.jsonl --exp {exp}" in train_cmd
    assert train_cmd.endswith("train.epochs=30") == (name == "mini")
    assert "asr download librispeech-lm --data-dir data --files 3-gram.pruned.1e-7.arpa.gz,librispeech-lexicon.txt" in cmds
    assert f"asr average --exp {exp} --last 5" in cmds

    decodes = [c for c in cmds if c.startswith("asr decode")]
    assert len(decodes) == 3 * len(evals)
    lm = "--lm data/lm/3-gram.pruned.1e-7.arpa.gz --lexicon data/lm/librispeech-lexicon.txt"
    for s in evals:
        head = f"asr decode --exp {exp} --manifest data/manifests/{s}.jsonl --set {s} --decoder"
        assert f"{head} greedy" in decodes and f"{head} beam" in decodes
        tail = ("--tune" if s == evals[0]
                else f"--tuned-from {exp}/decode/{evals[0]}/beam-3-gram.pruned.1e-7-lex-librispeech-lexicon/tuned.json")
        assert f"{head} beam {lm} {tail}" in decodes
    assert cmds[-1].startswith(f"asr results --exp {exp} --out RESULTS.md")


def test_dry_run_own_corpus_train_lm_and_stage_range(tmp_path):
    result = recipe("--dry-run", "--corpus-dir", "/corpora/mine", "--train-sets", "a,b", "--dev-sets", "c",
                    "--test-sets", "d,c", "--lm-source", "train", "--config", "conf/demo.yaml",
                    "--work-dir", str(tmp_path / "w"), "--stop-stage", "6")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert "using the corpus in /corpora/mine" in result.stdout
    assert not any(c.startswith("asr download") for c in cmds)
    assert [c.split()[3] for c in cmds if c.startswith("asr prepare dir")] == [f"/corpora/mine/{s}" for s in "abcd"]
    assert "asr prepare combine --out data/manifests/a+b.combined.jsonl data/manifests/a.jsonl data/manifests/b.jsonl" in cmds
    assert "asr lm build --text data/manifests/a+b.combined.jsonl --order 3 --out exp/mini-demo/lm/train-3gram.arpa" in cmds
    assert [c for c in cmds if "--tuned-from" in c] == [
        "asr decode --exp exp/mini-demo --manifest data/manifests/d.jsonl --set d --decoder beam "
        "--lm exp/mini-demo/lm/train-3gram.arpa --tuned-from exp/mini-demo/decode/c/beam-train-3gram/tuned.json"]
    assert len([c for c in cmds if c.startswith("asr decode")]) == 6  # c once, though listed twice
    assert not any(c.startswith("asr results") for c in cmds) and "train.epochs" not in result.stdout

    only = recipe("--dry-run", "--set", "100", "--stage", "3", "--stop-stage", "3", "--lm-file", "4-gram.arpa.gz",
                  "--mirror", "http://m", "--work-dir", str(tmp_path / "w"))
    assert commands(only.stdout) == [
        "asr download librispeech-lm --data-dir data --files 4-gram.arpa.gz,librispeech-lexicon.txt --mirror http://m"]


@pytest.mark.parametrize("args, message", [
    (["--no-such-option"], "unknown option --no-such-option"),
    (["--set", "42"], "unknown --set 42"),
    (["--lm-source", "web"], "unknown --lm-source web"),
    (["--stage"], "option --stage needs a value"),
])
def test_user_errors_are_one_line(tmp_path, args, message):
    result = recipe("--dry-run", "--work-dir", str(tmp_path / "w"), *args)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert result.stdout == ""


# --- the `asr download` verb and `asr prepare combine`, in process ---------------------------
def test_download_lm_files(tmp_path, server, capsys):
    server.files["/11/3-gram.pruned.1e-7.arpa.gz"] = b"not the real LM"
    server.files["/11/librispeech-lexicon.txt"] = b"A  AH0\n"
    data = tmp_path / "data"
    # Without an override the published sum cannot match the stand-in: moved aside, named.
    assert main(["download", "librispeech-lm", "--data-dir", str(data), "--mirror", server.url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MD5 mismatch" in err and librispeech.LM_FILES["3-gram.pruned.1e-7.arpa.gz"].md5 in err
    assert (data / "lm" / "3-gram.pruned.1e-7.arpa.gz.bad-md5").exists()

    (data / "lm" / "3-gram.pruned.1e-7.arpa.gz.bad-md5").unlink()
    sums = [f"{name}={hashlib.md5(body).hexdigest()}" for name, body in
            (("3-gram.pruned.1e-7.arpa.gz", b"not the real LM"), ("librispeech-lexicon.txt", b"A  AH0\n"))]
    assert main(["download", "librispeech-lm", "--data-dir", str(data), "--mirror", server.url,
                 "--md5", sums[0], "--md5", sums[1]]) == 0
    assert capsys.readouterr().out.split() == [str(data / "lm" / "3-gram.pruned.1e-7.arpa.gz"),
                                               str(data / "lm" / "librispeech-lexicon.txt")]
    assert (data / "lm" / "librispeech-lexicon.txt").read_bytes() == b"A  AH0\n"

    assert main(["download", "librispeech-lm", "--data-dir", str(data), "--files", "5-gram.arpa.gz"]) == 1
    assert "unknown LibriSpeech LM file '5-gram.arpa.gz'" in capsys.readouterr().err
    assert main(["download", "librispeech", "--data-dir", str(data), "--subsets", "dev-clean", "--md5", "dev-clean"]) == 1
    assert "expects NAME=MD5" in capsys.readouterr().err


def test_lm_file_table_and_urls(monkeypatch):
    assert tuple(librispeech.LM_FILES) == _LM_FILE_NAMES  # the CLI's help lists the same files
    assert all(len(f.md5) == 32 and int(f.md5, 16) >= 0 for f in librispeech.LM_FILES.values())
    assert set(librispeech.DEFAULT_LM_FILES) <= set(librispeech.LM_FILES)
    monkeypatch.delenv(librispeech.MIRROR_ENV, raising=False)
    assert librispeech.lm_file_url("4-gram.arpa.gz") == "https://www.openslr.org/resources/11/4-gram.arpa.gz"
    monkeypatch.setenv(librispeech.MIRROR_ENV, "http://m/")
    assert librispeech.lm_file_url("librispeech-lexicon.txt") == "http://m/11/librispeech-lexicon.txt"


def test_prepare_combine(tmp_path, capsys):
    for subset, utterances in FAKE.items():
        write_split(tmp_path / "corpus" / subset, utterances)
        assert main(["prepare", "dir", str(tmp_path / "corpus" / subset), "--out",
                     str(tmp_path / "m" / f"{subset}.jsonl"), "--num-workers", "0"]) == 0
    parts = [str(tmp_path / "m" / f"{subset}.jsonl") for subset in FAKE]
    out = tmp_path / "elsewhere" / "all.jsonl"
    assert main(["prepare", "combine", "--out", str(out), *parts]) == 0
    assert "all: 5 utterances" in capsys.readouterr().out
    assert read_manifest(out) == read_manifest(parts[0]) + read_manifest(parts[1])
    assert not any(os.path.isabs(line.split('"audio": "')[1]) for line in out.read_text().splitlines())

    assert main(["prepare", "combine", "--out", str(tmp_path / "dup.jsonl"), parts[0], parts[0]]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "id '11-100-0000' is also in" in err
    assert not (tmp_path / "dup.jsonl").exists()
