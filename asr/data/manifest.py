"""Manifests: JSON Lines, one utterance per line.

Each line is a JSON object with at least

    {"id": "1089-134686-0000", "audio": "LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac",
     "duration": 10.435, "text": "HE HOPED THERE WOULD BE STEW FOR DINNER", "speaker": "1089"}

`audio` is absolute or relative to the manifest's folder; `duration` is in seconds; `text` is
normalised (see `asr.text.normalize_text`). Extra keys are kept as they are.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from asr.errors import DataError
from asr.fileio import atomic_open

REQUIRED_KEYS = ("id", "audio", "duration", "text", "speaker")


def _check_record(record: Any) -> str | None:
    """Why `record` is not a valid manifest record, or None when it is.

    `speaker` may be written as an integer; it is turned into a string in place.
    """
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    for key in ("id", "audio", "text"):
        if not isinstance(record[key], str):
            return f"key {key!r} must be a string, got {type(record[key]).__name__}"
    if not record["id"]:
        return "key 'id' is empty"
    if not record["audio"]:
        return "key 'audio' is empty"
    speaker = record["speaker"]
    if isinstance(speaker, int) and not isinstance(speaker, bool):
        record["speaker"] = str(speaker)
    elif not isinstance(speaker, str):
        return f"key 'speaker' must be a string, got {type(speaker).__name__}"
    duration = record["duration"]
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        return f"key 'duration' must be a number of seconds, got {type(duration).__name__}"
    if not math.isfinite(duration) or duration < 0:
        return f"key 'duration' must be a finite number >= 0, got {duration}"
    return None


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL manifest.

    Returns one dict per non-blank line, in file order, with `audio` made absolute (relative
    paths are resolved against the manifest's folder) and `duration` a float.

    Raises DataError naming the file when it is missing or unreadable, and `file:line` when a
    line is not a JSON object, lacks a required key, has a value of the wrong type, or repeats
    an earlier `id`.
    """
    return list(iter_manifest(path))


def iter_manifest(path: str | os.PathLike) -> Iterator[dict]:
    """The records of `read_manifest`, one at a time (a reader that stores them compactly,
    `asr.data.dataset.Records.read`, never holds them all as dicts); the same checks and errors."""
    path = Path(path)
    base = str(path.parent.absolute())
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_no}: not valid JSON: {e.msg} (column {e.colno})") from None
        problem = _check_record(record)
        if problem:
            raise DataError(f"{path}:{line_no}: {problem}")
        if record["id"] in first_line:
            raise DataError(
                f"{path}:{line_no}: id {record['id']!r} already used on line {first_line[record['id']]}"
            )
        first_line[record["id"]] = line_no
        record["audio"] = os.path.normpath(os.path.join(base, record["audio"]))
        record["duration"] = float(record["duration"])
        yield record


_BLOCK_BYTES = 1 << 20


def _lines(path: Path) -> Iterator[str]:
    """The lines of `path` as `read_text(path, "manifest").split("\\n")` gives them (not
    splitlines(): U+2028 may stand inside a JSON string), read a block of whole lines at a time so
    that a manifest of millions of lines is never held whole; the same errors as `read_text`."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read manifest: {err.strerror or err}") from None
    newlines, rest = 0, b""
    with handle:
        while True:
            try:
                block = handle.read(_BLOCK_BYTES)
            except OSError as err:
                raise DataError(f"{path}: cannot read manifest: {err.strerror or err}") from None
            data = rest + block
            cut = data.rfind(b"\n") + 1 if block else len(data)  # a UTF-8 sequence never holds a 0x0a byte
            data, rest = data[:cut], data[cut:]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                line = newlines + data.count(b"\n", 0, err.start) + 1
                column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
                raise DataError(f"{path}:{line}: manifest is not UTF-8 text (byte 0x{data[err.start]:02x} at byte "
                                f"{column} of the line); re-encode it as UTF-8") from None
            newlines += data.count(b"\n")
            lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            if block:
                yield from lines[:-1]  # the empty string after the block's last newline
            else:
                yield from lines
                return


def write_manifest(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write `records` as a JSONL manifest, atomically.

    Audio paths are written as given (pass paths relative to the manifest's folder to keep a
    corpus relocatable). Raises DataError naming the record number if a record is invalid;
    nothing is written then.
    """
    path = Path(path)
    with atomic_open(path, "w") as f:
        for number, record in enumerate(records, 1):
            if isinstance(record, dict):
                record = dict(record)
                if isinstance(record.get("audio"), os.PathLike):
                    record["audio"] = os.fspath(record["audio"])
            problem = _check_record(record)
            if problem:
                rid = record.get("id", "?") if isinstance(record, dict) else "?"
                raise DataError(f"{path}: record {number} ({rid!r}): {problem}")
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
