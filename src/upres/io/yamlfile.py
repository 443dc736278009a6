"""YAML read strictly: a key given twice is an error naming both lines (PyYAML keeps the last one
silently), and anchors and aliases are refused before anything is built (nine aliases of nine
aliases expand to 9**9 values: a 300-byte file took 8 GB and minutes before validation could
refuse it). Configs, plans and checkpoints' saved configs are read here."""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent

from upres.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors, aliases or repeated keys."""

    source = "YAML"

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, AliasEvent) or (
                isinstance(event, (ScalarEvent, MappingStartEvent, SequenceStartEvent)) and event.anchor):
            kind = "alias *" if isinstance(event, AliasEvent) else "anchor &"
            raise ConfigError(f"{self.source}: line {event.start_mark.line + 1}: YAML "
                              f"{kind}{event.anchor} is not accepted (write each value out; "
                              "anchors and aliases can expand without bound)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise ConfigError(f"{self.source}: key {str(key)[:60]!r} is given twice, on line "
                                      f"{first[key]} and line {line}; keep one")
                first[key] = line
            except TypeError:  # an unhashable key: PyYAML names it below
                pass
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str):
    """The value of a YAML document, read strictly; ``source`` names it in errors (a file, or an
    override ``key=value``)."""
    loader = _StrictLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {str(err)[:300]}") from None
    finally:
        loader.dispose()


def read_yaml(path: Path):
    """A YAML file's value, read strictly (``parse_yaml``), naming the file in errors."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (YAML is UTF-8 text)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    return parse_yaml(text, str(path))
