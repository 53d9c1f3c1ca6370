"""The synthetic corpus: espeak-ng voices read sentences from the project's grammar.

LibriSpeech cannot be downloaded everywhere, so the demo and the tests train on speech that
espeak-ng makes here. A *voice* (one LibriSpeech-style numeric speaker id) is an espeak-ng English
variant (`en-us`, `en-gb-scotland`, ...) with a voice variant (`+m3`, `+f2`, `+klatt`, ...) and its
own speaking rate and pitch; each utterance jitters rate and pitch a little around the voice's.
Voices are split between train, dev and test, so dev and test speakers are never heard in training.

Texts come from `asr.data.grammar.sentence_generator` (or from a user's text file), audio is
trimmed (or padded) to 0.1 s of silence at each end, optionally given a random level and a little
white noise, resampled to 16 kHz and written as 16-bit FLAC in LibriSpeech layout::

    <out>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac
    <out>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <out>/<split>/.done          (JSON summary, written when the split is complete)
    <out>/SPEAKERS.TXT           (speaker id, sex, split, minutes, voice)

Everything derives from the seed: the same options give byte-identical files. Chapters are
synthesised by a process pool; a rerun skips chapters whose transcript is already in place (the
transcript is written, atomically, after the chapter's audio) and whole splits that have `.done`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import soundfile
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, audio_info, resample
from asr.data.grammar import is_question, sentence_generator
from asr.errors import DataError
from asr.fileio import atomic_open, atomic_write_text, read_text
from asr.text import normalize_text

SPLITS = ("train", "dev", "test")
FORMAT_VERSION = 1  # bump when the audio processing changes, so stale corpora are not mixed in

# espeak-ng English variants (check `espeak-ng --voices=en`). The mbrola voices need extra
# packages and are left out.
ENGLISH_VARIANTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-029",
                    "en-gb-x-gbcwmd", "en-us-nyc")
# Voice variants (check `espeak-ng --voices=variant`) that stay clearly intelligible: whisper,
# croak, robot and other effect voices are left out, they would make the test set a test of
# degraded audio rather than of unseen speakers.
VOICE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt",
                  "klatt2", "klatt3", "klatt4", "edward", "robert", "paul", "belinda", "linda")
_FEMALE_VARIANTS = {"f1", "f2", "f3", "f4", "belinda", "linda"}
FIRST_SPEAKER_ID = 100  # speaker ids are FIRST_SPEAKER_ID + index in the voice catalogue

# Estimated seconds of speech per character of text at 175 words per minute (measured on the
# grammar's sentences), used only to turn --hours-train into a number of utterances.
_SECONDS_PER_CHAR_AT_175 = 0.051
_ESPEAK_INSTALL = "install it with: apt-get install espeak-ng"


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. The same config (and espeak-ng version) gives the same files."""

    seed: int = 0  # seeds texts, the voice split, rates, pitches and noise
    train_utts: int = 2000  # utterances in train (ignored when hours_train is set)
    dev_utts: int = 100  # utterances in dev
    test_utts: int = 100  # utterances in test (voices never used in train)
    hours_train: float | None = None  # if set: enough train utterances for about this many hours
    text_file: str | None = None  # sentences, one a line, instead of the grammar
    dev_voices: int = 12  # voices reserved for dev
    test_voices: int = 16  # voices reserved for test
    utts_per_chapter: int = 25  # utterances per <speaker>/<chapter> folder at most
    speed_range: tuple[int, int] = (140, 190)  # voices' speaking rates, words per minute
    pitch_range: tuple[int, int] = (30, 70)  # voices' espeak-ng pitch (0-99)
    speed_jitter: int = 8  # per utterance: rate += uniform(-jitter, jitter) wpm
    pitch_jitter: int = 6  # per utterance: pitch += uniform(-jitter, jitter)
    augment: bool = True  # random level and a little white noise per utterance
    level_db: tuple[float, float] = (-14.0, -1.0)  # peak level range, dB full scale (augment)
    snr_db: tuple[float, float] = (25.0, 45.0)  # white-noise signal-to-noise ratio range, dB (augment)
    keep_silence: float = 0.1  # seconds of silence kept before and after the speech


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker."""

    speaker: int  # numeric speaker id, as in LibriSpeech
    language: str  # espeak-ng English variant, e.g. "en-gb-scotland"
    variant: str  # espeak-ng voice variant, e.g. "f2"
    speed: int  # base speaking rate, words per minute
    pitch: int  # base espeak-ng pitch, 0-99

    @property
    def espeak_voice(self) -> str:
        """The `-v` argument of espeak-ng, e.g. "en-us+m3"."""
        return f"{self.language}+{self.variant}"

    @property
    def sex(self) -> str:
        return "F" if self.variant in _FEMALE_VARIANTS else "M"

    def describe(self) -> str:
        return f"{self.espeak_voice} {self.speed} wpm pitch {self.pitch}"


@dataclass(frozen=True)
class Utterance:
    """One utterance to synthesise."""

    id: str  # "<speaker>-<chapter>-<NNNN>"
    text: str  # normalised transcript (A-Z, apostrophe, spaces)
    speed: int  # espeak-ng -s, words per minute
    pitch: int  # espeak-ng -p
    seed: int  # seeds this utterance's level and noise


@dataclass(frozen=True)
class Chapter:
    """One `<speaker>/<chapter>` folder: utterances of one voice."""

    split: str
    voice: Voice
    chapter: int
    utterances: tuple[Utterance, ...]

    @property
    def folder(self) -> str:
        return f"{self.split}/{self.voice.speaker}/{self.chapter}"

    @property
    def transcript_name(self) -> str:
        return f"{self.voice.speaker}-{self.chapter}.trans.txt"

    def transcript(self) -> str:
        return "".join(f"{u.id} {u.text}\n" for u in self.utterances)


@dataclass(frozen=True)
class SplitSummary:
    """What one split holds after `generate_corpus`."""

    split: str
    utterances: int
    speakers: int
    seconds: float  # total audio duration
    chapters_written: int  # chapters synthesised by this call
    chapters_skipped: int  # chapters already complete on disk
    speaker_seconds: dict[str, float] = field(default_factory=dict)  # speaker id -> seconds


@dataclass(frozen=True)
class CorpusSummary:
    """What `generate_corpus` did."""

    out_dir: Path
    splits: tuple[SplitSummary, ...]
    seconds_written: float  # audio seconds synthesised by this call
    wall_seconds: float  # time this call took
    text_lines_skipped: int = 0  # lines of --text dropped (digits or letters outside A-Z)

    @property
    def realtime_factor(self) -> float:
        """Audio seconds written per wall-clock second (0 when nothing was written)."""
        return self.seconds_written / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def format(self) -> str:
        """A few lines for a person."""
        lines = []
        for s in self.splits:
            state = (f"{s.chapters_written} chapters written, {s.chapters_skipped} already done")
            lines.append(f"{s.split}: {s.utterances} utterances, {s.seconds / 3600:.2f} h, "
                         f"{s.speakers} speakers ({state})")
        if self.seconds_written > 0:
            lines.append(f"synthesised {self.seconds_written / 60:.1f} min of audio in "
                         f"{self.wall_seconds:.1f} s ({self.realtime_factor:.0f}x real time)")
        if self.text_lines_skipped:
            lines.append(f"skipped {self.text_lines_skipped} text lines with digits or letters "
                         "outside A-Z")
        lines.append(f"corpus: {self.out_dir}")
        return "\n".join(lines)


# --- voices and texts ----------------------------------------------------------------------------
def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from `seed` and `keys`, stable across machines and Python versions."""
    text = json.dumps([seed, *[str(k) for k in keys]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def text_seed(seed: int, split: str) -> int:
    """The seed of `sentence_generator` for `split`'s texts: split texts are independent streams."""
    return derive_seed(seed, "text", split)


def voice_catalogue(config: SynthConfig) -> list[Voice]:
    """Every English variant x voice variant, with a seeded rate and pitch each; ids from 100."""
    rng = random.Random(derive_seed(config.seed, "voices"))
    voices = []
    for index, (language, variant) in enumerate(itertools.product(ENGLISH_VARIANTS, VOICE_VARIANTS)):
        voices.append(Voice(FIRST_SPEAKER_ID + index, language, variant,
                            rng.randint(*config.speed_range), rng.randint(*config.pitch_range)))
    return voices


def split_voices(config: SynthConfig) -> dict[str, list[Voice]]:
    """The voices of each split: a seeded shuffle of the catalogue, test first, then dev, train.

    No voice is in two splits. Every English variant and voice variant still occurs in train
    (each is shared by many voices), only their combination, rate and pitch are new in test.
    """
    voices = voice_catalogue(config)
    if config.dev_voices < 1 or config.test_voices < 1:
        raise DataError("dev_voices and test_voices must be at least 1")
    if config.dev_voices + config.test_voices >= len(voices):
        raise DataError(f"dev_voices + test_voices must leave voices for train "
                        f"(catalogue has {len(voices)})")
    order = list(voices)
    random.Random(derive_seed(config.seed, "split")).shuffle(order)
    test = order[:config.test_voices]
    dev = order[config.test_voices:config.test_voices + config.dev_voices]
    train = order[config.test_voices + config.dev_voices:]
    return {split: sorted(v, key=lambda voice: voice.speaker)
            for split, v in (("train", train), ("dev", dev), ("test", test))}


def describe_voices(config: SynthConfig) -> str:
    """The voices of each split, one a line: speaker id, sex, split, espeak voice, rate, pitch."""
    lines = []
    for split, voices in split_voices(config).items():
        lines.append(f"{split}: {len(voices)} voices")
        lines += [f"  {v.speaker}  {v.sex}  {v.describe()}" for v in voices]
    return "\n".join(lines)


def read_text_file(path: str | os.PathLike) -> tuple[list[str], int]:
    """Sentences of a text file (one a line), normalised; returns (sentences, lines skipped).

    Blank lines are ignored; lines that still hold digits or letters outside A-Z after
    normalisation are skipped (espeak-ng would read "42" as a number while the transcript says
    "42"). Raises DataError naming the file when it is missing or has no usable line.
    """
    path = Path(path)
    raw_lines = read_text(path, "text file").splitlines()
    sentences, skipped = [], 0
    for line in raw_lines:
        text = normalize_text(line)
        if not text:
            continue
        if any(not ("A" <= c <= "Z" or c in "' ") for c in text):
            skipped += 1
            continue
        sentences.append(text)
    if not sentences:
        raise DataError(f"{path}: no usable sentence (need lines of English words; "
                        f"{skipped} lines skipped for digits or letters outside A-Z)")
    return sentences, skipped


def _file_stream(sentences: Sequence[str], seed: int) -> Iterator[str]:
    """The file's sentences in a seeded order, reshuffled on each pass."""
    rng = random.Random(seed)
    while True:
        order = list(sentences)
        rng.shuffle(order)
        yield from order


def _estimate_seconds(text: str, speed: int) -> float:
    return len(text) * _SECONDS_PER_CHAR_AT_175 * 175.0 / speed + 0.2


def plan_corpus(config: SynthConfig, text_sentences: Sequence[str] | None = None
                ) -> dict[str, list[Chapter]]:
    """Every chapter of every split, with its utterances, texts, rates and pitches.

    The plan depends on `config` (and the text file's sentences) only: synthesis just follows it.
    Utterance i of a split is read by voice i mod (voices of the split); each voice's utterances
    are cut into chapters of `utts_per_chapter`; chapter id = speaker id * 1000 + chapter index.
    Texts: train, dev and test each read `sentence_generator(text_seed(seed, split))`; a text
    file is one seeded stream read by test, then dev, then train, so the splits share no line
    while the file is long enough.
    """
    for name, minimum in (("train_utts", 0), ("dev_utts", 0), ("test_utts", 0),
                          ("utts_per_chapter", 1)):
        if getattr(config, name) < minimum:
            raise DataError(f"{name} must be at least {minimum}, got {getattr(config, name)}")
    if config.hours_train is not None and config.hours_train <= 0:
        raise DataError(f"hours_train must be positive, got {config.hours_train}")
    voices = split_voices(config)
    file_texts = None if text_sentences is None else _file_stream(text_sentences,
                                                                  derive_seed(config.seed, "file"))
    plan = {}
    for split in ("test", "dev", "train"):
        texts = file_texts or sentence_generator(text_seed(config.seed, split))
        rng = random.Random(derive_seed(config.seed, "utterances", split))
        count = {"train": config.train_utts, "dev": config.dev_utts, "test": config.test_utts}[split]
        by_voice: dict[int, list[tuple[str, int, int]]] = {}
        total_seconds = 0.0
        for index in itertools.count():
            if split == "train" and config.hours_train is not None:
                if total_seconds >= config.hours_train * 3600:
                    break
            elif index >= count:
                break
            voice = voices[split][index % len(voices[split])]
            text = next(texts)
            speed = voice.speed + rng.randint(-config.speed_jitter, config.speed_jitter)
            pitch = min(99, max(0, voice.pitch + rng.randint(-config.pitch_jitter, config.pitch_jitter)))
            by_voice.setdefault(voice.speaker, []).append((text, speed, pitch))
            total_seconds += _estimate_seconds(text, speed)
        chapters = []
        for voice in voices[split]:
            items = by_voice.get(voice.speaker, [])
            for k in range(0, len(items), config.utts_per_chapter):
                chapter_id = voice.speaker * 1000 + k // config.utts_per_chapter
                utterances = tuple(
                    Utterance(f"{voice.speaker}-{chapter_id}-{n:04d}", text, speed, pitch,
                              derive_seed(config.seed, "audio", split, voice.speaker, chapter_id, n))
                    for n, (text, speed, pitch) in enumerate(items[k:k + config.utts_per_chapter]))
                chapters.append(Chapter(split, voice, chapter_id, utterances))
        plan[split] = chapters
    return {split: plan[split] for split in SPLITS}


# --- synthesis -----------------------------------------------------------------------------------
def check_espeak() -> str:
    """The path of espeak-ng; DataError with the install command when it is missing."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DataError(f"espeak-ng not found on PATH; {_ESPEAK_INSTALL}")
    return path


def check_voices(voices: Iterable[Voice]) -> None:
    """DataError when espeak-ng lacks one of the variants (it would silently fall back)."""
    espeak = check_espeak()
    languages = _espeak_list(espeak, "--voices=en", column=1)
    variants = {name.split("/", 1)[-1] for name in _espeak_list(espeak, "--voices=variant", column=4)}
    missing = sorted({v.language for v in voices if v.language not in languages}
                     | {v.variant for v in voices if v.variant not in variants})
    if missing:
        raise DataError(f"this espeak-ng lacks the voices {', '.join(missing)} "
                        "(see `espeak-ng --voices=en` and `espeak-ng --voices=variant`)")


def _espeak_list(espeak: str, option: str, column: int) -> set[str]:
    result = subprocess.run([espeak, option], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DataError(f"`espeak-ng {option}` failed: {result.stderr.strip()}")
    return {line.split()[column] for line in result.stdout.splitlines()[1:]
            if len(line.split()) > column}


def espeak_synthesize(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Speak `text` with espeak-ng; returns (samples (n,) float32 in [-1, 1], sample rate Hz).

    A text from the grammar is spoken in lower case with a full stop, or a question mark when it
    is a question, so that espeak-ng reads words (not letters) with sentence intonation.
    """
    spoken = text.lower() + ("?" if is_question(text) else ".")
    command = [check_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", spoken]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0 or len(result.stdout) < 44:
        raise DataError(f"espeak-ng failed on {text!r} with voice {voice}: "
                        f"{result.stderr.decode(errors='replace').strip() or 'no audio'}")
    return _parse_wav(result.stdout)


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Samples of espeak-ng's streamed 16-bit mono WAV, whose header sizes are placeholders."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise DataError("espeak-ng did not write a WAV stream")
    rate = int.from_bytes(data[24:28], "little")
    start = data.find(b"data", 12)
    if start < 0:
        raise DataError("espeak-ng's WAV stream has no data chunk")
    payload = data[start + 8:]
    samples = np.frombuffer(payload[:len(payload) // 2 * 2], dtype="<i2")
    return samples.astype(np.float32) / 32768.0, rate


def trim_silence(samples: np.ndarray, sample_rate: int, keep: float = 0.1,
                 threshold_db: float = -45.0) -> np.ndarray:
    """Leave exactly `keep` seconds of silence before and after the speech in `samples` (n,).

    espeak-ng starts speaking within a few milliseconds and ends with a third of a second of
    silence: the end is cut, the start padded with zeros. Silence: 10 ms frames whose RMS is
    `threshold_db` below the loudest frame's.
    """
    frame = max(1, sample_rate // 100)
    frames = len(samples) // frame
    if frames == 0:
        return samples
    rms = np.sqrt(np.mean(samples[:frames * frame].reshape(frames, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (threshold_db / 20))
    if rms.max() == 0 or len(loud) == 0:
        return samples
    margin = int(round(keep * sample_rate))
    start, stop = loud[0] * frame, min(len(samples), (loud[-1] + 1) * frame)
    speech = samples[max(0, start - margin):min(len(samples), stop + margin)]
    before = max(0, margin - start)
    after = max(0, margin - (len(samples) - stop))
    return np.pad(speech, (before, after)).astype(samples.dtype, copy=False)


def augment(samples: np.ndarray, rng: np.random.Generator, level_db: tuple[float, float],
            snr_db: tuple[float, float]) -> np.ndarray:
    """Scale the peak to a random level (dBFS) and add white noise at a random SNR (dB)."""
    peak = float(np.abs(samples).max())
    if peak == 0:
        return samples
    level = rng.uniform(*level_db)
    samples = samples * (10 ** (level / 20) / peak)
    speech_power = float(np.mean(samples ** 2))
    snr = rng.uniform(*snr_db)
    noise = rng.standard_normal(len(samples)) * np.sqrt(speech_power / 10 ** (snr / 10))
    return (samples + noise).astype(np.float32)


def render_utterance(utterance: Utterance, voice: Voice, config: SynthConfig) -> np.ndarray:
    """The 16 kHz int16 samples (n,) of one utterance: speak, resample, trim, augment."""
    import torch

    samples, rate = espeak_synthesize(utterance.text, voice.espeak_voice, utterance.speed,
                                      utterance.pitch)
    samples = resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
    samples = trim_silence(samples, SAMPLE_RATE, keep=config.keep_silence)
    if config.augment:
        samples = augment(samples, np.random.default_rng(utterance.seed), config.level_db,
                          config.snr_db)
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def _write_flac(path: Path, samples: np.ndarray) -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    with atomic_open(path, "wb", encoding=None) as f:
        f.write(buffer.getvalue())


def synthesize_chapter(out_dir: str | os.PathLike, chapter: Chapter, config: SynthConfig
                       ) -> list[float]:
    """Write one chapter's FLAC files, then its transcript; returns durations (seconds)."""
    folder = Path(out_dir) / chapter.folder
    durations = []
    for utterance in chapter.utterances:
        samples = render_utterance(utterance, chapter.voice, config)
        _write_flac(folder / f"{utterance.id}.flac", samples)
        durations.append(len(samples) / SAMPLE_RATE)
    atomic_write_text(folder / chapter.transcript_name, chapter.transcript())
    return durations


def _chapter_job(job: tuple[str, Chapter, SynthConfig]) -> tuple[str, list[float]]:
    out_dir, chapter, config = job
    return chapter.folder, synthesize_chapter(out_dir, chapter, config)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; threads would only fight over them


def _chapter_complete(out_dir: Path, chapter: Chapter) -> bool:
    folder = out_dir / chapter.folder
    transcript = folder / chapter.transcript_name
    try:
        if transcript.read_text(encoding="utf-8") != chapter.transcript():
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        return False
    return all((folder / f"{u.id}.flac").is_file() for u in chapter.utterances)


def _fingerprint(config: SynthConfig, chapters: Sequence[Chapter]) -> str:
    """Hash of everything that shapes a split's files (not num_workers)."""
    settings = {key: value for key, value in asdict(config).items()
                if key in ("augment", "level_db", "snr_db", "keep_silence")}
    payload = json.dumps({"version": FORMAT_VERSION, "rate": SAMPLE_RATE, "settings": settings,
                          "chapters": [asdict(c) for c in chapters]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _generate_split(out_dir: Path, split: str, chapters: list[Chapter], config: SynthConfig,
                    pool: concurrent.futures.Executor | None) -> tuple[SplitSummary, float]:
    """Synthesise the chapters of one split not yet on disk; returns (summary, seconds written)."""
    split_dir = out_dir / split
    fingerprint = _fingerprint(config, chapters)
    done, plan_file = split_dir / ".done", split_dir / ".plan"
    mismatch = (f"{split_dir} was generated with other options (seed, sizes, text or "
                "augmentation); delete it or choose another --out")
    if done.is_file():
        record = json.loads(done.read_text(encoding="utf-8"))
        if record.get("fingerprint") != fingerprint:
            raise DataError(mismatch)
        summary = SplitSummary(split, record["utterances"], record["speakers"], record["seconds"],
                               0, len(chapters), record["speaker_seconds"])
        return summary, 0.0
    if plan_file.is_file() and plan_file.read_text(encoding="utf-8").strip() != fingerprint:
        raise DataError(mismatch)
    atomic_write_text(plan_file, fingerprint + "\n")

    todo = [c for c in chapters if not _chapter_complete(out_dir, c)]
    todo_folders = {c.folder for c in todo}
    durations: dict[str, list[float]] = {}
    for chapter in chapters:
        if chapter.folder not in todo_folders:
            durations[chapter.folder] = [
                audio_info(out_dir / chapter.folder / f"{u.id}.flac").duration
                for u in chapter.utterances]
    jobs = [(str(out_dir), chapter, config) for chapter in todo]
    utterances = sum(len(c.utterances) for c in todo)
    written = 0.0
    with tqdm(total=utterances, desc=f"synth {split}", unit=" utts", disable=None,
              leave=False) as bar:
        results = map(_chapter_job, jobs) if pool is None else pool.map(_chapter_job, jobs)
        for folder, chapter_durations in results:
            durations[folder] = chapter_durations
            written += sum(chapter_durations)
            bar.update(len(chapter_durations))

    speaker_seconds: dict[str, float] = {}
    for chapter in chapters:
        key = str(chapter.voice.speaker)
        speaker_seconds[key] = speaker_seconds.get(key, 0.0) + sum(durations[chapter.folder])
    summary = SplitSummary(split, sum(len(c.utterances) for c in chapters), len(speaker_seconds),
                           sum(speaker_seconds.values()), len(todo), len(chapters) - len(todo),
                           speaker_seconds)
    record = {"fingerprint": fingerprint, **{k: v for k, v in asdict(summary).items()
                                              if k not in ("chapters_written", "chapters_skipped")}}
    atomic_write_text(done, json.dumps(record, indent=1, sort_keys=True) + "\n")
    plan_file.unlink(missing_ok=True)
    return summary, written


def _write_speakers(out_dir: Path, plan: dict[str, list[Chapter]],
                    summaries: Sequence[SplitSummary]) -> None:
    """`SPEAKERS.TXT` in LibriSpeech's format, the voice in the NAME column."""
    lines = [";ID  |SEX| SUBSET | MINUTES | NAME\n"]
    for summary in summaries:
        voices = {c.voice.speaker: c.voice for c in plan[summary.split]}
        for speaker, voice in sorted(voices.items()):
            minutes = summary.speaker_seconds.get(str(speaker), 0.0) / 60
            lines.append(f"{speaker:<5}| {voice.sex} | {summary.split:<6} | {minutes:7.2f} | "
                         f"{voice.describe()}\n")
    atomic_write_text(out_dir / "SPEAKERS.TXT", "".join(lines))


def generate_corpus(out_dir: str | os.PathLike, config: SynthConfig = SynthConfig(),
                    num_workers: int | None = None) -> CorpusSummary:
    """Write the synthetic corpus (train, dev, test) under `out_dir` in LibriSpeech layout.

    `num_workers` processes synthesise chapters (None: the CPU count; 0 or 1: this process).
    Complete chapters and splits already on disk are kept (resumable); a split written with other
    options is a DataError. Raises DataError when espeak-ng or one of its voices is missing.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    text_sentences, skipped_lines = (None, 0)
    if config.text_file is not None:
        text_sentences, skipped_lines = read_text_file(config.text_file)
    plan = plan_corpus(config, text_sentences)
    check_voices(c.voice for chapters in plan.values() for c in chapters)
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    pool = None
    if workers > 1:
        # fork: no `if __name__ == "__main__"` guard needed in callers' scripts and no re-import
        # of torch per worker; the workers run torch single-threaded, so an OpenMP pool the parent
        # may hold is never needed after the fork.
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("fork"),
            initializer=_init_worker)
    summaries, written = [], 0.0
    try:
        for split in SPLITS:
            summary, seconds = _generate_split(out_dir, split, plan[split], config, pool)
            summaries.append(summary)
            written += seconds
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    _write_speakers(out_dir, plan, summaries)
    return CorpusSummary(out_dir, tuple(summaries), written, time.perf_counter() - started,
                         skipped_lines)
