"""``prefork-lb convert``: an nginx.conf (and its includes) -> the equivalent prefork-lb TOML.

Three steps, one module each: ``read`` (crossplane parses, includes expanded, hostile input
refused with ``file:line``), ``mapping`` (sans-IO: directives -> the TOML document plus the
report), ``toml_writer`` (sans-IO: the document -> TOML text).

Rules:
- The report is the ``notes``: one per directive that was skipped (``unsupported``) or
  mapped with a difference, each ``file:line: "directive args" ...``. They are also written at
  the top of the TOML as comments, so a converted file says what it left out.
- The same conversion serves ``prefork-lb convert`` and ``prefork-lb -c nginx.conf`` (a
  config file ending in ``.conf``: ``config.load`` converts it in memory on every load, so
  ``-t``, startup and reload all re-read the nginx files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from prefork_lb.convert.mapping import Note, map_config
from prefork_lb.convert.read import ConvertError, display, read, visible
from prefork_lb.convert.toml_writer import dumps


@dataclass(frozen=True, slots=True)
class Conversion:
    toml: str
    notes: tuple[Note, ...]
    files: tuple[str, ...]  # every nginx file read
    origins: dict[str, str]  # TOML key path -> "file:line" it came from

    @property
    def unsupported(self) -> tuple[Note, ...]:
        return tuple(n for n in self.notes if n.unsupported)

    def origin(self, key_path: str) -> str | None:
        return origin(self.origins, key_path)


def origin(origins: Mapping[str, str], key_path: str) -> str | None:
    """The nginx line a TOML key path (or its nearest recorded parent) came from."""
    path = key_path
    while path:
        if path in origins:
            return origins[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def is_nginx_conf(path: str) -> bool:
    """A config file in nginx syntax: its name ends in ``.conf``."""
    return path.endswith(".conf")


def convert_file(path: str) -> Conversion:
    """Read ``path`` and convert it; raises ConvertError (a message naming ``file:line``)."""
    root, files = read(path)
    mapped = map_config(root)
    notes = tuple(dict.fromkeys(mapped.notes))  # inherited rules note a line once
    base = os.path.dirname(os.path.abspath(path))
    head = [f"# converted from {display(os.path.abspath(path), base)} by prefork-lb convert"]
    head += [f"# {visible(str(n))}" for n in notes]
    text = "\n".join(head) + "\n\n" + dumps(mapped.doc, mapped.comments)
    return Conversion(text, notes, tuple(files), mapped.origins)


__all__ = ["Conversion", "ConvertError", "Note", "convert_file", "is_nginx_conf"]
