"""LibriSpeech download (loopback HTTP server), safe extraction, and manifest preparation."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.cli import main
from asr.data import librispeech
from asr.data.librispeech import download_file, extract_archive, prepare_corpus, prepare_librispeech
from asr.data.manifest import read_manifest
from asr.errors import DataError

RATE = 16000

# id -> (raw transcript text, expected normalised text, number of samples, extension)
UTTERANCES = {
    "11-100-0000": ("HELLO WORLD", "HELLO WORLD", 3200, "flac"),
    "11-100-0001": ("It's a well-known fact, isn't it?", "IT'S A WELL KNOWN FACT ISN'T IT", 4000, "flac"),
    "11-200-0000": ("SECOND CHAPTER", "SECOND CHAPTER", 2400, "wav"),
    "22-300-0000": ("ANOTHER  SPEAKER ", "ANOTHER SPEAKER", 4800, "flac"),
    "22-300-0001": ("short", "SHORT", 1601, "flac"),
}


def write_corpus(subset_dir: Path, utterances=UTTERANCES, orphan_line=None, orphan_audio=None) -> None:
    """A LibriSpeech-layout folder; `orphan_line`/`orphan_audio`: an id with only a transcript
    line / only an audio file."""
    rng = np.random.default_rng(0)
    lines: dict[Path, list[str]] = {}
    for utt, (raw, _, samples, ext) in utterances.items():
        speaker, chapter, _ = utt.split("-")
        chapter_dir = subset_dir / speaker / chapter
        chapter_dir.mkdir(parents=True, exist_ok=True)
        audio = (0.1 * rng.standard_normal(samples)).astype(np.float32)
        soundfile.write(chapter_dir / f"{utt}.{ext}", audio, RATE, subtype="PCM_16")
        lines.setdefault(chapter_dir / f"{speaker}-{chapter}.trans.txt", []).append(f"{utt} {raw}")
    if orphan_line:
        speaker, chapter, _ = orphan_line.split("-")
        lines[subset_dir / speaker / chapter / f"{speaker}-{chapter}.trans.txt"].append(f"{orphan_line} NO AUDIO HERE")
    if orphan_audio:
        speaker, chapter, _ = orphan_audio.split("-")
        soundfile.write(subset_dir / speaker / chapter / f"{orphan_audio}.flac", np.zeros(800, np.float32), RATE)
    for path, text in lines.items():
        path.write_text("\n".join(text) + "\n", encoding="utf-8")


def check_manifest(manifest: Path, utterances=UTTERANCES) -> None:
    """The manifest holds exactly `utterances`, with durations from the sample counts."""
    records = read_manifest(manifest)
    assert [r["id"] for r in records] == sorted(utterances)
    for record in records:
        _, text, samples, ext = utterances[record["id"]]
        assert record["text"] == text
        assert abs(record["duration"] - samples / RATE) < 0.010
        assert record["speaker"] == record["id"].split("-")[0]
        assert record["audio"].endswith(f"{record['id']}.{ext}") and os.path.isfile(record["audio"])
    for line in manifest.read_text().splitlines():  # paths are stored relative to the manifest
        assert not os.path.isabs(json.loads(line)["audio"])


def make_tarball(tmp_path: Path, subset: str) -> bytes:
    corpus = tmp_path / "src"
    write_corpus(corpus / "LibriSpeech" / subset)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(corpus / "LibriSpeech", arcname="LibriSpeech")
    return buffer.getvalue()


def test_download_extract_prepare(tmp_path, server, monkeypatch, capsys):
    tarball = make_tarball(tmp_path, "dev-clean")
    server.files["/12/dev-clean.tar.gz"] = tarball
    md5 = hashlib.md5(tarball).hexdigest()
    official = librispeech.SUBSETS["dev-clean"]
    monkeypatch.setitem(librispeech.SUBSETS, "dev-clean", dataclasses.replace(official, md5=md5))
    data = tmp_path / "data"
    monkeypatch.setenv(librispeech.MIRROR_ENV, server.url)  # the mirror comes from the environment here

    assert main(["prepare", "librispeech", "--data-dir", str(data), "--subsets", "dev-clean",
                 "--download", "--num-workers", "2"]) == 0
    assert "dev-clean: 5 utterances" in capsys.readouterr().out
    assert (data / "downloads" / "dev-clean.tar.gz").read_bytes() == tarball
    assert (data / "downloads" / "dev-clean.tar.gz.done").exists()
    assert (data / "LibriSpeech" / "dev-clean" / "11" / "100").is_dir()
    check_manifest(data / "manifests" / "dev-clean.jsonl")
    assert not (data / "manifests" / "dev-clean.jsonl.problems.txt").exists()

    # A rerun finds the .done markers: no request, no re-extraction.
    requests = len(server.requests)
    (data / "LibriSpeech" / "dev-clean" / "11" / "100" / "11-100.trans.txt").touch()
    [summary] = prepare_librispeech(data, ["dev-clean"], download=True, num_workers=0,
                                    manifest_dir=tmp_path / "m2")
    assert len(server.requests) == requests
    assert (summary.utterances, summary.speakers) == (5, 2)
    assert summary.hours == pytest.approx(sum(u[2] for u in UTTERANCES.values()) / RATE / 3600, abs=1e-6)
    check_manifest(tmp_path / "m2" / "dev-clean.jsonl")


def test_resume_after_cut_connection(tmp_path, server):
    body = os.urandom(3 * 2**20 + 123)
    server.files["/f.bin"] = body
    server.cut["/f.bin"] = 2**20 + 7
    dest = tmp_path / "f.bin"
    download_file(f"{server.url}/f.bin", dest, md5=hashlib.md5(body).hexdigest(), retry_wait=0)
    assert dest.read_bytes() == body
    assert server.requests == [("/f.bin", None), ("/f.bin", f"bytes={2**20 + 7}-")]
    assert not dest.with_name("f.bin.part").exists()


def test_resume_existing_part_file(tmp_path, server):
    body = os.urandom(50_000)
    server.files["/f.bin"] = body
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(body[:12_345])
    download_file(f"{server.url}/f.bin", dest, md5=hashlib.md5(body).hexdigest())
    assert dest.read_bytes() == body
    assert server.requests == [("/f.bin", "bytes=12345-")]
    # Interrupted for good: the .part is kept and the error says so.
    server.cut["/g.bin"] = 100
    server.files["/g.bin"] = body
    with pytest.raises(DataError, match=r"g\.bin\.part is kept \(100 bytes\), rerun to resume"):
        download_file(f"{server.url}/g.bin", tmp_path / "g.bin", retries=0)
    assert (tmp_path / "g.bin.part").read_bytes() == body[:100]


def test_wrong_md5_moves_file_aside(tmp_path, server):
    tarball = make_tarball(tmp_path, "dev-clean-2")
    server.files["/31/dev-clean-2.tar.gz"] = tarball
    data = tmp_path / "data"
    # The official sum of the real dev-clean-2 cannot match the test's tarball.
    with pytest.raises(DataError) as err:
        prepare_librispeech(data, ["dev-clean-2"], download=True, mirror=server.url)
    message = str(err.value)
    assert "MD5 mismatch" in message and "6d7ab67ac6a1d2c993d050e16d61080d" in message
    assert hashlib.md5(tarball).hexdigest() in message and "/31/dev-clean-2.tar.gz" in message
    downloads = data / "downloads"
    assert (downloads / "dev-clean-2.tar.gz.bad-md5").read_bytes() == tarball
    assert sorted(p.name for p in downloads.iterdir()) == ["dev-clean-2.tar.gz.bad-md5"]
    assert not (data / "LibriSpeech").exists()


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("LibriSpeech/README.TXT")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        if member.isfile():
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
        else:
            tar.addfile(member)
    return path


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("member", [
    tarfile.TarInfo("LibriSpeech/../../escaped.txt"),
    tarfile.TarInfo("/tmp/absolute-escape.txt"),
    _link("LibriSpeech/link", "../../outside"),
    _link("LibriSpeech/abs-link", "/etc/passwd"),
    _link("LibriSpeech/hard", "../outside", kind=tarfile.LNKTYPE),
], ids=["dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink-out"])
def test_extract_refuses_escaping_members(tmp_path, member):
    name = member.name
    archive = _tar_with(tmp_path, member)
    dest = tmp_path / "out" / "inner"
    with pytest.raises(DataError, match="refusing tar member") as err:
        extract_archive(archive, dest)
    assert repr(name) in str(err.value)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "escaped.txt").exists()
    assert not (dest / f".{archive.name}.done").exists()


def test_extract_refuses_writing_through_extracted_symlink(tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(_link("LibriSpeech/up", ".."))  # dest itself: allowed
        # Lexically dest/LibriSpeech, but through the extracted link it is dest/.., outside.
        tar.addfile(_link("LibriSpeech/l2", "up/.."))
        escaped = tarfile.TarInfo("LibriSpeech/l2/escaped.txt")
        escaped.size = 1
        tar.addfile(escaped, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="refusing tar member 'LibriSpeech/l2'"):
        extract_archive(path, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []  # the link extracted before the refusal is gone too
    assert not (tmp_path / "escaped.txt").exists()


def test_prepare_corpus_reports_problems(tmp_path):
    subset = tmp_path / "corpus" / "my-set"
    write_corpus(subset, orphan_line="11-100-0009", orphan_audio="22-300-0042")
    (subset / "22" / "300" / "notes.md").write_text("not audio\n")
    manifest = tmp_path / "manifests" / "my-set.jsonl"
    summary = prepare_corpus(subset, manifest, num_workers=2)
    check_manifest(manifest)
    assert (summary.utterances, summary.speakers) == (5, 2)
    assert (summary.missing_audio, summary.missing_transcript, summary.other_problems) == (1, 1, 0)
    problems = summary.problems_file.read_text().splitlines()
    assert summary.problems_file == tmp_path / "manifests" / "my-set.jsonl.problems.txt"
    assert problems[1].startswith("missing-audio\t11-100-0009\t") and problems[1].endswith("11-100.trans.txt:3")
    assert problems[2].startswith("missing-transcript\t22-300-0042\t")
    assert "1 transcript lines without audio, 1 audio files without transcript" in summary.format()

    # The in-process path writes the same manifest; a clean corpus removes the stale problems file.
    serial = tmp_path / "serial.jsonl"
    prepare_corpus(subset, serial, num_workers=0)
    assert [r | {"audio": 0} for r in read_manifest(serial)] == [r | {"audio": 0} for r in read_manifest(manifest)]
    (subset / "11" / "100" / "11-100.trans.txt").write_text(
        "".join(f"{u} {UTTERANCES[u][0]}\n" for u in ("11-100-0000", "11-100-0001")))
    (subset / "22" / "300" / "22-300-0042.flac").unlink()
    assert prepare_corpus(subset, manifest, num_workers=0).problems_file is None
    assert not summary.problems_file.exists()


def test_prepare_corpus_unreadable_audio_and_empty_folder(tmp_path):
    subset = tmp_path / "s"
    write_corpus(subset)
    (subset / "22" / "300" / "22-300-0001.flac").write_bytes(b"not a flac file at all")
    summary = prepare_corpus(subset, tmp_path / "m.jsonl", num_workers=0)
    assert summary.utterances == 4 and summary.other_problems == 1
    assert "unreadable-audio\t22-300-0001" in summary.problems_file.read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no <speaker>/<chapter>/ folders"):
        prepare_corpus(tmp_path / "empty", tmp_path / "e.jsonl")


def test_cli_prepare_dir_and_errors(tmp_path, capsys):
    subset = tmp_path / "corpus"
    write_corpus(subset)
    out = tmp_path / "out" / "corpus.jsonl"
    assert main(["prepare", "dir", str(subset), "--out", str(out), "--num-workers", "1"]) == 0
    assert "corpus: 5 utterances" in capsys.readouterr().out
    check_manifest(out)

    assert main(["prepare", "dir", str(tmp_path / "missing"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corpus folder not found" in err and "missing" in err

    assert main(["prepare", "librispeech", "--data-dir", str(tmp_path), "--subsets", "dev-clean"]) == 1
    assert "pass --download" in capsys.readouterr().err
    assert main(["prepare", "librispeech", "--data-dir", str(tmp_path), "--subsets", "dev-cleen", "--download"]) == 1
    assert "unknown LibriSpeech subset 'dev-cleen'" in capsys.readouterr().err

    for verb in ("librispeech", "dir"):
        with pytest.raises(SystemExit) as exit_:
            main(["prepare", verb, "--help"])
        assert exit_.value.code == 0
        assert "--num-workers" in capsys.readouterr().out


def test_subset_table_and_urls(monkeypatch):
    assert len(librispeech.SUBSETS) == 9
    assert all(len(s.md5) == 32 and int(s.md5, 16) >= 0 for s in librispeech.SUBSETS.values())
    monkeypatch.delenv(librispeech.MIRROR_ENV, raising=False)
    assert librispeech.subset_url("train-clean-100") == "https://www.openslr.org/resources/12/train-clean-100.tar.gz"
    assert librispeech.subset_url("train-clean-5") == "https://www.openslr.org/resources/31/train-clean-5.tar.gz"
    assert librispeech.subset_url("test-other", "http://m/x/") == "http://m/x/12/test-other.tar.gz"


def test_extract_starts_afresh_after_a_killed_extraction(tmp_path):
    archive = tmp_path / "dev-clean.tar.gz"
    archive.write_bytes(make_tarball(tmp_path, "dev-clean"))
    dest = tmp_path / "data"
    stale = dest / ".dev-clean.tar.gz.extracting" / "LibriSpeech" / "dev-clean" / "99"
    stale.mkdir(parents=True)  # what a kill -9 during extraction leaves
    (stale / "half.flac").write_bytes(b"half")
    extract_archive(archive, dest)
    assert sorted(p.name for p in dest.iterdir()) == [".dev-clean.tar.gz.done", "LibriSpeech"]
    assert sorted(p.name for p in (dest / "LibriSpeech" / "dev-clean").iterdir()) == ["11", "22"]
    check_manifest(prepare_corpus(dest / "LibriSpeech" / "dev-clean", tmp_path / "m.jsonl", num_workers=0).manifest)
