"""MkDocs hook: the configuration and command-line references, generated from the code at every build.

A page asks for a generated block with a marker line (an HTML comment, invisible where the Markdown is read
raw):

* ``<!-- generated: configuration -->``: every key of every configuration section, from the pydantic models
  (:class:`diffscale.config.schema.Config`, the tagged sections' alternatives), with its type, default, allowed
  values and description, all read from the models' JSON schema and field defaults;
* ``<!-- generated: cli -->``: every ``diffscale`` command, from ``diffscale.cli.main.build_parser()``: usage,
  description, every option with its value, default and help, and the examples;
* ``<!-- generated: api-modules -->``: the list of the Python API's modules with the first line of each one's
  docstring.

The Python API pages themselves are named in mkdocs.yml's nav as ``reference/api/MODULE.md``; the hook makes each
one that has no file of its own (a page that renders the module with mkdocstrings), so adding a module to the
site is one nav line; on those pages Sphinx roles in docstrings (:class:`X`) are shown as plain code.

A new key, option or command appears in the site without editing a page, and a renamed one cannot survive in it.
An unknown marker stops the build. The package is imported from ``src/`` beside mkdocs.yml, so the site
documents the checkout it is built from.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

MARKER = re.compile(r"^<!-- generated: ([a-z_-]+) -->$", re.MULTILINE)


# -- shared formatting --------------------------------------------------------------------------------------
def _yaml(value: Any) -> str:
    """A value as one would write it in the YAML file (``null``, ``true``, ``.inf``, ``[1, 2]``, ``{}``)."""
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").strip()


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


# -- configuration ------------------------------------------------------------------------------------------
_JSON_TYPES = {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "null": "null"}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if ref else node


def _type(node: dict[str, Any], defs: dict[str, Any]) -> str:
    """The type of a JSON-schema node in words: ``float``, ``int or null``, ``list of str``, ``[int, int]``."""
    if "$ref" in node:
        return "mapping"
    if "anyOf" in node:
        return " or ".join(dict.fromkeys(_type(part, defs) for part in node["anyOf"]))
    kind = node.get("type")
    if kind == "array":
        if "prefixItems" in node:
            return "[" + ", ".join(_type(item, defs) for item in node["prefixItems"]) + "]"
        return "list of " + _type(node.get("items", {}), defs) if node.get("items") else "list"
    if kind == "object":
        values = node.get("additionalProperties")
        return f"mapping of str to {_type(values, defs)}" if isinstance(values, dict) else "mapping"
    if kind in _JSON_TYPES:
        return _JSON_TYPES[kind]
    if "const" in node:
        return type(node["const"]).__name__
    if "enum" in node:
        return "str"
    return "any"


def _bounds(node: dict[str, Any]) -> list[str]:
    limits = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
    found = [f"{sign} {_yaml(node[key])}" for key, sign in limits if key in node]
    if "multipleOf" in node:
        found.append(f"multiple of {_yaml(node['multipleOf'])}")
    return found


def _allowed(node: dict[str, Any], defs: dict[str, Any]) -> str:
    """The values a node admits beyond its type: choices, bounds, lengths ("" when any value of the type)."""
    if "anyOf" in node:
        parts = [_allowed(part, defs) for part in node["anyOf"] if part.get("type") != "null"]
        parts = [part for part in parts if part]
        nullable = any(part.get("type") == "null" for part in node["anyOf"])
        return "; ".join(parts) + (" (or null)" if parts and nullable else "")
    if "const" in node:
        return _code(_yaml(node["const"]))
    if "enum" in node:
        return "one of " + ", ".join(_code(_yaml(value)) for value in node["enum"])
    found = _bounds(node)
    if node.get("type") == "array":
        low, high = node.get("minItems"), node.get("maxItems")
        if "prefixItems" in node:
            items = [", ".join(_bounds(item)) or "any" for item in node["prefixItems"]]
            if any(item != "any" for item in items):
                found.append("items " + "; ".join(items))
        else:
            if low is not None and low == high:
                found.append(f"exactly {low} items")
            elif low:
                found.append(f"at least {low} item{'s' if low > 1 else ''}")
            item = _allowed(node.get("items", {}), defs)
            if item:
                found.append(f"each {item}")
    if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        values = _allowed(node["additionalProperties"], defs)
        if values:
            found.append(f"values {values}")
    return ", ".join(found)


def _nested_model(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of the sub-mapping a key holds (directly or as ``mapping or null``), else None."""
    for part in node.get("anyOf", [node]):
        if "$ref" in part:
            return _resolve(part, defs)
    return None


def _key_rows(schema: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, ...]]:
    """(key, type, default, allowed, description) of every key of a model's schema, nested keys dotted."""
    required = set(schema.get("required", ()))
    for name, node in schema.get("properties", {}).items():
        nested = _nested_model(node, defs)
        if "default" in node:
            default = _code(_yaml(node["default"]))
        elif name in required:
            default = "required"
        else:
            default = "see below" if nested is not None else ""
        description = node.get("description") or (nested or {}).get("description", "")
        yield (_code(prefix + name), _type(node, defs), default, _allowed(node, defs), _cell(description))
        if nested is not None:
            yield from _key_rows(nested, defs, prefix=f"{prefix}{name}.")


def _table(schema: dict[str, Any]) -> list[str]:
    defs = schema.get("$defs", {})
    lines = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    lines += [
        "| " + " | ".join(_cell(cell) if i else cell for i, cell in enumerate(row)) + " |"
        for row in _key_rows(schema, defs)
    ]
    return lines


RST_ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`]+)`")


def _summary(model: type) -> str:
    """The first paragraph of a model's docstring, one line, as Markdown: Sphinx roles become code, and a leading
    ````data: {kind: climate}``: `` that repeats the heading is dropped."""
    doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
    doc = RST_ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", doc)
    doc = re.sub(r"^``[^`]+``: ", "", doc)
    return doc[:1].upper() + doc[1:]


def configuration_reference() -> str:
    """Markdown: one heading per section (and per alternative of a tagged section), one table of keys each."""
    from diffscale.config.schema import TAGGED_SECTIONS, Config

    lines: list[str] = []
    for section, field in Config.model_fields.items():
        lines += [f"## `{section}:`", "", f"{field.description[0].upper()}{field.description[1:]}.", ""]
        tagged = TAGGED_SECTIONS.get(section)
        if tagged is None:
            lines += [_summary(field.annotation), "", *_table(field.annotation.model_json_schema()), ""]
            continue
        choices = ", ".join(f"`{tag}`" for tag in tagged.members)
        lines += [
            f"The key `{tagged.key}` chooses the {tagged.kind_of_thing} ({choices}; any case; default "
            f"`{tagged.default}`), and the section takes that {tagged.kind_of_thing}'s keys only.",
            "",
        ]
        for tag, model in tagged.members.items():
            lines += [f"### `{section}: {{{tagged.key}: {tag}}}`", "", _summary(model), ""]
            lines += [*_table(model.model_json_schema()), ""]
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------------------
def _escape(text: str) -> str:
    """Plain text (argparse help) as Markdown that shows it unchanged."""
    text = text.replace("\\", "\\\\").replace("<", "&lt;")
    return re.sub(r"([*_`\[\]])", r"\\\1", text)


def _expanded_help(action: argparse.Action, prog: str) -> str:
    """The help text with argparse's %(default)s-style fields filled in, as ``--help`` shows it."""
    text = action.help or ""
    if "%" not in text:
        return text
    values = {key: value for key, value in vars(action).items() if value is not argparse.SUPPRESS}
    if action.choices is not None:
        values["choices"] = ", ".join(str(choice) for choice in action.choices)
    return text % {**values, "prog": prog}


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        return "{" + ",".join(str(choice) for choice in action.choices) + "}"
    metavar = action.metavar or action.dest.upper()
    return " ".join(metavar) if isinstance(metavar, tuple) else str(metavar)


def _default(action: argparse.Action) -> str:
    default = action.default
    if default is None or default is False or default == [] or default is argparse.SUPPRESS or action.nargs == 0:
        return ""
    return _code(str(default))


def _options_tables(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for group in parser._action_groups:
        actions = [action for action in group._group_actions if not isinstance(action, argparse._HelpAction)]
        actions = [action for action in actions if not isinstance(action, argparse._SubParsersAction)]
        if not actions:
            continue
        lines += [f"**{_escape(group.title[0].upper() + group.title[1:])}**", ""]
        lines += ["| argument | value | default | description |", "|---|---|---|---|"]
        for action in actions:
            names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{_value(action)}`"
            value = "" if not action.option_strings else _code(_value(action))
            help_text = _cell(_escape(_expanded_help(action, parser.prog)))
            lines.append(f"| {names} | {value} | {_default(action)} | {help_text} |")
        lines.append("")
    return lines


def _prose(text: str | None) -> list[str]:
    """A RawDescription text as Markdown: paragraphs as text, an ``examples:`` paragraph as a shell block, a
    paragraph with indented lines (a list laid out by hand) as it is."""
    lines: list[str] = []
    for paragraph in (text or "").strip().split("\n\n"):
        head, _, rest = paragraph.partition("\n")
        if head.strip().rstrip(":").lower() in ("example", "examples"):
            lines += [f"**{head.strip()[0].upper()}{head.strip()[1:]}**", "", "```bash"]
            lines += [line.strip() for line in rest.splitlines() if line.strip()] + ["```", ""]
        elif any(line[:1].isspace() for line in paragraph.splitlines()[1:]):  # an indented list: keep its layout
            lines += ["```text", paragraph.strip("\n"), "```", ""]
        elif paragraph.strip():
            lines += [_escape(" ".join(paragraph.split())), ""]
    return lines


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield name, summaries.get(name, ""), subparser


def cli_reference() -> str:
    """Markdown: the top-level usage and command list, then one section per command."""
    from diffscale.cli.main import build_parser

    parser = build_parser()
    commands = list(_subcommands(parser))
    lines = ["```text", parser.format_usage().strip(), "```", "", *_prose(parser.description)]
    lines += ["| command | what it does |", "|---|---|"]
    lines += [
        f"| [`{parser.prog} {name}`](#{parser.prog}-{name}) | {_cell(summary)} |" for name, summary, _ in commands
    ]
    lines += ["", *_options_tables(parser)]
    for name, summary, subparser in commands:
        lines += [f"## `{parser.prog} {name}` {{#{parser.prog}-{name}}}", "", f"{_escape(summary)}.", ""]
        lines += ["```text", subparser.format_usage().strip(), "```", ""]
        lines += _prose(subparser.description)
        lines += _options_tables(subparser)
        lines += _prose(subparser.epilog)
    return "\n".join(lines)


# -- Python API ---------------------------------------------------------------------------------------------
API_PAGES = re.compile(r"^reference/api/(?P<module>[A-Za-z_][A-Za-z0-9_.]*)\.md$")
API_MODULES: list[str] = []
"""The modules of the nav's ``reference/api/MODULE.md`` entries, in nav order (filled by :func:`on_files`)."""


def _nav_paths(nav: Any) -> Iterator[str]:
    """Every page path in a (nested) MkDocs nav."""
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_paths(value)
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_paths(item)


def api_page(module: str) -> str:
    """The Markdown of a module's page: its name as the title, then mkdocstrings' rendering of the module."""
    return f"# `{module}`\n\n::: {module}\n    options:\n      show_root_heading: false\n"


def api_modules() -> str:
    """Markdown: a table of the documented modules, each linked to its page, with its docstring's first line."""
    import importlib

    lines = ["| module | what it holds |", "|---|---|"]
    for module in API_MODULES:
        doc = (importlib.import_module(module).__doc__ or "").strip().split("\n\n")[0]
        lines.append(f"| [`{module}`]({module}.md) | {_cell(doc)} |")
    return "\n".join(lines)


GENERATORS: dict[str, Callable[[], str]] = {
    "configuration": configuration_reference,
    "cli": cli_reference,
    "api-modules": api_modules,
}


# -- Sphinx roles in docstrings ----------------------------------------------------------------------------
SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):<code>(~?)([^<]+)</code>")


def _plain_role(match: re.Match[str]) -> str:
    """``:class:`~a.b.C``` as rendered HTML -> ``<code>C</code>`` (``~`` keeps the last name, as in Sphinx)."""
    target = match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if match.group(1) else target}</code>"


def on_page_content(html: str, page: Any, **_: Any) -> str:
    """Docstrings mark names with Sphinx roles (:class:`X`); show them as code, without the role."""
    if not page.file.src_uri.startswith("reference/api/"):
        return html
    return SPHINX_ROLE.sub(_plain_role, html)


# -- the hook -----------------------------------------------------------------------------------------------
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add a generated page for every nav entry ``reference/api/MODULE.md`` that has no file."""
    API_MODULES.clear()
    for path in _nav_paths(config.nav):
        match = API_PAGES.match(path)
        if match is None or match["module"] == "index":
            continue
        API_MODULES.append(match["module"])
        if files.get_file_from_path(path) is None:
            files.append(File.generated(config, path, content=api_page(match["module"])))
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace each marker line by its generated Markdown."""

    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_uri}: unknown generated block {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)
