"""LibriSpeech: download, safe extraction, and manifests for any corpus in its layout.

Layout (LibriSpeech, Mini LibriSpeech, and the synthetic corpus all follow it)::

    <subset>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac
    <subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt      # "<utt-id> <TEXT>" per line

Downloads come from openslr (resource 12: the full corpus, resource 31: Mini LibriSpeech, resource
11: the official n-gram LMs and lexicon) or a mirror with the same `<base>/<resource>/<file>` layout (argument or the
`ASR_LIBRISPEECH_MIRROR` environment variable). A download resumes a partial `<file>.part` with an
HTTP Range request and is checked against openslr's published MD5; a file that fails the check is
moved aside to `<file>.bad-md5`, never silently deleted. Extraction refuses any member that would
land outside the target folder. `.done` markers let a rerun skip finished downloads/extractions.

Manifests: one JSON object per utterance (`id`, `audio`, `duration` in seconds, `text`
normalised with `asr.text.normalize_text`, `speaker`). Audio paths are written RELATIVE TO THE
MANIFEST'S FOLDER, so a `data/` folder can be moved as a whole; `read_manifest` resolves them.
Transcript lines without audio and audio without a transcript are counted in the summary and
listed in `<manifest>.problems.txt`.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import http.client
import os
import posixpath
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from asr.data.manifest import write_manifest
from asr.errors import AudioError, DataError
from asr.fileio import atomic_write_text, read_text
from asr.text import normalize_text

OPENSLR_BASE_URL = "https://www.openslr.org/resources"
MIRROR_ENV = "ASR_LIBRISPEECH_MIRROR"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class SubsetInfo:
    """One downloadable LibriSpeech subset."""

    name: str  # subset name, also the archive stem and the folder inside LibriSpeech/
    resource: int  # openslr resource number: 12 (LibriSpeech) or 31 (Mini LibriSpeech)
    md5: str  # MD5 of <name>.tar.gz as published in openslr's md5sum.txt


# MD5 sums as published by openslr (resources/12/md5sum.txt and resources/31/md5sum.txt).
SUBSETS: dict[str, SubsetInfo] = {
    info.name: info
    for info in (
        SubsetInfo("dev-clean", 12, "42e2234ba48799c1f50f24a7926300a1"),
        SubsetInfo("dev-other", 12, "c8d0bcc9cca99d4f8b62fcc847357931"),
        SubsetInfo("test-clean", 12, "32fa31d27d2e1cad72775fee3f4849a9"),
        SubsetInfo("test-other", 12, "fb5a50374b501bb3bac4815ee91d3135"),
        SubsetInfo("train-clean-100", 12, "2a93770f6d5c6c964bc36631d331a522"),
        SubsetInfo("train-clean-360", 12, "c0e676e450a7ff2f54aeade5171606fa"),
        SubsetInfo("train-other-500", 12, "d1a0fd59409feb2c614ce4d30c387708"),
        SubsetInfo("dev-clean-2", 31, "6d7ab67ac6a1d2c993d050e16d61080d"),
        SubsetInfo("train-clean-5", 31, "5df7d4e78065366204ca6845bb08f490"),
    )
}


# --- download --------------------------------------------------------------------------------
def subset_info(subset: str) -> SubsetInfo:
    """The `SubsetInfo` of a subset name; DataError listing the known names otherwise."""
    try:
        return SUBSETS[subset]
    except KeyError:
        raise DataError(f"unknown LibriSpeech subset {subset!r}; known: {', '.join(SUBSETS)}") from None


def subset_url(subset: str, mirror: str | None = None) -> str:
    """URL of `<subset>.tar.gz`: `<base>/<resource>/<subset>.tar.gz`.

    The base is `mirror`, else `$ASR_LIBRISPEECH_MIRROR`, else https://www.openslr.org/resources.
    """
    info = subset_info(subset)
    base = (mirror or os.environ.get(MIRROR_ENV) or OPENSLR_BASE_URL).rstrip("/")
    return f"{base}/{info.resource}/{info.name}.tar.gz"


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _done_marker(path: Path) -> Path:
    return path.with_name(path.name + ".done")


def _check_md5(path: Path, expected: str, actual: str, url: str) -> None:
    """Move a file with the wrong MD5 aside to `<name>.bad-md5` and raise."""
    if actual == expected.lower():
        return
    bad = path.with_name(path.name.removesuffix(".part") + ".bad-md5")
    os.replace(path, bad)
    raise DataError(
        f"{url}: MD5 mismatch (expected {expected}, got {actual}); the file was moved to {bad}. "
        "Delete it and rerun to download again, or check the mirror."
    )


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    retries: int = 3,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part`, and check its MD5.

    Skips the work when `<dest>.done` exists. A file already at `dest` without a marker is
    checked and kept if its MD5 matches. An interrupted transfer is resumed with an HTTP Range
    request, up to `retries` times within this call (waiting `retry_wait * attempt` seconds), and
    the `.part` file is kept for a later run. A wrong MD5 moves the file to `<dest>.bad-md5` and
    raises `DataError`. Returns `dest`.
    """
    dest = Path(dest)
    marker = _done_marker(dest)
    if dest.exists() and marker.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if md5 is not None:
            _check_md5(dest, md5, file_md5(dest), url)
        atomic_write_text(marker, f"{md5 or ''}  {dest.name}\n")
        return dest

    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            digest = _fetch_into(url, part, timeout)
            break
        except _Interrupted as err:
            if attempt == retries:
                raise DataError(f"{url}: download interrupted ({err}) after {retries + 1} attempts; "
                                + _part_note(part)) from None
            time.sleep(retry_wait * (attempt + 1))
    if md5 is not None:
        _check_md5(part, md5, digest, url)
    os.replace(part, dest)
    atomic_write_text(marker, f"{digest}  {dest.name}\n")
    return dest


def _part_note(part: Path) -> str:
    """What a failed download left: the bytes kept for a resume, or nothing (an empty `.part` is removed)."""
    size = part.stat().st_size if part.exists() else 0
    if size:
        return f"{part} is kept ({size} bytes), rerun to resume"
    part.unlink(missing_ok=True)
    return "nothing was downloaded; check the URL, the mirror or the network and rerun"


class _Interrupted(Exception):
    """A transfer that stopped early; the caller may resume it."""


def _fetch_into(url: str, part: Path, timeout: float) -> str:
    """Append the rest of `url` to `part` (Range request if it holds bytes); return the file's MD5.

    Raises `_Interrupted` when the connection drops before the announced length, `DataError` for
    an HTTP error or a URL that cannot be opened.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # The .part already holds the whole file (or more): let the MD5 check decide.
            return file_md5(part)
        raise DataError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise _Interrupted(f"cannot connect: {reason}") from None

    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range header: start again
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        digest = hashlib.md5()
        if offset:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
        received = offset
        with open(part, "ab" if offset else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), disable=None, leave=False,
        ) as bar:
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, OSError) as err:
                raise _Interrupted(f"{type(err).__name__} at byte {received}") from None
    if total is not None and received < total:
        raise _Interrupted(f"connection closed at byte {received} of {total}")
    return digest.hexdigest()


# --- extraction ------------------------------------------------------------------------------
def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _check_member(member: tarfile.TarInfo, root: str, archive: Path) -> None:
    """Raise DataError if extracting `member` under `root` (a real path) could escape it."""
    name = member.name

    def refuse(why: str) -> None:
        raise DataError(f"{archive}: refusing tar member {name!r}: {why}")

    if name.startswith(("/", "\\")) or posixpath.isabs(name) or (len(name) > 1 and name[1] == ":"):
        refuse("absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        refuse("'..' in its path")
    target = os.path.realpath(os.path.join(root, name))  # follows links already extracted
    if not _within(root, target):
        refuse("it would be written outside the target folder")
    if member.issym() or member.islnk():
        link = member.linkname
        if posixpath.isabs(link):
            refuse(f"link to an absolute path {link!r}")
        base = os.path.dirname(os.path.join(root, name)) if member.issym() else root
        if not _within(root, os.path.realpath(os.path.join(base, link))):
            refuse(f"link {link!r} points outside the target folder")
    elif not (member.isfile() or member.isdir()):
        refuse("special file (device or fifo)")


def extract_archive(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Extract a tar archive (any compression tarfile reads) into `dest_dir`, safely and whole.

    Every member is checked before it is written: an absolute path, a `..` component, a path
    through an extracted link, or a link pointing outside the target raises `DataError` naming
    the member. Members go to a temporary sibling `dest_dir/.<archive name>.extracting/` (removed
    first if a killed run left one); only when the last member is out are its entries moved into
    `dest_dir` (a folder that is not there yet, e.g. `LibriSpeech/<subset>`, in one rename), then
    `dest_dir/.<archive name>.done` is written. A failure part-way (corrupt or cut archive, disk
    full, a refused member) removes the temporary folder: nothing of the archive is left in
    `dest_dir`, and a rerun starts afresh. With the marker present the call does nothing.
    Returns `dest_dir`.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    marker = dest_dir / f".{archive.name}.done"
    if marker.exists():
        return dest_dir
    if not archive.is_file():
        raise DataError(f"archive not found: {archive}")
    staging = dest_dir / f".{archive.name}.extracting"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _extract_members(archive, staging)
        _move_into(staging, dest_dir)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{archive}: cannot extract ({err}); nothing was extracted. If the archive is corrupt, "
                        f"delete it and {_done_marker(archive).name} beside it to download it again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(marker, f"{archive.name}\n")
    return dest_dir


def _extract_members(archive: Path, staging: Path) -> None:
    """Check and extract every member of `archive` under the empty folder `staging`."""
    root = os.path.realpath(staging)
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tqdm(tar, desc=f"extract {archive.name}", unit=" files", disable=None, leave=False):
            _check_member(member, root, archive)
            tar.extract(member, root, **extra)


def _move_into(source: Path, target: Path) -> None:
    """Move the entries of folder `source` into folder `target`: an entry absent from `target` in
    one rename, a folder present in both entry by entry, a file replacing a file of its name."""
    for entry in sorted(source.iterdir()):
        goal = target / entry.name
        if entry.is_dir() and not entry.is_symlink() and goal.is_dir():
            _move_into(entry, goal)
            continue
        if goal.is_dir() and not goal.is_symlink():
            raise DataError(f"{goal}: a folder is in the way of the archive's file {entry.name}; move it away")
        try:
            os.replace(entry, goal)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            shutil.move(entry, goal)  # `target` reaches another file system through a link


# --- preparation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One utterance that could not go into the manifest."""

    kind: str  # missing-audio | missing-transcript | unreadable-audio | empty-text | duplicate
    utterance: str  # utterance id (the audio file stem for audio without a transcript)
    where: str  # transcript "file:line" or audio path
    detail: str = ""  # free text, e.g. the audio error

    def line(self) -> str:
        return "\t".join(filter(None, (self.kind, self.utterance, self.where, self.detail)))


@dataclass(frozen=True)
class PrepareSummary:
    """What one call of `prepare_corpus` wrote."""

    name: str  # the subset folder's name
    manifest: Path  # the manifest written
    utterances: int  # records in the manifest
    hours: float  # total audio duration of those records, hours
    speakers: int  # distinct speakers among those records
    missing_audio: int  # transcript lines whose audio file is absent
    missing_transcript: int  # audio files with no transcript line
    other_problems: int  # unreadable audio, empty normalised text, duplicate ids
    problems_file: Path | None  # `<manifest>.problems.txt`, None when there was nothing to report
    odd_characters: str = ""  # characters of the texts other than A-Z, ' and space, sorted
    odd_utterances: int = 0  # records whose text holds one of them

    def format(self) -> str:
        """One line for a person, plus one with problems and one warning of odd characters."""
        text = (f"{self.name}: {self.utterances} utterances, {self.hours:.2f} h, "
                f"{self.speakers} speakers -> {self.manifest}")
        if self.problems_file is not None:
            text += (f"\n{self.name}: {self.missing_audio} transcript lines without audio, "
                     f"{self.missing_transcript} audio files without transcript, "
                     f"{self.other_problems} other problems; listed in {self.problems_file}")
        if self.odd_characters:
            shown = " ".join(self.odd_characters[:30]) + (" ..." if len(self.odd_characters) > 30 else "")
            text += (f"\n{self.name}: warning: {self.manifest}: {self.odd_utterances} transcript(s) hold characters "
                     f"other than A-Z, ' and space: {shown} (digits, non-Latin letters); training would make "
                     "each a token of its own: spell them out or fix the transcripts")
        return text


LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")  # what LibriSpeech-style text is made of


def odd_characters(records: Sequence[dict]) -> tuple[str, int]:
    """(the characters of the records' texts outside `LETTERS`, sorted; how many records hold one)."""
    odd: set[str] = set()
    count = 0
    for record in records:
        extra = set(record["text"]) - LETTERS
        if extra:
            odd |= extra
            count += 1
    return "".join(sorted(odd)), count


def audio_extensions() -> frozenset[str]:
    """Lower-case file extensions (no dot) of the formats this libsndfile reads, and of the media
    that `asr.audio` reads through FFmpeg (`asr.media.MEDIA_EXTENSIONS`: m4a, webm, ...)."""
    import soundfile

    from asr.media import MEDIA_EXTENSIONS

    formats = {name.lower() for name in soundfile.available_formats()} - {"raw"}
    aliases = {"aiff": {"aif"}, "au": {"snd"}, "ogg": {"oga", "opus"}, "nist": {"sph"}}
    media = {extension.removeprefix(".") for extension in MEDIA_EXTENSIONS}
    return frozenset(formats.union(*(aliases[k] for k in formats & aliases.keys()), media))


def find_chapters(subset_dir: Path) -> list[Path]:
    """The `<speaker>/<chapter>` folders of a subset folder, sorted."""
    return sorted(
        chapter
        for speaker in subset_dir.iterdir() if speaker.is_dir()
        for chapter in speaker.iterdir() if chapter.is_dir()
    )


def _prepare_chapter(chapter_dir: Path, extensions: frozenset[str]) -> tuple[list[dict], list[Problem]]:
    """Records (absolute audio paths) and problems of one `<speaker>/<chapter>` folder."""
    from asr.audio import audio_info  # here, not at the top: `asr download` needs no torch

    speaker = chapter_dir.parent.name
    problems: list[Problem] = []
    audio: dict[str, Path] = {}
    transcripts: dict[str, tuple[str, str]] = {}  # id -> (raw text, "file:line")
    for path in sorted(chapter_dir.iterdir()):
        if path.name.endswith(".trans.txt"):
            for number, line in enumerate(_transcript_lines(path), 1):
                fields = line.split(maxsplit=1)
                if not fields:
                    continue
                where = f"{path}:{number}"
                if fields[0] in transcripts:
                    problems.append(Problem("duplicate", fields[0], where, "transcript line repeated"))
                    continue
                transcripts[fields[0]] = (fields[1] if len(fields) > 1 else "", where)
        elif path.suffix[1:].lower() in extensions and path.is_file():
            if path.stem in audio:
                problems.append(Problem("duplicate", path.stem, str(path), f"also {audio[path.stem].name}"))
                continue
            audio[path.stem] = path

    records = []
    for utt, (raw, where) in transcripts.items():
        path = audio.get(utt)
        if path is None:
            problems.append(Problem("missing-audio", utt, where))
            continue
        text = normalize_text(raw)
        if not text:
            problems.append(Problem("empty-text", utt, where, "no text after normalisation"))
            continue
        try:
            info = audio_info(path)
        except AudioError as err:
            problems.append(Problem("unreadable-audio", utt, str(path), str(err)))
            continue
        records.append({"id": utt, "audio": str(path.resolve()), "duration": round(info.duration, 4),
                        "text": text, "speaker": speaker})
    problems.extend(Problem("missing-transcript", utt, str(path)) for utt, path in audio.items()
                    if utt not in transcripts)
    return records, problems


def _transcript_lines(path: Path) -> list[str]:
    """The lines of a `*.trans.txt`; DataError naming the file and line when one is not UTF-8."""
    return read_text(path, "transcript").split("\n")


def _prepare_chapter_star(job: tuple[Path, frozenset[str]]) -> tuple[list[dict], list[Problem]]:
    return _prepare_chapter(*job)


def default_num_workers() -> int:
    """Processes used by default for preparation: the CPU count, at most 8."""
    return min(8, os.cpu_count() or 1)


def prepare_corpus(
    subset_dir: str | os.PathLike,
    manifest_path: str | os.PathLike,
    num_workers: int | None = None,
) -> PrepareSummary:
    """Write the manifest of one subset folder in LibriSpeech layout.

    Durations come from the audio headers (`asr.audio.audio_info`, no decoding); chapters are
    processed by a pool of `num_workers` processes (0 or 1: in this process; None: default).
    Texts are normalised with `asr.text.normalize_text`. Records are sorted by id; audio paths
    are relative to the manifest's folder. Transcript lines without audio, audio without a
    transcript, unreadable audio and empty texts are left out, counted in the summary and listed
    in `<manifest>.problems.txt` (removed when there is nothing to report). Raises `DataError`
    when the folder is missing, holds no chapter, or yields no utterance.
    """
    subset_dir, manifest_path = Path(subset_dir), Path(manifest_path)
    if not subset_dir.is_dir():
        raise DataError(f"corpus folder not found: {subset_dir}")
    chapters = find_chapters(subset_dir)
    if not chapters:
        raise DataError(f"{subset_dir}: no <speaker>/<chapter>/ folders (expected LibriSpeech layout "
                        "<subset>/<speaker>/<chapter>/*.flac + <speaker>-<chapter>.trans.txt)")
    records, problems = _prepare_chapters(chapters, num_workers, subset_dir.name)
    records = _drop_duplicate_ids(records, problems)

    manifest_dir = os.path.realpath(manifest_path.parent if str(manifest_path.parent) else ".")
    for record in records:
        record["audio"] = os.path.relpath(os.path.realpath(record["audio"]), manifest_dir)
    problems_file = _write_problems(manifest_path, problems)
    if not records:
        where = f"; see {problems_file}" if problems_file else ""
        raise DataError(f"{subset_dir}: no utterance has both audio and a transcript{where}")

    write_manifest(manifest_path, records)
    counts = {kind: sum(p.kind == kind for p in problems) for kind in ("missing-audio", "missing-transcript")}
    odd, odd_count = odd_characters(records)
    return PrepareSummary(
        name=subset_dir.name,
        manifest=manifest_path,
        utterances=len(records),
        hours=sum(r["duration"] for r in records) / 3600.0,
        speakers=len({r["speaker"] for r in records}),
        missing_audio=counts["missing-audio"],
        missing_transcript=counts["missing-transcript"],
        other_problems=len(problems) - sum(counts.values()),
        problems_file=problems_file,
        odd_characters=odd,
        odd_utterances=odd_count,
    )


def _prepare_chapters(chapters: Sequence[Path], num_workers: int | None, name: str) -> tuple[list[dict], list[Problem]]:
    """Records and problems of every chapter, by a pool of `num_workers` processes (0 or 1: here)."""
    workers = default_num_workers() if num_workers is None else num_workers
    jobs = [(chapter, audio_extensions()) for chapter in chapters]
    records: list[dict] = []
    problems: list[Problem] = []
    with tqdm(total=len(jobs), desc=f"prepare {name}", unit=" chapters", disable=None, leave=False) as bar:
        if workers <= 1:
            results: Iterable = map(_prepare_chapter_star, jobs)
            pool = None
        else:
            pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)))
            results = pool.map(_prepare_chapter_star, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
        try:
            for chapter_records, chapter_problems in results:
                records.extend(chapter_records)
                problems.extend(chapter_problems)
                bar.update()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return records, problems


def _drop_duplicate_ids(records: list[dict], problems: list[Problem]) -> list[dict]:
    """`records` sorted by id, each id once; the later ones are added to `problems`."""
    records.sort(key=lambda r: r["id"])
    seen: set[str] = set()
    unique = []
    for record in records:  # the same id in two chapters would break everything downstream
        if record["id"] in seen:
            problems.append(Problem("duplicate", record["id"], record["audio"], "id used in two chapters"))
        else:
            seen.add(record["id"])
            unique.append(record)
    return unique


def _write_problems(manifest_path: Path, problems: Sequence[Problem]) -> Path | None:
    """Write (or remove a stale) `<manifest>.problems.txt`; return its path when written."""
    path = manifest_path.with_name(manifest_path.name + ".problems.txt")
    if not problems:
        path.unlink(missing_ok=True)
        return None
    header = "# kind\tutterance\twhere\tdetail\n"
    body = "".join(p.line() + "\n" for p in sorted(problems, key=lambda p: (p.kind, p.utterance)))
    atomic_write_text(path, header + body)
    return path


def find_subset_dir(data_dir: str | os.PathLike, subset: str) -> Path | None:
    """`<data_dir>/LibriSpeech/<subset>` (as the tarballs extract), else `<data_dir>/<subset>`."""
    for candidate in (Path(data_dir) / "LibriSpeech" / subset, Path(data_dir) / subset):
        if candidate.is_dir():
            return candidate
    return None


def _check_extraction_finished(data_dir: Path, subset: str, subset_dir: Path) -> None:
    """DataError when `subset_dir` may be what an extraction that did not finish left behind: the
    archive was downloaded here but its `.done` marker is missing (a partial folder would give a
    manifest of part of the subset). A folder extracted by hand, with no archive here, is trusted."""
    archive = data_dir / "downloads" / f"{subset}.tar.gz"
    if archive.exists() and not (data_dir / f".{archive.name}.done").exists():
        raise DataError(f"{subset_dir}: its extraction from {archive} did not finish (no "
                        f"{data_dir / f'.{archive.name}.done'}); rerun with --download to extract it again")


def download_subset(
    subset: str, data_dir: str | os.PathLike, mirror: str | None = None, md5: str | None = None
) -> Path:
    """Download `<subset>.tar.gz` into `<data_dir>/downloads/` (resume, MD5) and extract it into
    `data_dir` (giving `<data_dir>/LibriSpeech/<subset>`). Finished steps are skipped. Returns the
    subset folder. `md5` replaces openslr's sum, for a mirror that serves repacked archives."""
    info = subset_info(subset)
    data_dir = Path(data_dir)
    archive = download_file(subset_url(subset, mirror), data_dir / "downloads" / f"{subset}.tar.gz",
                            md5=md5 or info.md5)
    marker = data_dir / f".{archive.name}.done"
    if marker.exists() and find_subset_dir(data_dir, subset) is None:
        marker.unlink()  # extracted once, deleted since: extract again
    extract_archive(archive, data_dir)
    subset_dir = find_subset_dir(data_dir, subset)
    if subset_dir is None:
        raise DataError(f"{archive}: extracted, but {data_dir / 'LibriSpeech' / subset} is not there")
    return subset_dir


def prepare_librispeech(
    data_dir: str | os.PathLike,
    subsets: Sequence[str],
    download: bool = False,
    mirror: str | None = None,
    manifest_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    md5_overrides: dict[str, str] | None = None,
) -> list[PrepareSummary]:
    """Optionally download/extract LibriSpeech subsets, then write one manifest per subset.

    Folders: archives in `<data_dir>/downloads/`, audio in `<data_dir>/LibriSpeech/<subset>/`
    (or an existing `<data_dir>/<subset>/`), manifests in `<manifest_dir>/<subset>.jsonl`
    (default `<data_dir>/manifests/`). Without `download`, a missing subset folder is a DataError,
    and so is one whose extraction did not finish. `md5_overrides` maps a subset name to the MD5
    of its archive on `mirror` (as in `download_librispeech`).
    """
    data_dir = Path(data_dir)
    if not download:
        for subset in subsets:  # fail before any work when a folder is missing
            subset_dir = find_subset_dir(data_dir, subset)
            if subset_dir is None:
                raise DataError(f"{data_dir / 'LibriSpeech' / subset} not found; pass --download, "
                                f"or extract {subset}.tar.gz into {data_dir}")
            _check_extraction_finished(data_dir, subset, subset_dir)
    else:
        for subset in subsets:
            subset_info(subset)
    manifest_dir = Path(manifest_dir) if manifest_dir is not None else data_dir / "manifests"
    summaries = []
    for subset in subsets:
        subset_dir = (download_subset(subset, data_dir, mirror, (md5_overrides or {}).get(subset)) if download
                      else find_subset_dir(data_dir, subset))
        summaries.append(prepare_corpus(subset_dir, manifest_dir / f"{subset}.jsonl", num_workers))
    return summaries


def combine_manifests(inputs: Sequence[str | os.PathLike], out: str | os.PathLike) -> PrepareSummary:
    """Write one manifest holding the records of several, in input order (e.g. the training subsets
    of LibriSpeech 460/960 h, since `asr train` takes one --train manifest).

    Audio paths are rewritten relative to `out`'s folder. Raises `DataError` when an input is
    missing or invalid, or when an utterance id occurs in two inputs; nothing is written then.
    """
    from asr.data.manifest import read_manifest

    if not inputs:
        raise DataError("no manifest to combine")
    out = Path(out)
    out_dir = os.path.realpath(out.parent if str(out.parent) else ".")
    records: list[dict] = []
    source: dict[str, Path] = {}
    for path in map(Path, inputs):
        for record in read_manifest(path):
            if record["id"] in source:
                raise DataError(f"{path}: id {record['id']!r} is also in {source[record['id']]}")
            source[record["id"]] = path
            record["audio"] = os.path.relpath(os.path.realpath(record["audio"]), out_dir)
            records.append(record)
    write_manifest(out, records)
    return PrepareSummary(
        name=out.stem, manifest=out, utterances=len(records),
        hours=sum(r["duration"] for r in records) / 3600.0, speakers=len({r["speaker"] for r in records}),
        missing_audio=0, missing_transcript=0, other_problems=0, problems_file=None)


# --- download only (no manifests); the openslr 11 language-model resources ---------------------
def parse_md5_overrides(items: Iterable[str]) -> dict[str, str]:
    """`NAME=MD5` items, each possibly several comma-separated, as `{name: md5}`.

    For a mirror serving repacked archives (and for tests): the sums replace openslr's for the
    named files only. Raises `DataError` on an item without `=` or a sum that is not 32 hex digits.
    """
    sums: dict[str, str] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            name, sep, digest = part.partition("=")
            digest = digest.strip().lower()
            if not sep or not name.strip():
                raise DataError(f"--md5 expects NAME=MD5, got {part!r}")
            if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
                raise DataError(f"--md5 {part!r}: an MD5 sum is 32 hex digits")
            sums[name.strip()] = digest
    return sums


def download_librispeech(
    data_dir: str | os.PathLike,
    subsets: Sequence[str],
    mirror: str | None = None,
    md5_overrides: dict[str, str] | None = None,
) -> list[Path]:
    """Download (resumable, MD5-checked) and extract LibriSpeech subsets; write no manifest.

    Same folders as `prepare_librispeech`: archives in `<data_dir>/downloads/`, audio in
    `<data_dir>/LibriSpeech/<subset>/`; finished downloads and extractions are skipped.
    `md5_overrides` maps a subset name to the MD5 of its archive on `mirror` (other names are
    ignored). Unknown subset names fail before any transfer. Returns the subset folders.
    """
    overrides = dict(md5_overrides or {})
    for subset in subsets:
        subset_info(subset)
    return [download_subset(subset, data_dir, mirror, overrides.get(subset)) for subset in subsets]


LM_RESOURCE = 11  # openslr resource of the LibriSpeech language models, lexicon and LM text


@dataclass(frozen=True)
class LmFileInfo:
    """One downloadable file of openslr resource 11."""

    name: str  # file name under <base>/11/, also the name it is saved under
    md5: str  # MD5 of the file (see the provenance note on LM_FILES)
    what: str  # one line for a person


# MD5 sums of openslr resource 11. Provenance: not checked against openslr's own md5sum listing
# (no network when this was written); taken from the FILE2MD5 table of sdrobert/pytorch-database-prep
# (librispeech.py), a LibriSpeech preparation tool that checks its downloads against them; its sums
# for the seven resource-12 tarballs are identical to those in SUBSETS, copied from openslr's
# md5sum.txt. A mismatch moves the file aside to `<name>.bad-md5` and names both sums; a mirror or
# a newer upload can be accepted with an explicit override (`--md5 NAME=SUM`).
LM_FILES: dict[str, LmFileInfo] = {
    info.name: info
    for info in (
        LmFileInfo("3-gram.pruned.1e-7.arpa.gz", "9a0f1325bcaf3a0f7b7be4be10823c2a", "3-gram, pruned 1e-7 (small)"),
        LmFileInfo("3-gram.pruned.3e-7.arpa.gz", "8f67ec741827742eee05799ab7605b50", "3-gram, pruned 3e-7 (smaller)"),
        LmFileInfo("3-gram.arpa.gz", "74cbb837e582378c26c602e1c8cbcb9c", "3-gram, unpruned"),
        LmFileInfo("4-gram.arpa.gz", "6abdcd5b055bd482e4f9defe91d40408", "4-gram, unpruned (large)"),
        LmFileInfo("librispeech-lexicon.txt", "28f72663f6bfed7cd346283c064c315b", "pronunciation lexicon, 200k words"),
        LmFileInfo("librispeech-vocab.txt", "bf3cc7a50112831ed8b0afa40cae96a5", "the LMs' 200k-word vocabulary"),
        LmFileInfo("librispeech-lm-norm.txt.gz", "c83c64c726a1aedfe65f80aa311de402", "normalised LM training text"),
    )
}
DEFAULT_LM_FILES = ("3-gram.pruned.1e-7.arpa.gz", "librispeech-lexicon.txt")


def lm_file_info(name: str) -> LmFileInfo:
    """The `LmFileInfo` of a resource-11 file name; DataError listing the known names otherwise."""
    try:
        return LM_FILES[name]
    except KeyError:
        raise DataError(f"unknown LibriSpeech LM file {name!r}; known: {', '.join(LM_FILES)}") from None


def lm_file_url(name: str, mirror: str | None = None) -> str:
    """URL of a resource-11 file: `<base>/11/<name>`, the base chosen as in `subset_url`."""
    info = lm_file_info(name)
    base = (mirror or os.environ.get(MIRROR_ENV) or OPENSLR_BASE_URL).rstrip("/")
    return f"{base}/{LM_RESOURCE}/{info.name}"


def download_lm_files(
    data_dir: str | os.PathLike,
    files: Sequence[str] = DEFAULT_LM_FILES,
    mirror: str | None = None,
    md5_overrides: dict[str, str] | None = None,
) -> list[Path]:
    """Download openslr 11 files (ARPA LMs, lexicon, ...) into `<data_dir>/lm/`, as they are.

    Resumable and MD5-checked like the corpus (`download_file`); `.arpa.gz` LMs stay compressed
    (`asr decode --lm` reads them). `md5_overrides` maps a file name to its MD5 on `mirror` (other
    names are ignored). Unknown names fail before any transfer. Returns the paths.
    """
    overrides = dict(md5_overrides or {})
    infos = [lm_file_info(name) for name in files]
    lm_dir = Path(data_dir) / "lm"
    return [download_file(lm_file_url(info.name, mirror), lm_dir / info.name, md5=overrides.get(info.name, info.md5))
            for info in infos]
