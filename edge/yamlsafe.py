"""Safe YAML reading for the files a user gives the edge: configurations and country files.

PyYAML's SafeLoader builds no objects, but it still expands aliases (nine
lines of nested aliases make a billion nodes), lets a repeated key silently
win, and reads ``0123`` or ``no`` under a text key as a number or a boolean.
``load_yaml`` refuses aliases before anything is expanded, refuses duplicate
keys and deep nesting with the key and line, caps the file's size, and reads
plain scalars under the keys it is told are text as the text written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: Largest file read (a real configuration or country file is a few kilobytes).
MAX_YAML_BYTES = 1 << 20
#: Deepest nesting of mappings and lists accepted (the configuration tree is four levels deep).
MAX_YAML_DEPTH = 32

_STR_TAG = "tag:yaml.org,2002:str"
#: Tags YAML gives plain scalars that look like numbers or booleans.
_NUMBER_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"}


class YamlError(ValueError):
    """A YAML file that cannot be read or is refused; the message names the file and, where it can, key and line."""


class _Refused(yaml.YAMLError):
    """A document the loader does not read; the message says where and why."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, deep nesting and duplicate keys, and keeps text keys as written."""

    def __init__(self, text: str, text_keys: set[str]) -> None:
        super().__init__(text)
        self.text_keys = text_keys
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # Refused before anything is expanded.
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                           "accepted; write the value out")
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise _Refused(f"line {self.peek_event().start_mark.line + 1}: nested deeper than "
                               f"{MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    # Not ``check_node``: that is PyYAML's own (is there another document?), which load_all and check_data call.
    def check_tree(self, node: yaml.Node, where: str = "") -> None:
        """Refuse duplicate keys, naming the key and both lines; tag plain scalars of text keys as strings."""
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = self.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                here = f"{where}.{key}" if where else str(key)
                if isinstance(key_node, yaml.ScalarNode):
                    line = key_node.start_mark.line + 1
                    if key in first:
                        raise _Refused(f"{here}: duplicate key at line {line} (first at line {first[key]})")
                    first[key] = line
                self.check_tree(value_node, here)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.check_tree(item, f"{where}[{i}]")
        elif (isinstance(node, yaml.ScalarNode) and node.style is None and node.tag in _NUMBER_TAGS
              and where in self.text_keys):
            node.tag = _STR_TAG  # the text as written: 0123 stays 0123, 1.10 stays 1.10


def _problem(exc: yaml.YAMLError) -> str:
    """A YAML error by line and column, without PyYAML's snippet of the line (it may hold a password)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)
    parts = []
    for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if text:
            parts.append(f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark else text)
    return ": ".join(parts)


def read_text(path: Path) -> str:
    """A configuration-sized text file (YAML, CSV): at most MAX_YAML_BYTES of UTF-8 (a BOM dropped); YamlError
    names the file when it cannot be read, is larger or is not UTF-8."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise YamlError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_YAML_BYTES:
        raise YamlError(f"{path}: larger than {MAX_YAML_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YamlError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def load_yaml(path: str | Path, text_keys: set[str] | frozenset[str] = frozenset()) -> Any:
    """Parse one YAML file safely; YamlError names the file and, where it can, the key and line.

    Refuses files over MAX_YAML_BYTES, text that is not UTF-8, aliases, nesting
    deeper than MAX_YAML_DEPTH and duplicate keys. A plain scalar under one of
    ``text_keys`` (dotted paths, lists as ``key[0]``) is read as the string written.
    """
    p = Path(path)
    loader = _Loader(read_text(p), set(text_keys))
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        loader.check_tree(node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise YamlError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{p}: not valid YAML: {_problem(exc)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # What a scalar's constructor raises (an integer of 5000 digits, a date that does not exist).
        raise YamlError(f"{p}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
