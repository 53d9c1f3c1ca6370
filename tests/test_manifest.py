import json
import os

import pytest

from asr.data.manifest import read_manifest, write_manifest
from asr.errors import DataError


def _record(i, audio):
    return {"id": f"utt{i}", "audio": audio, "duration": 1.5 + i, "text": f"WORD {i}", "speaker": "spk"}


def test_round_trip_and_relative_paths(tmp_path):
    manifest = tmp_path / "sub" / "m.jsonl"
    absolute = str(tmp_path / "abs.flac")
    records = [
        _record(0, "audio/a.flac"),
        _record(1, absolute),
        {**_record(2, "../b.wav"), "extra": [1, 2], "text": "CAF\u00c9"},
    ]
    write_manifest(manifest, records)
    # Written as given: relative paths stay relative, one JSON object per line.
    on_disk = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert on_disk == records
    loaded = read_manifest(manifest)
    assert [r["id"] for r in loaded] == ["utt0", "utt1", "utt2"]
    assert loaded[0]["audio"] == os.path.join(str(tmp_path), "sub", "audio", "a.flac")
    assert loaded[1]["audio"] == absolute
    assert loaded[2]["audio"] == os.path.join(str(tmp_path), "b.wav")
    assert all(os.path.isabs(r["audio"]) for r in loaded)
    assert loaded[2]["extra"] == [1, 2] and loaded[2]["text"] == "CAF\u00c9"
    for got, want in zip(loaded, records):
        assert {k: v for k, v in got.items() if k != "audio"} == {k: v for k, v in want.items() if k != "audio"}


def test_relative_manifest_path_gives_absolute_audio(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_manifest("m.jsonl", [_record(0, "x.flac")])
    assert read_manifest("m.jsonl")[0]["audio"] == os.path.join(str(tmp_path), "x.flac")


def test_blank_lines_and_integer_speaker(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '\n{"id": "a", "audio": "a.flac", "duration": 2, "text": "A", "speaker": 19}\n\n', encoding="utf-8"
    )
    (record,) = read_manifest(path)
    assert record["speaker"] == "19" and record["duration"] == 2.0 and isinstance(record["duration"], float)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"id": "b", "audio": "b.flac", "duration": 1.0, "text": "B"', "not valid JSON"),
        ('["not", "an", "object"]', "JSON object"),
        ('{"id": "b", "audio": "b.flac", "text": "B", "speaker": "s"}', "missing key duration"),
        ('{"id": "b", "audio": "b.flac", "duration": "1.0", "text": "B", "speaker": "s"}', "duration"),
        ('{"id": "b", "audio": "b.flac", "duration": -1, "text": "B", "speaker": "s"}', "duration"),
        ('{"id": "b", "audio": "b.flac", "duration": 1.0, "text": 5, "speaker": "s"}', "'text' must be a string"),
        ('{"id": "a", "audio": "b.flac", "duration": 1.0, "text": "B", "speaker": "s"}', "already used on line 1"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(_record(0, "a.flac") | {"id": "a"})
    path.write_text(f"{good}\n\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_manifest(path)
    assert f"{path}:3" in str(info.value)
    assert message in str(info.value)


def test_missing_manifest(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="nope.jsonl"):
        read_manifest(path)


def test_write_rejects_bad_record_and_keeps_old_file(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [_record(0, "a.flac")])
    before = path.read_text(encoding="utf-8")
    with pytest.raises(DataError, match="record 2"):
        write_manifest(path, [_record(1, "b.flac"), {"id": "x", "audio": "x.flac"}])
    assert path.read_text(encoding="utf-8") == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temporary file left
