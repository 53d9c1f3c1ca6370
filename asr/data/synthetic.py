"""The synthetic corpus: voices of three speech synthesisers read sentences (grammar or text file).

LibriSpeech cannot be downloaded everywhere, so the demo and the tests train on speech made here,
by Debian's `espeak-ng` (formant synthesis by rule), `flite` and `festival` (voices built from
recordings of real speakers: diphone voices, and statistical parametric voices trained on CMU
ARCTIC). A *voice* (one LibriSpeech-style numeric speaker id) is an engine's voice with its own
speaking rate, pitch and, for flite and festival, a vocal-tract warp (resampling that moves
formants and f0 together, the duration compensated); each utterance jitters rate and pitch a
little around the voice's. espeak-ng voices are an English variant (`en-us`, ...) with a voice
variant (`+m3`, `+klatt`, ...). Every recorded voice of the train families is a man's, so a few of
each one's speakers are *raised* (a shorter vocal tract and a higher f0, in women's range).

Each voice belongs to a *family*: who it comes from (`espeak` for every espeak-ng voice, else the
recorded speaker: `kal`, `awb`, `rms`, `ked`, `slt`). Test voices come from the families in
`TEST_FAMILIES` only, which train and dev never use: the test split is a speaker the model never
heard, through an engine and vocoder it never heard (festival's HTS voice). Dev voices are other
voices of the train families (new rate, pitch and warp), as LibriSpeech's dev speakers are not
train's. With `engines` restricted to espeak-ng, test takes unseen espeak-ng voices instead.

Texts come from `asr.data.grammar.sentence_generator`, or from a text file (one sentence a line,
prose, or WordNet's example sentences: the demo's, `WORDNET_DIR`) with a share from the grammar
(`SynthConfig.grammar_share`); audio is
resampled to 16 kHz, trimmed (or padded) to 0.1 s of silence at each end, peak-normalised,
optionally given a random level and a little pink-to-brown noise, and written as 16-bit FLAC in
LibriSpeech layout::

    <out>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac
    <out>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <out>/<split>/.done          (JSON summary, written when the split is complete)
    <out>/SPEAKERS.TXT           (speaker id, sex, split, minutes, voice)
    <out>/lm-text.txt            (text for an n-gram LM: see `lm_text`)

Everything derives from the seed: the same options (and engine versions) give byte-identical
files. Chapters are synthesised by a process pool; a rerun skips chapters whose transcript is
already in place (the transcript is written, atomically, after the chapter's audio) and whole
splits that have `.done`.
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
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import soundfile
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, audio_info, resample
from asr.data.grammar import is_question, number_words, sentence_generator
from asr.errors import DataError
from asr.fileio import atomic_open, atomic_write_text, read_text
from asr.runtime import derive_seed
from asr.text import normalize_text

SPLITS = ("train", "dev", "test")
FORMAT_VERSION = 3  # bump when the audio processing changes, so stale corpora are not mixed in
ENGINES = ("espeak-ng", "flite", "festival")
LM_TEXT = "lm-text.txt"  # under the corpus root: text for an n-gram LM (`lm_text`)

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
ESPEAK_WPM = 175  # espeak-ng's own rate: a voice of rate 1.0 speaks at this many words per minute


@dataclass(frozen=True)
class EngineVoice:
    """A voice that flite or festival ships, built from one recorded speaker."""

    engine: str  # "flite" or "festival"
    name: str  # flite's -voice or festival's voice_<name>
    family: str  # the recorded speaker
    sex: str  # "F" or "M"
    package: str  # the Debian package that holds it
    pitch: str  # how pitch is set: "f0_shift" (flite clustergen), "f0_mean" (diphone), "" (not)
    f0_mean: float = 0.0  # the voice's mean f0 in Hz, for pitch "f0_mean"


# `flite -lv` lists kal (8 kHz: kal16 is the same speaker at 16 kHz) and awb_time (a
# limited-domain voice that only says times) too. festival's kal_diphone is flite's kal16 speaker.
ENGINE_VOICES = (
    EngineVoice("flite", "kal16", "kal", "M", "flite", "f0_mean", 95.0),
    EngineVoice("flite", "awb", "awb", "M", "flite", "f0_shift"),
    EngineVoice("flite", "rms", "rms", "M", "flite", ""),  # takes neither f0_shift nor a target f0
    EngineVoice("flite", "slt", "slt", "F", "flite", "f0_shift"),
    EngineVoice("festival", "kal_diphone", "kal", "M", "festvox-kallpc16k", "f0_mean", 105.0),
    EngineVoice("festival", "ked_diphone", "ked", "M", "festvox-kdlpc16k", "f0_mean", 105.0),
    # HTS (an HMM voice trained on CMU ARCTIC's slt): festival 2.5 ignores the engine's -fm
    # (pitch) option, so its voices, like rms's, differ by rate and warp (which moves f0) only.
    EngineVoice("festival", "cmu_us_slt_arctic_hts", "slt", "F", "festvox-us-slt-hts", ""),
)
# Families only the test split hears: slt, the most natural voice here (festival's HTS voice and
# flite's clustergen voice of one recorded speaker), and ked, a diphone speaker train never hears.
TEST_FAMILIES = ("ked", "slt")
ENGINE_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite",
                   "festival": "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"}

# English text other than the grammar, offline: Debian's `fortunes` and `fortunes-min` packages
# (fortune cookies: quotations, jokes, verse; about 12,700 sentences of 3-30 words from these
# files through `read_text_file(path, "prose")`, 14,000 distinct words). Files of code, jargon,
# ASCII art and the like are left out.
FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("art", "education", "food", "fortunes", "humorists", "kids", "law", "literature",
                 "love", "miscellaneous", "people", "pets", "platitudes", "politics", "science",
                 "sports", "wisdom", "work")

# Estimated seconds of speech per character of text at 175 words per minute (measured on the
# grammar's sentences), used only to turn --hours-train into a number of utterances.
_SECONDS_PER_CHAR_AT_175 = 0.051


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. The same config (and engine versions) give the same files."""

    seed: int = 0  # seeds texts, the voice split, rates, pitches and noise
    train_utts: int = 2000  # utterances in train (ignored when hours_train is set)
    dev_utts: int = 100  # utterances in dev
    test_utts: int = 100  # utterances in test (voices never used in train)
    hours_train: float | None = None  # if set: enough train utterances for about this many hours
    text_file: str | None = None  # sentences instead of the grammar
    text_format: str = "lines"  # text_file: "lines", "prose" (see prose_sentences) or "wordnet"
    grammar_share: float = 0.0  # with text_file: this share of each split's utterances reads the grammar
    engines: tuple[str, ...] = ENGINES  # synthesisers to use, of ENGINES
    dev_voices: int = 12  # voices reserved for dev (train families; at most half their voices)
    test_voices: int = 16  # voices reserved for test (TEST_FAMILIES': at most as many as they have)
    voices_per_engine_voice: int = 8  # speakers made of each flite/festival voice (rate, pitch, warp)
    utts_per_chapter: int = 25  # utterances per <speaker>/<chapter> folder at most
    rate_range: tuple[float, float] = (0.75, 1.3)  # voices' speaking rates, x the engine's own
    rate_jitter: float = 0.05  # per utterance: rate *= 1 + uniform(-jitter, jitter)
    pitch_range: tuple[int, int] = (30, 70)  # espeak-ng voices' pitch (-p, 0-99)
    pitch_jitter: int = 6  # per utterance: espeak-ng pitch += uniform(-jitter, jitter)
    f0_range: tuple[float, float] = (0.85, 1.2)  # flite/festival voices' f0, x the voice's own
    f0_jitter: float = 0.04  # per utterance: f0 factor *= 1 + uniform(-jitter, jitter)
    warp_range: tuple[float, float] = (0.92, 1.1)  # flite/festival voices' formant and f0 warp
    # Raised voices: this many of each male recorded voice's speakers (families train hears only)
    # get a shorter vocal tract and a higher f0, in the range of women's voices (formants about
    # 15-20% higher, f0 1.7-2x): without them every recorded voice train hears is a man's.
    raised_voices: int = 3
    raised_warp_range: tuple[float, float] = (1.14, 1.22)  # formant and f0 warp of a raised voice
    raised_f0_range: tuple[float, float] = (1.35, 1.6)  # and its f0 x the voice's own, before warp
    augment: bool = True  # random level and a little background noise per utterance
    level_db: tuple[float, float] = (-14.0, -1.0)  # peak level range, dB full scale (augment)
    snr_db: tuple[float, float] = (25.0, 45.0)  # background noise's signal-to-noise ratio range, dB (augment)
    # Its colour: power spectrum ~ 1 / f^exponent, the exponent drawn per utterance (0 white, 1
    # pink, 2 brown), as rooms' noise falls with frequency. White noise at these SNRs covers the
    # speech above 5 kHz (measured: the 5-8 kHz log-energy's 5-95% range 8.8 -> 4.1; real read
    # speech 11.6), so that the model would never learn what real speech does there.
    noise_exponent: tuple[float, float] = (1.0, 2.0)
    keep_silence: float = 0.1  # seconds of silence kept before and after the speech


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker."""

    speaker: int  # numeric speaker id, as in LibriSpeech
    engine: str  # "espeak-ng", "flite" or "festival"
    name: str  # the engine's voice: "en-us+m3" (espeak-ng -v), "awb", "cmu_us_slt_arctic_hts"
    family: str  # who it comes from: "espeak", or the recorded speaker ("kal", "slt", ...)
    sex: str  # "F" or "M"
    rate: float  # base speaking rate, x the engine's own (espeak-ng: x ESPEAK_WPM)
    pitch: float  # base pitch: espeak-ng -p (0-99); flite/festival: f0 x the voice's own
    warp: float = 1.0  # formants and f0 x warp by resampling, duration compensated (1: none)

    def describe(self) -> str:
        """One line: engine:voice, rate, pitch and warp, e.g. "flite:awb rate 1.12 f0 0.93 warp 1.04"."""
        if self.engine == "espeak-ng":
            return (f"espeak-ng:{self.name} rate {self.rate:.2f} ({round(ESPEAK_WPM * self.rate)} wpm) "
                    f"pitch {self.pitch:.0f}")
        return f"{self.engine}:{self.name} rate {self.rate:.2f} f0 {self.pitch:.2f} warp {self.warp:.3f}"


@dataclass(frozen=True)
class Utterance:
    """One utterance to synthesise."""

    id: str  # "<speaker>-<chapter>-<NNNN>"
    text: str  # normalised transcript (A-Z, apostrophe, spaces)
    rate: float  # speaking rate, x the engine's own
    pitch: float  # espeak-ng -p, or f0 x the voice's own (see Voice.pitch)
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
    text_lines_skipped: int = 0  # lines (or prose sentences) of --text dropped, see read_text_file
    lm_sentences: int = 0  # sentences written to LM_TEXT

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
            lines.append(f"skipped {self.text_lines_skipped} text lines or sentences (digits, "
                         "letters outside A-Z, or prose outside 3-30 words)")
        lines.append(f"LM text: {self.lm_sentences} sentences, none read by dev or test -> "
                     f"{self.out_dir / LM_TEXT}")
        lines.append(f"corpus: {self.out_dir}")
        return "\n".join(lines)


# --- voices and texts ----------------------------------------------------------------------------
def text_seed(seed: int, split: str) -> int:
    """The seed of `sentence_generator` for `split`'s texts: split texts are independent streams."""
    return derive_seed(seed, "text", split)


def _check_engines(engines: Sequence[str]) -> None:
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise DataError(f"unknown engine {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(ENGINES)}")


def voice_catalogue(config: SynthConfig) -> list[Voice]:
    """Every voice of `config.engines`, with a seeded rate, pitch and warp each; ids from 100.

    espeak-ng: every English variant x voice variant. flite and festival: each of ENGINE_VOICES
    `voices_per_engine_voice` times, the last `raised_voices` of a man's voice of a train family
    raised (`raised_warp_range`, `raised_f0_range`). A voice's id and settings do not depend on
    `engines`.
    """
    _check_engines(config.engines)
    rng = random.Random(derive_seed(config.seed, "voices"))
    voices = []
    for language, variant in itertools.product(ENGLISH_VARIANTS, VOICE_VARIANTS):
        voices.append(Voice(FIRST_SPEAKER_ID + len(voices), "espeak-ng", f"{language}+{variant}",
                            "espeak", "F" if variant in _FEMALE_VARIANTS else "M",
                            round(rng.uniform(*config.rate_range), 3), rng.randint(*config.pitch_range)))
    for base in ENGINE_VOICES:
        rng = random.Random(derive_seed(config.seed, "voices", base.engine, base.name))
        raised = config.raised_voices if base.sex == "M" and base.family not in TEST_FAMILIES else 0
        for k in range(config.voices_per_engine_voice):
            rate = round(rng.uniform(*config.rate_range), 3)
            f0 = round(rng.uniform(*config.f0_range), 3) if base.pitch else 1.0
            warp = round(rng.uniform(*config.warp_range) * 160) / 160  # rate x warp: whole 100 Hz
            if k >= config.voices_per_engine_voice - raised:  # the last ones: ids of the others stay
                f0 = round(rng.uniform(*config.raised_f0_range), 3) if base.pitch else 1.0
                warp = round(rng.uniform(*config.raised_warp_range) * 160) / 160
            voices.append(Voice(FIRST_SPEAKER_ID + len(voices), base.engine, base.name, base.family,
                                base.sex, rate, f0, warp))
    return [v for v in voices if v.engine in config.engines]


def _take_balanced(voices: Sequence[Voice], count: int, seed: int) -> tuple[list[Voice], list[Voice]]:
    """(`count` voices of a seeded shuffle, picked round-robin over the engine voices, the rest).

    espeak-ng counts as one engine voice; flite's and festival's slt are two.
    """
    order = list(voices)
    random.Random(seed).shuffle(order)
    by_source: dict[tuple[str, str], list[Voice]] = {}
    for voice in order:
        key = (voice.engine, "" if voice.engine == "espeak-ng" else voice.name)
        by_source.setdefault(key, []).append(voice)
    queues = [by_source[key] for key in sorted(by_source)]
    picked: list[Voice] = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    chosen = {v.speaker for v in picked}
    return picked, [v for v in voices if v.speaker not in chosen]


def split_voices(config: SynthConfig) -> dict[str, list[Voice]]:
    """The voices of each split; no voice is in two splits, no test family in train or dev.

    Test: `test_voices` voices of TEST_FAMILIES, or all they have (without their engines: of the
    other families, new combinations of espeak-ng variants as before); dev: `dev_voices` voices of
    the other families (at most half of them); train: the rest. Picks are seeded and spread
    evenly over the engine voices.
    """
    voices = voice_catalogue(config)
    if config.dev_voices < 1 or config.test_voices < 1:
        raise DataError("dev_voices and test_voices must be at least 1")
    held_out = [v for v in voices if v.family in TEST_FAMILIES]
    seen = [v for v in voices if v.family not in TEST_FAMILIES]
    if held_out:
        test_count = min(config.test_voices, len(held_out))
        dev_count = min(config.dev_voices, len(seen) // 2)  # fewer engines: keep most for train
    elif config.dev_voices + config.test_voices >= len(seen):
        raise DataError(f"dev_voices + test_voices must leave voices for train "
                        f"(catalogue has {len(voices)})")
    else:
        test_count, dev_count = config.test_voices, config.dev_voices
    test, rest = _take_balanced(held_out or seen, test_count, derive_seed(config.seed, "split", "test"))
    dev, train = _take_balanced(seen if held_out else rest, dev_count,
                                derive_seed(config.seed, "split", "dev"))
    return {split: sorted(v, key=lambda voice: voice.speaker)
            for split, v in (("train", train), ("dev", dev), ("test", test))}


def describe_voices(config: SynthConfig) -> str:
    """The voices of each split, one a line: speaker id, sex, family, engine:voice and settings."""
    lines = []
    for split, voices in split_voices(config).items():
        engines = sorted({v.engine for v in voices})
        families = sorted({v.family for v in voices})
        lines.append(f"{split}: {len(voices)} voices (engines {', '.join(engines)}; "
                     f"families {', '.join(families)})")
        lines += [f"  {v.speaker}  {v.sex}  {v.family:<6}  {v.describe()}" for v in voices]
    return "\n".join(lines)


_NUMBER = re.compile(r"(?<!\w)(?<!\d[.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?!\w|[.,]\d)")


def spell_numbers(text: str) -> str:
    """Whole numbers below a million written as words: "room 42" -> "room forty two".

    Numbers glued to letters ("3rd", "mp3"), decimals and larger numbers are left as digits, so
    that `read_text_file` skips their lines: how they are read aloud is not one thing.
    """
    def words(match: re.Match) -> str:
        value = int(match.group().replace(",", ""))
        return number_words(value) if value < 1_000_000 else match.group()

    return _NUMBER.sub(words, text)


def prose_sentences(text: str) -> list[str]:
    """Sentences of prose: paragraphs (blank lines or `%` lines between them, as in fortune
    files) are joined and cut after `.`, `!` or `?`; attribution lines ("-- Mark Twain") are
    dropped. Returns the sentences as written (not normalised)."""
    sentences = []
    text = re.sub(r"^%\s*$", "", text, flags=re.MULTILINE)
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines()]
        body = " ".join(line for line in lines if line and not line.startswith("--"))
        sentences += [s.strip() for s in re.split(r"(?<=[.!?])[\"')\]]*\s+", body) if s.strip()]
    return sentences


PROSE_WORDS = (3, 30)  # words a sentence of prose needs, at least and at most
TEXT_FORMATS = ("lines", "prose", "wordnet")

# WordNet's database (Debian's `wordnet-base`): the glosses of its data.* files hold about 48,000
# example sentences in double quotes ("the oceans are teeming with life"), everyday English over
# a vocabulary of tens of thousands of words: training text far wider than the grammar's.
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def wordnet_examples(text: str) -> list[str]:
    """The example sentences of one WordNet data file: the double-quoted parts of each gloss
    (after its `|`); the licence header (lines starting with two spaces) is left out."""
    examples = []
    for line in text.splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        examples += re.findall(r'"([^"]+)"', line.split("|", 1)[1])
    return examples


def _read_wordnet(path: Path) -> list[str]:
    """Example sentences of a WordNet data file, or of WORDNET_FILES in a WordNet folder."""
    files = [path / name for name in WORDNET_FILES] if path.is_dir() else [path]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{path}: not a WordNet folder (no {', '.join(missing)}; "
                        "apt-get install wordnet-base)")
    return [example for f in files for example in wordnet_examples(read_text(f, "WordNet file"))]


def read_text_file(path: str | os.PathLike, text_format: str = "lines") -> tuple[list[str], int]:
    """Sentences of a text file, normalised; returns (sentences, lines skipped).

    `text_format` "lines": one sentence a line; "prose": `prose_sentences`, of PROSE_WORDS words;
    "wordnet": the example sentences of a WordNet data file or folder (`wordnet_examples`), of
    PROSE_WORDS words.
    Numbers are spelt (`spell_numbers`); blank lines are ignored; a sentence that still holds
    digits or letters outside A-Z after normalisation (or prose of another length) is skipped.
    The engines read the normalised text, so audio and transcript agree.
    Raises DataError naming the file when it is missing or has no usable sentence.
    """
    if text_format not in TEXT_FORMATS:
        raise DataError(f"text format must be one of {', '.join(TEXT_FORMATS)}, got {text_format!r}")
    path = Path(path)
    if text_format == "wordnet":
        pieces = _read_wordnet(path)
    else:
        raw = read_text(path, "text file")
        pieces = raw.splitlines() if text_format == "lines" else prose_sentences(raw)
    min_words, max_words = (1, 10**6) if text_format == "lines" else PROSE_WORDS
    sentences, skipped = [], 0
    for piece in pieces:
        text = normalize_text(spell_numbers(piece))
        if not text:
            continue
        if (any(not ("A" <= c <= "Z" or c in "' ") for c in text)
                or not min_words <= len(text.split()) <= max_words):
            skipped += 1
            continue
        sentences.append(text)
    if not sentences:
        raise DataError(f"{path}: no usable sentence (need English words; {skipped} "
                        "skipped for digits, letters outside A-Z or length)")
    return sentences, skipped


def _file_stream(sentences: Sequence[str], seed: int) -> Iterator[str]:
    """The file's sentences in a seeded order, reshuffled on each pass."""
    rng = random.Random(seed)
    while True:
        order = list(sentences)
        rng.shuffle(order)
        yield from order


def _estimate_seconds(text: str, rate: float) -> float:
    return len(text) * _SECONDS_PER_CHAR_AT_175 / rate + 0.2


def _reading_order(voices: Sequence[Voice]) -> Iterator[Voice]:
    """Who reads utterance 0, 1, 2, ...: the families in turn, each cycling through its voices,
    whose engine voices alternate (slt: flite's, festival's, flite's, ...)."""
    by_source: dict[str, dict[tuple[str, str], list[Voice]]] = {}
    for voice in voices:
        source = by_source.setdefault(voice.family, {})
        source.setdefault((voice.engine, voice.name if voice.engine != "espeak-ng" else ""),
                          []).append(voice)
    families = []
    for family in sorted(by_source):
        queues = [by_source[family][key] for key in sorted(by_source[family])]
        families.append([v for group in itertools.zip_longest(*queues) for v in group if v])
    for index in itertools.count():
        family = families[index % len(families)]
        yield family[(index // len(families)) % len(family)]


def _utterance_prosody(voice: Voice, rng: random.Random, config: SynthConfig) -> tuple[float, float]:
    """(rate, pitch) of one utterance: the voice's, jittered."""
    rate = round(voice.rate * (1 + rng.uniform(-config.rate_jitter, config.rate_jitter)), 3)
    if voice.engine == "espeak-ng":
        pitch = min(99, max(0, voice.pitch + rng.randint(-config.pitch_jitter, config.pitch_jitter)))
    elif engine_voice(voice).pitch:
        pitch = round(voice.pitch * (1 + rng.uniform(-config.f0_jitter, config.f0_jitter)), 3)
    else:
        pitch = voice.pitch
    return rate, pitch


def plan_corpus(config: SynthConfig, text_sentences: Sequence[str] | None = None
                ) -> dict[str, list[Chapter]]:
    """Every chapter of every split, with its utterances, texts, rates and pitches.

    The plan depends on `config` (and the text file's sentences) only: synthesis just follows it.
    Utterances of a split are read by its families in turn, each family cycling through its
    voices (`_reading_order`), so that each family has an equal share; each voice's utterances
    are cut into chapters of `utts_per_chapter`; chapter id = speaker id * 1000 + chapter index.
    Texts: train, dev and test each read `sentence_generator(text_seed(seed, split))`; a text
    file is one seeded stream read by test, then dev, then train, so the splits share no line
    while the file is long enough. With a text file, `grammar_share` of each split's utterances
    (a seeded draw per utterance) read the split's grammar stream instead.
    """
    for name, minimum in (("train_utts", 0), ("dev_utts", 0), ("test_utts", 0),
                          ("utts_per_chapter", 1)):
        if getattr(config, name) < minimum:
            raise DataError(f"{name} must be at least {minimum}, got {getattr(config, name)}")
    if config.hours_train is not None and config.hours_train <= 0:
        raise DataError(f"hours_train must be positive, got {config.hours_train}")
    if not 0.0 <= config.grammar_share <= 1.0:
        raise DataError(f"grammar_share must be in [0, 1], got {config.grammar_share}")
    voices = split_voices(config)
    file_texts = None if text_sentences is None else _file_stream(text_sentences,
                                                                  derive_seed(config.seed, "file"))
    plan = {}
    for split in ("test", "dev", "train"):
        grammar = sentence_generator(text_seed(config.seed, split))
        mix = random.Random(derive_seed(config.seed, "grammar share", split))
        rng = random.Random(derive_seed(config.seed, "utterances", split))
        count = {"train": config.train_utts, "dev": config.dev_utts, "test": config.test_utts}[split]
        by_voice: dict[int, list[tuple[str, float, float]]] = {}
        total_seconds = 0.0
        readers = _reading_order(voices[split])
        for index in itertools.count():
            if split == "train" and config.hours_train is not None:
                if total_seconds >= config.hours_train * 3600:
                    break
            elif index >= count:
                break
            voice = next(readers)
            from_file = file_texts is not None and mix.random() >= config.grammar_share
            text = next(file_texts if from_file else grammar)
            rate, pitch = _utterance_prosody(voice, rng, config)
            by_voice.setdefault(voice.speaker, []).append((text, rate, pitch))
            total_seconds += _estimate_seconds(text, rate)
        chapters = []
        for voice in voices[split]:
            items = by_voice.get(voice.speaker, [])
            for k in range(0, len(items), config.utts_per_chapter):
                chapter_id = voice.speaker * 1000 + k // config.utts_per_chapter
                utterances = tuple(
                    Utterance(f"{voice.speaker}-{chapter_id}-{n:04d}", text, rate, pitch,
                              derive_seed(config.seed, "audio", split, voice.speaker, chapter_id, n))
                    for n, (text, rate, pitch) in enumerate(items[k:k + config.utts_per_chapter]))
                chapters.append(Chapter(split, voice, chapter_id, utterances))
        plan[split] = chapters
    return {split: plan[split] for split in SPLITS}




# --- synthesis -----------------------------------------------------------------------------------
def engine_voice(voice: Voice) -> EngineVoice:
    """The flite or festival voice that `voice` is made of (KeyError for espeak-ng voices)."""
    for base in ENGINE_VOICES:
        if (base.engine, base.name) == (voice.engine, voice.name):
            return base
    raise KeyError(f"{voice.engine}:{voice.name}")


def check_engine(engine: str) -> str:
    """The path of `engine`'s program; DataError naming the Debian package when it is missing."""
    path = shutil.which(engine)
    if path is None:
        others = ",".join(e for e in ENGINES if e != engine)
        raise DataError(f"{engine} not found on PATH; install it with: apt-get install "
                        f"{ENGINE_PACKAGES[engine]} (or leave it out: --engines {others})")
    return path


def check_espeak() -> str:
    """The path of espeak-ng; DataError with the install command when it is missing."""
    return check_engine("espeak-ng")


def check_voices(voices: Iterable[Voice]) -> None:
    """DataError when an engine, or one of its voices, is missing (engines silently fall back)."""
    voices = list(voices)
    engines = {v.engine for v in voices}
    missing: list[str] = []
    if "espeak-ng" in engines:
        espeak = check_engine("espeak-ng")
        languages = _program_list([espeak, "--voices=en"], column=1)
        variants = {name.split("/", 1)[-1]
                    for name in _program_list([espeak, "--voices=variant"], column=4)}
        names = {v.name for v in voices if v.engine == "espeak-ng"}
        missing += sorted({n.split("+")[0] for n in names if n.split("+")[0] not in languages}
                          | {n.split("+")[1] for n in names if n.split("+")[1] not in variants})
        if missing:
            raise DataError(f"this espeak-ng lacks the voices {', '.join(missing)} "
                            "(see `espeak-ng --voices=en` and `espeak-ng --voices=variant`)")
    for engine in ("flite", "festival"):
        if engine not in engines:
            continue
        available = _flite_voices() if engine == "flite" else _festival_voices()
        needed = {engine_voice(v) for v in voices if v.engine == engine}
        lacking = sorted((b for b in needed if b.name not in available), key=lambda b: b.name)
        if lacking:
            raise DataError(f"{engine} lacks the voices {', '.join(b.name for b in lacking)}; "
                            "install them with: apt-get install "
                            f"{' '.join(sorted({b.package for b in lacking}))}")


def _program_list(command: list[str], column: int) -> set[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DataError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return {line.split()[column] for line in result.stdout.splitlines()[1:]
            if len(line.split()) > column}


def _flite_voices() -> set[str]:
    result = subprocess.run([check_engine("flite"), "-lv"], capture_output=True, text=True, check=False)
    return set(result.stdout.replace("Voices available:", "").split())


def _festival_voices() -> set[str]:
    result = subprocess.run([check_engine("festival"), "--pipe"], input="(print (voice.list))\n",
                            capture_output=True, text=True, check=False)
    return set(result.stdout.replace("(", " ").replace(")", " ").split())


def _spoken(text: str) -> str:
    """How a transcript is given to an engine: lower case (words, not letters) with a full stop,
    or a question mark when it is a question (sentence intonation)."""
    return text.lower() + ("?" if is_question(text) else ".")


def espeak_synthesize(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Speak `text` with espeak-ng voice `voice` at `speed` wpm and pitch `pitch` (0-99);
    returns (samples (n,) float32 in [-1, 1], sample rate Hz)."""
    command = [check_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout",
               _spoken(text)]
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


def _read_wav(path: Path, engine: str, text: str) -> tuple[np.ndarray, int]:
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, OSError) as error:
        raise DataError(f"{engine} wrote no audio for {text!r}: {error}") from None
    if len(samples) == 0:
        raise DataError(f"{engine} wrote empty audio for {text!r}")
    return samples.mean(axis=1), rate


def flite_synthesize(voice: Voice, utterance: Utterance, workdir: Path) -> tuple[np.ndarray, int]:
    """Speak the utterance with flite at its rate and pitch; (samples (n,) float32, Hz).

    Durations are stretched by warp / rate: the warp's resampling shortens them by 1 / warp.
    """
    base, text = engine_voice(voice), utterance.text
    path = workdir / f"{utterance.id}.wav"
    command = [check_engine("flite"), "-voice", voice.name,
               "--setf", f"duration_stretch={voice.warp / utterance.rate:.4f}"]
    if base.pitch == "f0_shift":
        command += ["--setf", f"f0_shift={utterance.pitch:.4f}"]
    elif base.pitch == "f0_mean":
        command += ["--setf", f"int_f0_target_mean={base.f0_mean * utterance.pitch:.2f}"]
    result = subprocess.run(command + ["-t", _spoken(text), "-o", str(path)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise DataError(f"flite failed on {text!r} with voice {voice.name}: {result.stderr.strip()}")
    return _read_wav(path, "flite", text)


def _festival_script(voice: Voice, utterances: Sequence[Utterance], workdir: Path) -> str:
    """Scheme that has festival say each utterance into workdir/<id>.wav, one process a chapter."""
    base = engine_voice(voice)
    lines = [f"(voice_{voice.name})"]
    for u in utterances:
        if base.pitch == "f0_mean":
            mean = base.f0_mean * u.pitch
            lines.append(f"(Parameter.set 'Duration_Stretch {voice.warp / u.rate:.4f})")
            lines.append(f"(set! int_lr_params '((target_f0_mean {mean:.2f}) (target_f0_std "
                         f"{0.14 * mean:.2f}) (model_f0_mean 170) (model_f0_std 34)))")
        else:  # HTS: hts_engine's own speed option (festival's Duration_Stretch has no effect)
            lines.append(f"(set! hts_engine_params (append {voice.name}::hts_engine_params "
                         f"(list (list \"-r\" {u.rate / voice.warp:.4f}))))")
        # the text holds only a-z, apostrophes, spaces and . or ?: safe in a Scheme string
        lines.append(f"(utt.save.wave (utt.synth (Utterance Text \"{_spoken(u.text)}\")) "
                     f"\"{workdir / (u.id + '.wav')}\" 'riff)")
    return "\n".join(lines) + "\n"


def festival_synthesize(voice: Voice, utterances: Sequence[Utterance], workdir: Path
                        ) -> list[tuple[np.ndarray, int]]:
    """Speak the utterances with one festival process; [(samples (n,) float32, Hz)] in order."""
    script = _festival_script(voice, utterances, workdir)
    result = subprocess.run([check_engine("festival"), "--pipe"], input=script, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise DataError(f"festival failed with voice {voice.name}: {result.stderr.strip()[-300:]}")
    return [_read_wav(workdir / f"{u.id}.wav", "festival", u.text) for u in utterances]


def speak(voice: Voice, utterances: Sequence[Utterance]) -> list[tuple[np.ndarray, int]]:
    """The engine's raw audio of each utterance, [(samples (n,) float32, sample rate Hz)]."""
    if voice.engine == "espeak-ng":
        return [espeak_synthesize(u.text, voice.name, round(ESPEAK_WPM * u.rate), round(u.pitch))
                for u in utterances]
    with tempfile.TemporaryDirectory(prefix="asr-synth-") as tmp:
        if voice.engine == "flite":
            return [flite_synthesize(voice, u, Path(tmp)) for u in utterances]
        return festival_synthesize(voice, utterances, Path(tmp))


def trim_silence(samples: np.ndarray, sample_rate: int, keep: float = 0.1,
                 threshold_db: float = -45.0) -> np.ndarray:
    """Leave exactly `keep` seconds of silence before and after the speech in `samples` (n,).

    espeak-ng starts speaking within a few milliseconds and ends with a third of a second of
    silence, flite and festival leave silence at both ends: what is missing is padded with
    zeros, what is more is cut. Silence: 10 ms frames whose RMS is
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


def coloured_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise (length,) of unit power (mean square) whose power spectrum falls as 1 / f^exponent
    (0: white)."""
    noise = rng.standard_normal(length)
    if exponent != 0.0 and length >= 2:
        freqs = np.fft.rfftfreq(length)
        freqs[0] = freqs[1]  # no infinite DC gain
        noise = np.fft.irfft(np.fft.rfft(noise) * freqs ** (-exponent / 2), length)
    return noise / max(float(np.sqrt(np.mean(noise ** 2))), 1e-12)


def augment(samples: np.ndarray, rng: np.random.Generator, level_db: tuple[float, float],
            snr_db: tuple[float, float], exponent: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Scale the peak to a random level (dBFS) and add noise of a random colour (`coloured_noise`,
    exponent uniform in the range) at a random SNR (dB)."""
    peak = float(np.abs(samples).max())
    if peak == 0:
        return samples
    level = rng.uniform(*level_db)
    samples = samples * (10 ** (level / 20) / peak)
    speech_power = float(np.mean(samples ** 2))
    snr = rng.uniform(*snr_db)
    colour = rng.uniform(*exponent)
    noise = coloured_noise(len(samples), colour, rng) * np.sqrt(speech_power / 10 ** (snr / 10))
    return (samples + noise).astype(np.float32)


PEAK_DBFS = -3.0  # every engine's audio is peak-normalised to this before augmentation


def finish_audio(samples: np.ndarray, rate: int, voice: Voice, utterance: Utterance,
                 config: SynthConfig) -> np.ndarray:
    """An engine's samples (n,) at `rate` Hz -> the 16 kHz int16 samples (m,) of the corpus:
    warp and resample, trim silence, peak-normalise, augment."""
    import torch

    # Read as if recorded at rate x warp: formants and f0 move by warp, durations by 1 / warp
    # (the engine stretched them by warp beforehand).
    source_rate = rate if voice.warp == 1.0 else round(rate * voice.warp)
    samples = resample(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)),
                       source_rate, SAMPLE_RATE).numpy()
    samples = trim_silence(samples, SAMPLE_RATE, keep=config.keep_silence)
    peak = float(np.abs(samples).max()) if len(samples) else 0.0
    if peak > 0:
        samples = (samples * (10 ** (PEAK_DBFS / 20) / peak)).astype(np.float32)
    if config.augment:
        samples = augment(samples, np.random.default_rng(utterance.seed), config.level_db,
                          config.snr_db, config.noise_exponent)
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def render_utterance(utterance: Utterance, voice: Voice, config: SynthConfig) -> np.ndarray:
    """The 16 kHz int16 samples (n,) of one utterance: speak, resample, trim, augment."""
    samples, rate = speak(voice, [utterance])[0]
    return finish_audio(samples, rate, voice, utterance, config)


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
    raw = speak(chapter.voice, chapter.utterances)
    for utterance, (samples, rate) in zip(chapter.utterances, raw):
        audio = finish_audio(samples, rate, chapter.voice, utterance, config)
        _write_flac(folder / f"{utterance.id}.flac", audio)
        durations.append(len(audio) / SAMPLE_RATE)
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
                if key in ("augment", "level_db", "snr_db", "noise_exponent", "keep_silence")}
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


def lm_text(plan: dict[str, list[Chapter]], text_sentences: Sequence[str] | None) -> list[str]:
    """Text for an n-gram LM, one sentence a line: the train split's sentences and every sentence
    of the text file that neither dev nor test reads (as LibriSpeech's LM corpus leaves out the
    books of its dev and test sets), each once, in a fixed order."""
    held_out = {u.text for split in ("dev", "test") for c in plan[split] for u in c.utterances}
    lines = [*(u.text for c in plan["train"] for u in c.utterances), *(text_sentences or ())]
    return [s for s in dict.fromkeys(lines) if s not in held_out]


def generate_corpus(out_dir: str | os.PathLike, config: SynthConfig = SynthConfig(),
                    num_workers: int | None = None) -> CorpusSummary:
    """Write the synthetic corpus (train, dev, test) under `out_dir` in LibriSpeech layout.

    `num_workers` processes synthesise chapters (None: the CPU count; 0 or 1: this process).
    Complete chapters and splits already on disk are kept (resumable); a split written with other
    options is a DataError. Raises DataError when an engine of `config.engines`, or one of its
    voices, is missing.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    text_sentences, skipped_lines = (None, 0)
    if config.text_file is not None:
        text_sentences, skipped_lines = read_text_file(config.text_file, config.text_format)
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
    lm_lines = lm_text(plan, text_sentences)
    atomic_write_text(out_dir / LM_TEXT, "".join(line + "\n" for line in lm_lines))
    return CorpusSummary(out_dir, tuple(summaries), written, time.perf_counter() - started,
                         skipped_lines, len(lm_lines))
