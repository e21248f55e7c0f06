"""Config errors that name the file and the key path, and a "did you mean" hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(Exception):
    """``<file>: <key.path[1].name>: <message>``, the one format every config error uses."""

    def __init__(self, file: str, key_path: str, message: str) -> None:
        self.file = file
        self.key_path = key_path
        self.message = message
        where = f"{file}: {key_path}" if key_path else file
        super().__init__(f"{where}: {message}" if where else message)  # no file: the message names it


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
