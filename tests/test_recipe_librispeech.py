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


def recipe(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run the recipe with this interpreter's `asr` first on PATH and no mirror in the environment."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1")
    env.pop(librispeech.MIRROR_ENV, None)
    return subprocess.run(["bash", str(RECIPE), *args], capture_output=True, text=True, env=env, timeout=timeout)


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
    assert ("asr download librispeech-lm --data-dir data --files "
            "3-gram.pruned.1e-7.arpa.gz,4-gram.arpa.gz,librispeech-lexicon.txt") in cmds
    assert f"asr average --exp {exp} --last 5" in cmds

    decodes = [c for c in cmds if c.startswith("asr decode")]
    assert len(decodes) == 4 * len(evals)
    lm = "--lm data/lm/3-gram.pruned.1e-7.arpa.gz --lexicon data/lm/librispeech-lexicon.txt"
    final_lm = "--lm data/lm/4-gram.arpa.gz --lexicon data/lm/librispeech-lexicon.txt"
    tuned = f"--tuned-from {exp}/decode/{evals[0]}/beam-3-gram.pruned.1e-7-lex-librispeech-lexicon/tuned.json"
    for s in evals:
        head = f"asr decode --exp {exp} --manifest data/manifests/{s}.jsonl --set {s} --decoder"
        assert f"{head} greedy" in decodes and f"{head} beam" in decodes
        assert f"{head} beam {lm} {'--tune' if s == evals[0] else tuned}" in decodes
        assert f"{head} beam {final_lm} {tuned}" in decodes  # the official 4-gram, weights tuned with the 3-gram
    assert cmds[-1].startswith(f"asr results --exp {exp} --out RESULTS.md")


def test_dry_run_own_corpus_train_lm_and_stage_range(tmp_path):
    mine = tmp_path / "corpora" / "mine"
    for split in "abcd":
        (mine / split).mkdir(parents=True)
    result = recipe("--dry-run", "--corpus-dir", str(mine), "--train-sets", "a,b", "--dev-sets", "c",
                    "--test-sets", "d,c", "--lm-source", "train", "--config", "conf/demo.yaml", "--avg", "3",
                    "--work-dir", str(tmp_path / "w"), "--stop-stage", "6")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert f"using the corpus in {mine}" in result.stdout
    assert not any(c.startswith("asr download") for c in cmds)
    assert [c.split()[3] for c in cmds if c.startswith("asr prepare dir")] == [f"{mine}/{s}" for s in "abcd"]
    assert ("asr prepare combine --out data/manifests/a+b.combined.jsonl data/manifests/a.jsonl "
            "data/manifests/b.jsonl") in cmds
    assert ("asr lm build --text data/manifests/a+b.combined.jsonl --order 3 --out "
            "exp/mini-demo/lm/train-3gram.arpa") in cmds
    assert [c for c in cmds if "--tuned-from" in c] == [
        "asr decode --exp exp/mini-demo --manifest data/manifests/d.jsonl --set d --decoder beam "
        "--lm exp/mini-demo/lm/train-3gram.arpa --tuned-from exp/mini-demo/decode/c/beam-train-3gram/tuned.json"]
    assert len([c for c in cmds if c.startswith("asr decode")]) == 6  # c once, though listed twice
    assert not any(c.startswith("asr results") for c in cmds) and "train.epochs" not in result.stdout
    # with test-time VTLN every decode warps, and the weights tuned with it are read from where they go
    vtln = recipe("--dry-run", "--corpus-dir", str(mine), "--train-sets", "a,b", "--dev-sets", "c",
                  "--test-sets", "d", "--lm-source", "train", "--config", "conf/demo.yaml", "--avg", "3",
                  "--work-dir", str(tmp_path / "w"), "--stop-stage", "6", "--decode-args", "--vtln")
    assert vtln.returncode == 0, vtln.stderr
    decodes = [c for c in commands(vtln.stdout) if c.startswith("asr decode")]
    assert len(decodes) == 6 and all(c.endswith(" --vtln") for c in decodes)
    assert [c.split("--tuned-from ")[1].split()[0] for c in decodes if "--tuned-from" in c] == [
        "exp/mini-demo/decode/c/beam-train-3gram-vtln/tuned.json"]

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


# --- training on several processes: torchrun ------------------------------------------------
TORCHRUN = "torchrun --standalone --nproc_per_node 8 -m asr.cli train --config "


def test_dry_run_960_on_8_gpus_is_one_torchrun_of_8_processes(tmp_path):
    result = recipe("--set", "960", "--ngpu", "8", "--dry-run", "--work-dir", str(tmp_path / "w"))
    assert result.returncode == 0, result.stderr
    [train_cmd] = [c for c in commands(result.stdout) if " asr.cli train " in c or c.startswith("asr train")]
    assert train_cmd.startswith(TORCHRUN) and "conf/large.yaml --train data/manifests/" in train_cmd
    assert ("stage 4: train large.yaml on train-clean-100,train-clean-360,train-other-500 (8 process(es))"
            in result.stdout)
    # One process: plain `asr train`, no launcher.
    single = recipe("--set", "960", "--dry-run", "--work-dir", str(tmp_path / "w"))
    assert [c for c in commands(single.stdout) if "train --config" in c][0].startswith("asr train --config")


def _stage4_inputs(work: Path, train: str = "train-clean-5", dev: str = "dev-clean-2") -> None:
    """Empty files where stage 4 looks for its manifests (their existence is what is checked)."""
    (work / "data" / "manifests").mkdir(parents=True)
    for name in (f"{train}.combined.jsonl", f"{dev}.jsonl"):
        (work / "data" / "manifests" / name).touch()


def test_multi_node_flags_pass_through_to_torchrun(tmp_path):
    work = tmp_path / "w"
    _stage4_inputs(work)
    base = ("--dry-run", "--work-dir", str(work), "--stage", "4", "--stop-stage", "4", "--ngpu", "4", "--nnodes", "2")
    static = recipe(*base, "--node-rank", "1", "--master-addr", "node0", "--master-port", "29400")
    assert static.returncode == 0, static.stderr
    [cmd] = commands(static.stdout)
    assert cmd.startswith("torchrun --nnodes 2 --node_rank 1 --nproc_per_node 4 --master_addr node0 "
                          "--master_port 29400 -m asr.cli train --config ")
    rdzv = recipe(*base, "--rdzv-endpoint", "node0:29400")
    [cmd] = commands(rdzv.stdout)
    assert cmd.startswith("torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint node0:29400 "
                          "--rdzv_id mini-small -m asr.cli train --config ")


@pytest.mark.parametrize("args, message", [
    (["--ngpu", "0"], "--ngpu must be a positive integer, got '0'"),
    (["--nnodes", "2", "--stage", "4", "--stop-stage", "4"], "--nnodes 2 needs --master-addr HOST"),
    (["--nnodes", "2", "--master-addr", "n0", "--node-rank", "2", "--stage", "4", "--stop-stage", "4"],
     "--node-rank must be 0..1, got '2'"),
    (["--nnodes", "2", "--master-addr", "n0"], "run --stage 4 --stop-stage 4 on every node"),
])
def test_launcher_errors_are_one_line(tmp_path, args, message):
    result = recipe("--dry-run", "--work-dir", str(tmp_path / "w"), *args)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


# --- options checked before anything runs -----------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--config", "conf/demo.yaml"],
     "--avg 5 needs 5 step checkpoints but demo.yaml keeps train.keep_last=3: pass --avg 3 or train.keep_last=5"),
    (["--config", "conf/no-such.yaml"], "conf/no-such.yaml: config file not found"),
    (["--train-args", "train.keep_lats=9"], "override 'train.keep_lats=9'"),
    (["--train-args", "train.keep_last=2"], "but small.yaml keeps train.keep_last=2"),
    (["--stage", "4"], "stage 4 needs data/manifests/train-clean-5.combined.jsonl, made by stage 1: run stage 1 "
                       "first (--stage 1)"),
    (["--stage", "2", "--stop-stage", "2"], "stage 2 needs data/manifests/train-clean-5.combined.jsonl, made by "
                                            "stage 1"),
    (["--stage", "6", "--stop-stage", "6"], "stage 6 needs data/manifests/dev-clean-2.jsonl, made by stage 1"),
    (["--stage", "1", "--corpus-dir", "/no/such/corpus"],
     "stage 1 needs /no/such/corpus/train-clean-5, which does not exist"),
])
def test_options_and_inputs_are_checked_before_anything_runs(tmp_path, args, message):
    work = tmp_path / "w"
    work.mkdir()
    result = recipe("--work-dir", str(work), *args)  # not a dry run: it would train if the checks passed
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stdout == "" and list(work.iterdir()) == []  # nothing ran, nothing written


def test_checks_pass_when_the_inputs_exist_or_an_earlier_stage_makes_them(tmp_path):
    work = tmp_path / "w"
    _stage4_inputs(work)
    assert recipe("--dry-run", "--work-dir", str(work), "--stage", "4", "--stop-stage", "5").returncode == 0
    # Stage 6 needs the LM and lexicon of stage 3: refused without them, fine when stage 3 runs first.
    (work / "data" / "manifests" / "dev-clean-2.jsonl").touch()
    refused = recipe("--dry-run", "--work-dir", str(work), "--stage", "6", "--stop-stage", "6")
    assert refused.returncode == 1
    assert "stage 6 needs data/lm/3-gram.pruned.1e-7.arpa.gz, made by stage 3" in refused.stderr
    assert recipe("--dry-run", "--work-dir", str(work), "--stage", "3", "--stop-stage", "6").returncode == 0
    # An --avg that the config keeps enough checkpoints for.
    demo = recipe("--dry-run", "--work-dir", str(work), "--config", "conf/demo.yaml", "--avg", "3")
    assert demo.returncode == 0, demo.stderr


def _long_split(split_dir: Path, utterances: dict[str, str], seconds: float) -> None:
    """Like write_split, with `seconds` of noise per utterance (conf/tiny.yaml keeps >= 0.3 s)."""
    rng = np.random.default_rng(len(utterances))
    for utt, text in utterances.items():
        speaker, chapter, _ = utt.split("-")
        chapter_dir = split_dir / speaker / chapter
        chapter_dir.mkdir(parents=True, exist_ok=True)
        noise = 0.1 * rng.standard_normal(int(seconds * RATE))
        soundfile.write(chapter_dir / f"{utt}.flac", noise.astype(np.float32), RATE)
        with open(chapter_dir / f"{speaker}-{chapter}.trans.txt", "a") as f:
            f.write(f"{utt} {text}\n")


def test_train_stage_on_two_cpu_processes(tmp_path):
    """--ngpu 2 with train.device=cpu: stage 4 is torchrun with 2 gloo processes on the tiny config."""
    corpus = tmp_path / "corpus"
    train = {f"11-100-{i:04d}": ["HELLO WORLD", "A B", "IT IS FINE", "AB BA"][i % 4] for i in range(8)}
    _long_split(corpus / "train-clean-5", train, 1.0)
    _long_split(corpus / "dev-clean-2", {"33-300-0000": "A DEV LINE", "33-300-0001": "AB"}, 1.0)
    work = tmp_path / "w"
    common = ("--corpus-dir", str(corpus), "--work-dir", str(work), "--config", "conf/tiny.yaml", "--avg", "3",
              "--lm-source", "train", "--nj", "1")
    assert recipe(*common, "--stop-stage", "2").returncode == 0
    result = recipe(*common, "--stage", "4", "--stop-stage", "4", "--ngpu", "2",
                    "--train-args", "train.device=cpu data.max_duration=2 train.debug_rank_files=true", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [cmd] = commands(result.stdout)
    assert cmd.startswith("torchrun --standalone --nproc_per_node 2 -m asr.cli train --config ")
    exp = work / "exp" / "mini-tiny"
    assert (exp / "checkpoints" / "last.pt").is_file() and (exp / ".train.done").is_file()
    assert "2 process(es)" in (exp / "log" / "train.log").read_text()
    ranks = [(exp / "log" / "debug" / f"rank{r}.batches.txt").read_text().split() for r in (0, 1)]
    assert ranks[0] and ranks[1]  # both processes trained


# --- the `asr download` verb and `asr prepare combine`, in process ---------------------------
def test_download_lm_files(tmp_path, server, capsys):
    server.files["/11/3-gram.pruned.1e-7.arpa.gz"] = b"not the real LM"
    server.files["/11/librispeech-lexicon.txt"] = b"A  AH0\n"
    data = tmp_path / "data"
    # Without an override the published sum cannot match the stand-in: moved aside, named.
    assert main(["download", "librispeech-lm", "--data-dir", str(data), "--mirror", server.url]) == 1
    err = capsys.readouterr().err
    published = librispeech.LM_FILES["3-gram.pruned.1e-7.arpa.gz"].md5
    assert err.count("\n") == 1 and "MD5 mismatch" in err and published in err
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
    assert main(["download", "librispeech", "--data-dir", str(data), "--subsets", "dev-clean",
                 "--md5", "dev-clean"]) == 1
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
