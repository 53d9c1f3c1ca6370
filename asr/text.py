"""Transcript normalisation and the character tokenizer.

`normalize_text` turns any transcript into LibriSpeech style: upper case, letters and the
apostrophe, words separated by single spaces. Scoring picks a normaliser by name
(`get_normalizer`): `librispeech` (that one), `none` (whitespace only) or `english` (Whisper's
English normaliser: numbers, punctuation, casing, spelling variants). The `Tokenizer` maps such text to character ids
for CTC: id 0 is the blank, the space between words is the token `|`, then one token per
character. It is stored as `tokens.txt`, one `TOKEN ID` pair per line.

Characters outside the vocabulary are skipped when encoding but always counted in
`Tokenizer.oov`, so that the caller can report them (`Tokenizer.oov_report()`).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

from asr.errors import ConfigError, DataError
from asr.fileio import atomic_open, read_text

BLANK = "<blank>"  # the CTC blank, always id 0
SPACE = "|"  # the word separator token

# Characters that stand for an apostrophe in real-world text: right/left single quotes,
# modifier letter apostrophe, prime, grave accent, acute accent, fullwidth apostrophe.
_APOSTROPHES = str.maketrans({c: "'" for c in "\u2019\u2018\u02bc\u2032`\u00b4\uff07\u201b"})
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Normalise a transcript to LibriSpeech style.

    Rules, in order:
      * curly and other apostrophe-like marks become `'`;
      * Unicode compatibility decomposition (NFKD), then combining marks are dropped, so
        `café` becomes `CAFE` and the ligature `ﬁ` becomes `FI`;
      * upper case;
      * hyphens and dashes (Unicode category Pd) become spaces: `well-known` -> `WELL KNOWN`;
      * any other punctuation, symbol or control character is dropped: `U.S.A.` -> `USA`;
      * whitespace runs become one space, ends are stripped, and words made of apostrophes
        only (stray quote marks) are removed.

    Letters outside A-Z (e.g. Greek) and digits are kept, not dropped, so that the tokenizer
    counts and reports them as out-of-vocabulary instead of losing them silently.
    """
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    out = []
    for char in text.upper():
        if char == "'":
            out.append(char)
            continue
        category = unicodedata.category(char)
        if category == "Pd" or char.isspace():
            out.append(" ")
        elif category[0] in "PSCM":  # punctuation, symbols, controls, combining marks
            continue
        else:
            out.append(char)
    words = _SPACES.split("".join(out))
    return " ".join(w for w in words if w and w.strip("'"))


def squeeze_spaces(text: str) -> str:
    """The `none` normaliser: words as they are, separated by single spaces."""
    return " ".join(text.split())


def _english_normalizer() -> Callable[[str], str]:
    # Whisper's EnglishTextNormalizer, as packaged by `whisper-normalizer`: lower case; spelled
    # numbers become digits ("twenty five" -> "25", "one million" -> "1000000"); British spellings
    # become American ("colour" -> "color"); contractions and titles expanded ("won't" -> "will
    # not", "Mr." -> "mister"); punctuation, bracketed asides and fillers ("uh", "um") dropped.
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


NORMALIZERS = ("librispeech", "english", "none")  # the names `get_normalizer` knows


def get_normalizer(name: str) -> Callable[[str], str]:
    """The text normaliser called `name` (one of `NORMALIZERS`), a function str -> str.

    `librispeech` is `normalize_text`; `none` only squeezes whitespace (case and punctuation
    count); `english` is Whisper's English normaliser, for comparing with systems that write
    digits, punctuation and mixed case. Raises ConfigError for any other name.
    """
    if name == "librispeech":
        return normalize_text
    if name == "none":
        return squeeze_spaces
    if name == "english":
        return _english_normalizer()
    raise ConfigError(f"unknown normaliser {name!r}; choose one of {', '.join(NORMALIZERS)}")


class Tokenizer:
    """Character tokenizer for CTC: `<blank>` = 0, `|` = word separator, then characters.

    Attributes:
        tokens: the token of each id, `tokens[0] == BLANK`.
        blank_id: always 0.
        space_id: id of the `|` token.
        vocab_size: number of tokens, blank included (the model's output size).
        oov: Counter of characters that `encode` met but could not map; never reset
            implicitly, call `oov.clear()` to start a new count.
    """

    blank_id = 0

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if not tokens or tokens[0] != BLANK:
            raise DataError(f"token list must start with {BLANK!r} (id 0), got {tokens[:1]!r}")
        if SPACE not in tokens:
            raise DataError(f"token list has no word separator {SPACE!r}")
        seen = set()
        for token in tokens:
            if token in seen:
                raise DataError(f"token {token!r} appears twice in the token list")
            if not token or any(c.isspace() for c in token):
                raise DataError(f"token {token!r} is empty or contains whitespace")
            seen.add(token)
        self.tokens: list[str] = tokens
        self.space_id: int = tokens.index(SPACE)
        self._ids = {t: i for i, t in enumerate(tokens) if t not in (BLANK, SPACE)}
        self.oov: Counter[str] = Counter()

    @property
    def vocab_size(self) -> int:
        """Number of tokens including the blank."""
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"

    @classmethod
    def build(cls, texts: Iterable[str]) -> "Tokenizer":
        """Tokenizer over every character in `texts` (already normalised): blank, `|`, then
        the characters seen, sorted. Spaces map to `|`; a literal `|` in a text is not a token."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        chars -= {" ", SPACE}
        return cls([BLANK, SPACE, *sorted(chars)])

    def to_list(self) -> list[str]:
        """The tokens in id order (what a checkpoint stores)."""
        return list(self.tokens)

    @classmethod
    def from_list(cls, tokens: Sequence[str]) -> "Tokenizer":
        """Inverse of `to_list`."""
        return cls(tokens)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text`; a space becomes `|`.

        Characters outside the vocabulary are skipped and counted in `self.oov`.
        """
        ids = []
        space_id = self.space_id
        for char in text:
            if char == " ":
                ids.append(space_id)
                continue
            token_id = self._ids.get(char)
            if token_id is None:
                self.oov[char] += 1
            else:
                ids.append(token_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids: `|` becomes a space, blanks are ignored.

        No CTC collapse of repeats here; decoders collapse first. Raises IndexError on an id
        outside the vocabulary (a bug, not a user error).
        """
        out = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == self.blank_id:
                continue
            if token_id < 0 or token_id >= len(self.tokens):
                raise IndexError(f"token id {token_id} outside vocabulary of {len(self.tokens)}")
            out.append(" " if token_id == self.space_id else self.tokens[token_id])
        return "".join(out)

    def oov_report(self) -> str:
        """One line describing the out-of-vocabulary characters met so far, or "" if none.

        Example: "3 characters outside the vocabulary: 'é' x2, '1' x1".
        """
        if not self.oov:
            return ""
        total = sum(self.oov.values())
        listed = ", ".join(f"{c!r} x{n}" for c, n in self.oov.most_common())
        noun = "character" if total == 1 else "characters"
        return f"{total} {noun} outside the vocabulary: {listed}"

    def save(self, path: str | os.PathLike) -> None:
        """Write `tokens.txt` atomically: one `TOKEN ID` line per token, in id order."""
        with atomic_open(path, "w") as f:
            for i, token in enumerate(self.tokens):
                f.write(f"{token} {i}\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a `tokens.txt` written by `save`. DataError naming file and line when malformed."""
        path = Path(path)
        lines = read_text(path, "token file").splitlines()
        tokens = []
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{path}:{line_no}: expected 'TOKEN ID', got {line!r}")
            token, token_id = parts[0], int(parts[1])
            if token_id != len(tokens):
                raise DataError(f"{path}:{line_no}: expected id {len(tokens)} for {token!r}, got {token_id}")
            tokens.append(token)
        try:
            return cls(tokens)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
