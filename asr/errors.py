"""Exceptions for errors a user can act on.

Every error that a user can fix (a missing file, a corrupt audio file, a bad config key, an
utterance too short for its transcript) is raised as an `AsrError` subclass whose message names
the file, line or key. The command line turns any `AsrError` into one line on stderr and a
non-zero exit; anything else is a bug and keeps its traceback.
"""


class AsrError(Exception):
    """Base class of all user-facing errors."""


class AudioError(AsrError):
    """An audio file is missing, empty, truncated or cannot be decoded."""


class ConfigError(AsrError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


class DataError(AsrError):
    """A manifest, transcript, corpus folder or download is missing or malformed."""
