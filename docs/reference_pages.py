"""The reference pages, generated from the code at build time so they cannot drift: every command
and option from the argparse parsers, every config key from the JSON schema, every family, preset
and pretrained name from the registry. ``docs/hooks.py`` adds them to the site; the CHANGELOG is
added the same way."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- commands


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _option(action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
    meta = ""
    if action.option_strings and action.nargs != 0:
        meta = f" `{action.metavar or action.dest.upper()}`" if not action.choices else ""
    text = (action.help or "").replace("%(default)s", str(action.default)).replace("%%", "%")
    extra = []
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        extra.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if action.option_strings and action.default not in (None, False, "", argparse.SUPPRESS, [], ()) \
            and "default" not in text:
        extra.append(f"default `{action.default}`")
    tail = f" ({'; '.join(extra)})" if extra else ""
    return f"- {names}{meta}: {text}{tail}"


def _command(name: str, parser: argparse.ArgumentParser, summary: str, depth: int) -> list[str]:
    lines = [f"{'#' * depth} `{name}`", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ".", ""]
    if parser.description and parser.description != summary:
        lines += [parser.description, ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    actions = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction,
                                                                  argparse._SubParsersAction))]
    lines += [_option(a) for a in actions] + [""]
    helps = _help_of(parser)
    for sub, subparser in _subcommands(parser).items():
        lines += _command(f"{name} {sub}", subparser, helps.get(sub, ""), depth + 1)
    return lines


def cli_page() -> str:
    from upres.cli import build_parser

    parser = build_parser()
    lines = ["# Commands", "",
             "Every `upres` command and option, generated from the argparse parsers "
             "(`upres COMMAND --help` prints the same).", ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    lines += [_option(a) for a in parser._actions
              if not isinstance(a, argparse._SubParsersAction)] + [""]
    helps = _help_of(parser)
    for name, sub in _subcommands(parser).items():
        lines += _command(f"upres {name}", sub, helps.get(name, ""), 2)
    return "\n".join(lines)


# --------------------------------------------------------------------------- config keys


def _type(spec: dict) -> str:
    if "anyOf" in spec:
        return " or ".join(_type(s) for s in spec["anyOf"])
    if "$ref" in spec:
        return spec["$ref"].split("/")[-1]
    if spec.get("type") == "array":
        return f"list of {_type(spec.get('items', {}))}" if spec.get("items") else "list"
    if "enum" in spec:
        return " / ".join(f"`{v}`" for v in spec["enum"])
    return spec.get("type", "any")


def _keys(schema: dict, node: dict, prefix: str) -> list[str]:
    lines = []
    for key, spec in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        ref = spec.get("$ref") or next((s["$ref"] for s in spec.get("anyOf", []) if "$ref" in s), None)
        if ref and ref.split("/")[-1] in schema.get("$defs", {}):
            section = schema["$defs"][ref.split("/")[-1]]
            lines += [f"## `{path}`", "", section.get("description", ""), ""]
            lines += _keys(schema, section, f"{path}.")
            continue
        default = f" Default `{json.dumps(spec['default'])}`." if "default" in spec else ""
        lines.append(f"- `{path}` ({_type(spec)}): {spec.get('description', '')}{default}")
    return lines + [""]


def config_page() -> str:
    from upres.training.config import config_schema

    schema = config_schema()
    plan = config_schema(plan=True)
    return "\n".join([
        "# Config keys", "",
        "Every key of a training config, generated from the schema the loader validates with "
        "(`upres config schema` writes it as JSON Schema). Unknown keys are refused with a "
        "did-you-mean hint; `KEY=VALUE` words on the command line set any of them.", "",
        *_keys(schema, schema, ""),
        "# Experiment plans", "", plan.get("description", ""), "",
        *[line.replace("## `", "## `plan.", 1) if line.startswith("## `") else line
          for line in _keys(plan, plan, "")]])


# --------------------------------------------------------------------------- models


def models_page() -> str:
    from upres.io.pretrained import PACKAGE_OF, PRETRAINED, PRETRAINED_PACKAGE, PURPOSE
    from upres.io.published import PUBLISHED, how_to_get
    from upres.models import registry

    lines = ["# Models and presets", "",
             "Generated from the registry (`upres/models/registry.py`) and the pretrained names "
             "(`upres/io/pretrained.py`); `upres models` lists what is installed.", "",
             "## Pretrained names", ""]
    for name in PRETRAINED:
        package = PACKAGE_OF.get(name, PRETRAINED_PACKAGE).replace("_", "-")
        lines.append(f"- `{name}`: {PURPOSE.get(name, '')} (PyPI package `{package}`)")
    lines += ["", "## Published names", "",
              "Each pinned to its size and sha256 (`upres/io/published.py`); installed only when "
              "asked.", ""]
    for name, pub in PUBLISHED.items():
        lines += [f"### {name}", "", f"- {pub.family}, {pub.params:,} parameters, trained for "
                  f"{pub.purpose} on {pub.data}; license: {pub.license}",
                  f"- paper: {pub.paper}", f"- source: {pub.source}",
                  f"- {pub.size:,} bytes, sha256 `{pub.sha256}`", f"- get it: {how_to_get(name)}", ""]
    lines += ["## Families", ""]
    for entry in registry.ARCHITECTURES.values():
        lines += [f"### {entry.name}", "", entry.paper, ""]
        lines.append(f"- scales: {', '.join(map(str, entry.scales))}")
        lines.append(f"- OpenVINO: {entry.no_openvino or 'yes'}")
        lines.append(f"- ONNX export: {entry.no_onnx or 'yes'}")
        for preset, spec in entry.presets.items():
            lines.append(f"- preset `{preset}`: `{json.dumps(spec.params)}` ({spec.source})")
        lines.append("")
    return "\n".join(lines)


def changelog_page() -> str:
    """CHANGELOG.md as a page at the site's root, its links into docs/ made relative to it."""
    return (ROOT / "CHANGELOG.md").read_text().replace("](docs/", "](")


def pages() -> dict[str, str]:
    """Site path -> Markdown of every generated page."""
    return {"reference/cli.md": cli_page(), "reference/config.md": config_page(),
            "reference/models.md": models_page(), "changelog.md": changelog_page()}
