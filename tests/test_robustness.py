"""Faults and bad input, as a hostile but realistic user meets them (issue 14).

Each case runs the command line (in process through `asr.cli.main`, a subprocess only for kill -9)
and checks the exit code, that no traceback is printed, that the message names the file, key or
option at fault, and that nothing already written is lost or half-written. Cases tested elsewhere
are not repeated here: tar members escaping the target (test_librispeech), truncated and corrupt
audio files read directly (test_audio), a corrupt file among good ones in transcribe
(test_transcribe), Ctrl-C and resume in training (test_train).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from asr.cli import build_parser, main
from asr.data import librispeech
from asr.device import resolve_device
from asr.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
TOKENS = ["<blank>", "|", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"]


# --- helpers ---------------------------------------------------------------------------------
def run(capsys, *argv) -> tuple[int, str, str]:
    """`asr ARGV` in this process: (exit code, stdout, stderr); never a traceback."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def one_error_line(err: str, verb: str) -> str:
    """The single `asr VERB: error: ...` line of `err`."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"asr {verb}: error: "), lines[0]
    return lines[0]


def tone(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.2 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes (`.NAME.xxxx.tmp`) anywhere under `folder`."""
    return sorted(str(p) for p in folder.rglob("*.tmp"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained checkpoint in the contract's format."""
    from asr.checkpoint import save_checkpoint
    from asr.features import FeatureConfig
    from asr.model import ModelConfig, build_model

    torch.manual_seed(0)
    features = FeatureConfig(num_mel_bins=23)
    config = ModelConfig(input_dim=features.dim, vocab_size=len(TOKENS), hidden=8, layers=1, conv_channels=4,
                         subsample=2, dropout=0.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {
        "model": build_model(config).state_dict(), "model_config": dataclasses.asdict(config),
        "feature_config": dataclasses.asdict(features), "tokens": TOKENS,
        "cmvn": {"mean": torch.zeros(features.dim), "std": torch.ones(features.dim)},
        "step": 0, "epoch": 0, "valid": None,
    })
    return path


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A small tmpfs at `path` (root only; the test is skipped otherwise), unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              text=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> None:
    """Write `folder/filler` until the file system is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


# --- 1, 2: NaN audio; truncated audio ------------------------------------------------------------
def write_bad_wav(path: Path, kind: str) -> None:
    samples = tone()
    if kind in ("nan", "inf"):
        samples[RATE // 2] = math.nan if kind == "nan" else math.inf
        soundfile.write(path, samples, RATE, subtype="FLOAT")
    else:  # the header announces one second, half of it is there
        soundfile.write(path, samples, RATE, subtype="PCM_16")
        path.write_bytes(path.read_bytes()[: 44 + RATE])


@pytest.mark.parametrize("kind", ["nan", "inf", "truncated"])
def test_transcribe_of_bad_audio_names_the_file_and_exits_1(checkpoint, tmp_path, capsys, kind):
    good, bad, out = tmp_path / "good.wav", tmp_path / "bad.wav", tmp_path / "out"
    soundfile.write(good, tone(), RATE)
    write_bad_wav(bad, kind)
    code, _, err = run(capsys, "transcribe", "--model", checkpoint, "--output-dir", out, good, bad)
    assert code == 1
    assert str(bad) in err and ("NaN or infinite" in err if kind != "truncated" else "truncated" in err)
    assert "1 failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.txt"]  # the good file's result, whole
    assert (out / "good.txt").read_text().endswith("\n")


def test_stats_of_a_training_set_with_a_nan_file_never_writes_nan_statistics(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    records = []
    for i in range(3):
        path = corpus / f"u{i}.wav"
        soundfile.write(path, tone(0.6, seed=i), RATE, subtype="FLOAT")
        records.append({"id": f"u{i}", "audio": path.name, "duration": 0.6, "text": "AB", "speaker": "s"})
    write_bad_wav(corpus / "u1.wav", "nan")
    manifest = corpus / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    exp = tmp_path / "exp"
    code, out, err = run(capsys, "stats", "--train", manifest, "--exp", exp, "features.num_mel_bins=23")
    assert "u1.wav" in out + err  # named, whether refused or left out
    if code == 0:  # left out as a bad utterance: the statistics are those of the good files
        assert torch.isfinite(torch.load(exp / "cmvn.pt", weights_only=True)["mean"]).all()
    else:
        assert code == 1 and "u1.wav" in one_error_line(err, "stats")
        assert not (exp / "cmvn.pt").exists()


# --- 3, 15: a corrupt archive, prepare --download --md5 ------------------------------------------
def subset_tarball(tmp_path: Path, subset: str, utterances: int = 6) -> bytes:
    """A LibriSpeech-layout tarball: LibriSpeech/SUBSET/11/100/*.flac + 11-100.trans.txt."""
    chapter = tmp_path / "src" / "LibriSpeech" / subset / "11" / "100"
    chapter.mkdir(parents=True)
    lines = []
    for i in range(utterances):
        utt = f"11-100-{i:04d}"
        soundfile.write(chapter / f"{utt}.flac", tone(0.5, seed=i), RATE)
        lines.append(f"{utt} HELLO WORLD\n")
    (chapter / "11-100.trans.txt").write_text("".join(lines))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "LibriSpeech", arcname="LibriSpeech")
    return buffer.getvalue()


def test_a_corrupt_archive_leaves_no_partial_subset_and_a_rerun_works(tmp_path, capsys):
    good = subset_tarball(tmp_path, "dev-clean")
    cut = good[: len(good) * 2 // 3]
    data = tmp_path / "data"
    archive = data / "downloads" / "dev-clean.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(cut)  # as a download from a mirror leaves it (the transfer is test_librispeech's)
    (data / "LibriSpeech" / "dev-other").mkdir(parents=True)
    (data / "LibriSpeech" / "dev-other" / "keep.txt").write_text("an earlier subset\n")
    argv = ["prepare", "librispeech", "--data-dir", data, "--subsets", "dev-clean", "--download",
            "--num-workers", "0"]

    # The mirror's MD5 (--md5, item 15) matches the cut file: the download passes, extraction fails.
    code, out, err = run(capsys, *argv, "--md5", f"dev-clean={hashlib.md5(cut).hexdigest()}")
    assert code == 1 and str(archive) in one_error_line(err, "prepare") and "nothing was extracted" in err
    assert sorted(p.name for p in (data / "LibriSpeech").iterdir()) == ["dev-other"]
    assert (data / "LibriSpeech" / "dev-other" / "keep.txt").read_text() == "an earlier subset\n"
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # no staging folder, no marker
    assert not (data / "manifests").exists()

    # As the message says: delete the archive (and its marker), fix the mirror, rerun.
    archive.unlink()
    archive.with_name(archive.name + ".done").unlink()
    archive.write_bytes(good)
    code, out, err = run(capsys, *argv, "--md5", f"dev-clean={hashlib.md5(good).hexdigest()}")
    assert code == 0, err
    assert "dev-clean: 6 utterances" in out
    assert len((data / "manifests" / "dev-clean.jsonl").read_text().splitlines()) == 6
    assert (data / "LibriSpeech" / "dev-other" / "keep.txt").exists()

    # A subset folder whose extraction did not finish (no marker) is refused, not half-prepared.
    (data / ".dev-clean.tar.gz.done").unlink()
    before = (data / "manifests" / "dev-clean.jsonl").read_bytes()
    code, _, err = run(capsys, "prepare", "librispeech", "--data-dir", data, "--subsets", "dev-clean")
    assert code == 1 and ".dev-clean.tar.gz.done" in one_error_line(err, "prepare") and "--download" in err
    assert (data / "manifests" / "dev-clean.jsonl").read_bytes() == before


def test_prepare_md5_must_be_a_sum(tmp_path, capsys):
    code, _, err = run(capsys, "prepare", "librispeech", "--data-dir", tmp_path, "--subsets", "dev-clean",
                       "--download", "--md5", "dev-clean=xyz")
    assert code == 1 and "dev-clean=xyz" in one_error_line(err, "prepare")
    assert list(tmp_path.iterdir()) == []


# --- 4, 7: transcripts with odd characters, with a non-UTF-8 byte ------------------------------
def write_chapter(root: Path, lines: list[bytes]) -> Path:
    chapter = root / "corpus" / "11" / "100"
    chapter.mkdir(parents=True)
    for i in range(len(lines)):
        soundfile.write(chapter / f"11-100-{i:04d}.flac", tone(0.3, seed=i), RATE)
    transcript = chapter / "11-100.trans.txt"
    transcript.write_bytes(b"".join(f"11-100-{i:04d} ".encode() + line + b"\n" for i, line in enumerate(lines)))
    return transcript


def test_prepare_warns_of_digits_and_non_latin_letters(tmp_path, capsys):
    write_chapter(tmp_path, [b"HELLO WORLD", b"ROOM 101", "\u03a9MEGA".encode()])
    out_file = tmp_path / "m.jsonl"
    code, out, err = run(capsys, "prepare", "dir", tmp_path / "corpus", "--out", out_file, "--num-workers", "0")
    assert code == 0, err
    warning = [line for line in out.splitlines() if "warning" in line]
    assert len(warning) == 1 and str(out_file) in warning[0]
    assert "0 1 \u03a9" in warning[0] and "2 transcript(s)" in warning[0]
    assert len(out_file.read_text().splitlines()) == 3  # still written: a warning, not an error


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_non_utf8_transcript_names_file_and_line(tmp_path, capsys, workers):
    transcript = write_chapter(tmp_path, [b"HELLO", b"CAF\xe9 AU LAIT", b"WORLD"])
    out_file = tmp_path / "m.jsonl"
    out_file.write_text("the previous manifest\n")
    code, _, err = run(capsys, "prepare", "dir", tmp_path / "corpus", "--out", out_file, "--num-workers", workers)
    assert code == 1
    line = one_error_line(err, "prepare")
    assert f"{transcript}:2:" in line and "not UTF-8" in line and "0xe9" in line
    assert out_file.read_text() == "the previous manifest\n"


# --- 5: disk full ----------------------------------------------------------------------------
def test_disk_full_while_saving_a_checkpoint(checkpoint, tmp_path, capsys):
    with tmpfs(tmp_path / "small", "512k") as disk:
        folder = disk / "exp" / "checkpoints"
        folder.mkdir(parents=True)
        for step in (1, 2):
            (folder / f"step-{step}.pt").write_bytes(checkpoint.read_bytes())
        (folder / "avg-2.pt").write_bytes(b"an earlier average")
        fill(disk)
        code, _, err = run(capsys, "average", "--exp", disk / "exp", "--last", "2")
        assert code == 1
        line = one_error_line(err, "average")
        assert f"{folder / 'avg-2.pt'}: cannot write: No space left on device" in line
        assert "unexpected pos" not in err and ".tmp" not in err
        assert (folder / "avg-2.pt").read_bytes() == b"an earlier average"
        assert (folder / "step-2.pt").read_bytes() == checkpoint.read_bytes()
        assert leftovers(disk) == []


def test_disk_full_while_writing_text(tmp_path):
    from asr.errors import DataError
    from asr.fileio import atomic_write_text

    with tmpfs(tmp_path / "small", "64k") as disk:
        (disk / "hyp.txt").write_text("kept\n")
        fill(disk)
        with pytest.raises(DataError, match="hyp.txt: cannot write: No space left on device; the previous"):
            atomic_write_text(disk / "hyp.txt", "x" * 200_000)
        assert (disk / "hyp.txt").read_text() == "kept\n" and leftovers(disk) == []


# --- 6: outputs that cannot be written, checked before any work ----------------------------------
def output_cases(blocker: Path, missing: Path) -> dict[str, tuple[list, Path]]:
    """verb -> (argv whose output lies under the file `blocker`, the path the message must name).

    Every other input is `missing`: an error about it would mean the work began before the check."""
    under = blocker / "sub"
    return {
        "transcribe": (["transcribe", "--model", missing, "--output-dir", blocker, REPO / "README.md"], blocker),
        "prepare dir": (["prepare", "dir", missing, "--out", under / "m.jsonl"], under / "m.jsonl"),
        "prepare combine": (["prepare", "combine", missing, "--out", under / "m.jsonl"], under / "m.jsonl"),
        "prepare librispeech": (["prepare", "librispeech", "--data-dir", blocker, "--subsets", "dev-clean"], blocker),
        "train": (["train", "--train", missing, "--valid", missing, "--exp", blocker], blocker),
        "stats": (["stats", "--train", missing, "--exp", blocker], blocker),
        "decode": (["decode", "--exp", blocker, "--manifest", missing], blocker / "decode"),
        "average": (["average", "--exp", blocker], blocker / "checkpoints"),
        "score": (["score", "--ref", missing, "--hyp", missing, "--report", under / "r.txt"], under / "r.txt"),
        "results": (["results", "--exp", missing, "--out", under / "RESULTS.md"], under / "RESULTS.md"),
        "lm": (["lm", "build", "--text", missing, "--out", under / "lm.arpa"], under / "lm.arpa"),
        "download": (["download", "librispeech", "--data-dir", blocker, "--subsets", "dev-clean"], blocker),
        "synth": (["synth", "--out", blocker], blocker),
    }


@pytest.mark.parametrize("case", list(output_cases(Path("f"), Path("m"))))
def test_an_output_under_a_file_is_refused_before_any_work(tmp_path, capsys, case):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    argv, named = output_cases(blocker, tmp_path / "missing")[case]
    code, out, err = run(capsys, *argv)
    line = one_error_line(err, case.split()[0])
    assert code == 1 and str(named) in line and "missing" not in line, line
    assert blocker.read_text() == "not a folder\n"


def test_an_output_folder_that_is_a_file_or_a_folder_where_a_file_goes(tmp_path, capsys, checkpoint):
    blocker = tmp_path / "out.txt"
    blocker.write_text("x\n")
    code, _, err = run(capsys, "transcribe", "--model", checkpoint, "--output-dir", blocker, REPO / "README.md")
    line = one_error_line(err, "transcribe")
    assert code == 1 and line.endswith(f"{blocker}: not a folder (a file of that name exists)")
    code, _, err = run(capsys, "prepare", "dir", tmp_path, "--out", tmp_path)
    assert code == 1 and one_error_line(err, "prepare").endswith(f"{tmp_path}: is a folder, not a file")


def test_a_read_only_output_folder(tmp_path, capsys, checkpoint):
    audio = tmp_path / "a.wav"
    soundfile.write(audio, tone(), RATE)
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as folder:
        code, _, err = run(capsys, "transcribe", "--model", checkpoint, "--output-dir", folder / "out", audio)
        assert code == 1
        assert one_error_line(err, "transcribe").endswith(f"{folder / 'out'}: cannot write in {folder} "
                                                          "(read-only file system)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_an_output_folder_without_write_permission(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, _, err = run(capsys, "train", "--train", "x", "--valid", "x", "--exp", locked / "exp")
        assert code == 1 and "permission denied" in one_error_line(err, "train")
    finally:
        locked.chmod(0o700)


def test_an_os_error_escaping_a_verb_is_one_line(tmp_path, capsys, monkeypatch):
    import asr.score

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ref.txt"))

    monkeypatch.setattr(asr.score, "score_files", refuse)
    code, _, err = run(capsys, "score", "--ref", tmp_path / "ref.txt", "--hyp", tmp_path / "hyp.txt")
    assert code == 1 and one_error_line(err, "score") == f"asr score: error: {tmp_path / 'ref.txt'}: Permission denied"


# --- 8: devices --------------------------------------------------------------------------------
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    default = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto") == default
    for name in ("foo", "cpu:0", "cuda:", "gpu", ""):
        with pytest.raises(ConfigError, match=f"device {name!r}"):
            resolve_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ConfigError, match="GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def device_argv(verb: str, device: str, tmp_path: Path) -> list:
    if verb == "decode":
        return ["decode", "--exp", tmp_path / "exp", "--manifest", tmp_path / "m.jsonl", "--device", device]
    return ["transcribe", "--model", tmp_path / "missing.pt", "--device", device, REPO / "README.md"]


@pytest.mark.parametrize("verb", ["transcribe", "decode"])
@pytest.mark.parametrize("device", ["foo", "cuda"])
def test_a_bad_device_is_one_line_before_the_model_loads(tmp_path, capsys, verb, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run(capsys, *device_argv(verb, device, tmp_path))
    line = one_error_line(err, verb)
    assert code == 1 and f"device {device!r}" in line and "missing.pt" not in line
    assert not (tmp_path / "exp").exists()


# --- 9, 11: files that are not checkpoints; a checkpoint that would run code ----------------------
@pytest.mark.parametrize("content", [b"\x80", b"hello world, a text file\n" * 4, b"", bytes(range(256)) * 8,
                                     b"PK\x03\x04broken zip"], ids=["one-byte", "text", "empty", "binary", "zip"])
def test_a_model_that_is_not_a_checkpoint(tmp_path, capsys, content):
    model = tmp_path / "model.pt"
    model.write_bytes(content)
    code, _, err = run(capsys, "transcribe", "--model", model, REPO / "README.md")
    line = one_error_line(err, "transcribe")
    assert code == 1 and f"{model}: not an asr checkpoint" in line and "weights_only" not in line


class _RunsCode:
    """Unpickling this calls open(path, "w"): proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path, capsys, checkpoint):
    proof = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    payload = torch.load(checkpoint, weights_only=True)
    payload["tokens"] = _RunsCode(proof)
    torch.save(payload, evil)
    audio = tmp_path / "a.wav"
    soundfile.write(audio, tone(), RATE)
    code, out, err = run(capsys, "transcribe", "--model", evil, audio)
    line = one_error_line(err, "transcribe")
    assert code == 1 and f"{evil}: not a safe asr checkpoint" in line and ("io.open" in line or "builtins.open" in line)
    assert "weights_only" not in err and "trusted source" not in err  # never the advice to load it unsafely
    assert out == "" and not proof.exists()


# --- 10: numbers on the command line ---------------------------------------------------------------
def numeric_actions(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from numeric_actions(sub, f"{prefix}{name} ")
        elif action.type in (int, float):
            yield f"{prefix}{'/'.join(action.option_strings)}"


def test_every_numeric_option_is_range_checked():
    assert list(numeric_actions(build_parser())) == []


@pytest.mark.parametrize("argv,option", [
    (["decode", "--exp", "e", "--manifest", "m", "--max-duration", "0"], "--max-duration"),
    (["decode", "--exp", "e", "--manifest", "m", "--max-duration", "nan"], "--max-duration"),
    (["decode", "--exp", "e", "--manifest", "m", "--beam-size", "-3"], "--beam-size"),
    (["decode", "--exp", "e", "--manifest", "m", "--tune-lm-weights", "0.5,inf"], "--tune-lm-weights"),
    (["score", "--ref", "r", "--hyp", "h", "--bootstrap", "0"], "--bootstrap"),
    (["score", "--ref", "r", "--hyp", "h", "--bootstrap", "-10"], "--bootstrap"),
    (["transcribe", "--model", "m", "x.wav", "--max-chunk", "0"], "--max-chunk"),
    (["transcribe", "--model", "m", "x.wav", "--lm-weight", "inf"], "--lm-weight"),
    (["average", "--exp", "e", "--last", "0"], "--last"),
    (["lm", "build", "--text", "t", "--out", "o", "--order", "9"], "--order"),
    (["prepare", "dir", "c", "--out", "o", "--num-workers", "-1"], "--num-workers"),
    (["synth", "--out", "o", "--hours-train", "-1"], "--hours-train"),
    (["synth", "--out", "o", "--text", "t", "--grammar-share", "1.5"], "--grammar-share"),
])
def test_an_out_of_range_number_is_a_usage_error(capsys, argv, option):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"argument {option}" in err.splitlines()[-1] and "expected" in err


# --- 13: a refused connection ----------------------------------------------------------------------
def test_a_refused_connection_does_not_claim_a_part_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(librispeech.time, "sleep", lambda seconds: None)  # the retries, without waiting
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = run(capsys, "download", "librispeech", "--data-dir", tmp_path, "--subsets", "dev-clean-2",
                       "--mirror", f"http://127.0.0.1:{port}")
    line = one_error_line(err, "download")
    assert code == 1 and "dev-clean-2.tar.gz" in line and "cannot connect" in line
    assert "is kept" not in line and "nothing was downloaded" in line
    assert not list((tmp_path / "downloads").glob("*.part"))


# --- kill -9 while training, then resume ----------------------------------------------------------
# The child trains with `os.replace` wrapped: when last.pt is about to be replaced for the Nth time
# (the new checkpoint fully written beside it, not yet renamed) the process SIGKILLs itself, so the
# kill lands at the same, worst, point on every machine, without timing.
KILLED_CHILD = """
import os, signal, sys
kill_at, replaced, real_replace = int(os.environ["ASR_TEST_KILL_AT"]), [], os.replace
def replace(source, target, *args, **kwargs):
    if os.path.basename(target) == "last.pt":
        replaced.append(target)
        if len(replaced) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, target, *args, **kwargs)
os.replace = replace
from asr.cli import main
sys.exit(main(sys.argv[1:]))
"""
TRAIN_OVERRIDES = ["features.num_mel_bins=23", "data.max_duration=2", "train.max_steps=6", "train.epochs=3",
                   "train.checkpoint_every=2", "model.dropout=0.2"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> dict[str, Path]:
    """12 + 3 utterances of tones, 0.5-0.7 s, transcripts from a 3-letter alphabet."""
    root = tmp_path_factory.mktemp("tiny-corpus")
    words = ["AB", "BA", "CAB", "A"]
    manifests = {}
    for name, count in (("train", 12), ("valid", 3)):
        records = []
        for i in range(count):
            path = root / f"{name}-{i}.flac"
            soundfile.write(path, tone(0.5 + 0.05 * (i % 5), seed=i), RATE)
            records.append({"id": f"{name}-{i}", "audio": path.name, "duration": round(0.5 + 0.05 * (i % 5), 4),
                            "text": " ".join(words[(i + j) % 4] for j in range(1 + i % 2)), "speaker": "s"})
        manifests[name] = root / f"{name}.jsonl"
        manifests[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return manifests


def train_argv(corpus: dict[str, Path], exp: Path) -> list[str]:
    return ["train", "--config", str(REPO / "conf" / "tiny.yaml"), "--train", str(corpus["train"]),
            "--valid", str(corpus["valid"]), "--exp", str(exp), *TRAIN_OVERRIDES]


def test_kill_9_while_saving_then_resume_gives_the_uninterrupted_weights(tiny_corpus, tmp_path, capsys):
    from asr.checkpoint import load_checkpoint

    straight = tmp_path / "straight"
    assert main(train_argv(tiny_corpus, straight)) == 0
    reference = load_checkpoint(straight / "checkpoints" / "last.pt")
    assert reference["step"] == 6

    exp = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", ASR_TEST_KILL_AT="2")
    child = subprocess.run([sys.executable, "-c", KILLED_CHILD, *train_argv(tiny_corpus, exp)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    # What was already written survived whole: last.pt is the first checkpoint, and loads.
    interrupted = load_checkpoint(exp / "checkpoints" / "last.pt")
    assert interrupted["step"] == 2  # checkpoint_every=2: killed while swapping in the step-4 one

    capsys.readouterr()
    assert main(train_argv(tiny_corpus, exp)) == 0  # the same command resumes (the lock died with the process)
    assert "Traceback" not in capsys.readouterr().err
    resumed = load_checkpoint(exp / "checkpoints" / "last.pt")
    assert resumed["step"] == 6
    assert resumed["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key
        assert resumed["model"][key].numpy().tobytes() == value.numpy().tobytes(), key


def test_disk_full_while_training_is_one_line_naming_the_checkpoint(tiny_corpus, tmp_path, capsys):
    with tmpfs(tmp_path / "small", "200k") as disk:  # the config, tokens, CMVN and logs fit; a checkpoint does not
        exp = disk / "exp"
        code, _, err = run(capsys, *train_argv(tiny_corpus, exp))
        assert code == 1
        last = err.strip().splitlines()[-1]
        assert last == f"asr train: error: {exp / 'checkpoints' / 'step-2.pt'}: cannot write: No space left on device"
        assert "unexpected pos" not in err and leftovers(disk) == []
        assert (exp / "tokens.txt").read_text() and (exp / "config.yaml").read_text()  # earlier files whole
