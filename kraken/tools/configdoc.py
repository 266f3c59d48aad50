"""Every key of a component's config dataclass, for documenting and checking docs/CONFIGURATION.md.

:func:`walk` visits a config dataclass (``dataclasses.fields`` + ``typing.get_type_hints``)
and yields one :class:`Row` per key: its dotted path, a type description, its default as it
would be written in YAML (``30s``, ``4MB``), and help text taken from the comments of
``config/<component>/base.yaml`` where there is one. :func:`check_doc` compares a markdown
document against the rows: each component's table is introduced by an HTML comment
``<!-- configdoc: COMPONENT -->`` and must list every key path of that component, with its
default, and no key the code does not have.

``python -m kraken.tools.configdoc COMPONENT`` prints a component's table (a draft to edit);
``python -m kraken.tools.configdoc --check docs/CONFIGURATION.md`` reports mismatches.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from kraken.config import OneOf, Secret, scalar_kind

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_ROOT = REPO_ROOT / "config"

# component -> (module, dataclass name, config directory or None)
COMPONENTS: dict[str, tuple[str, str, str | None]] = {
    "testfs": ("kraken.testfs.config", "TestfsConfig", "testfs"),
    "origin": ("kraken.origin.config", "OriginConfig", "origin"),
    "build-index": ("kraken.buildindex.config", "BuildIndexConfig", "build-index"),
    "proxy": ("kraken.proxy.config", "ProxyConfig", "proxy"),
    "tracker": ("kraken.tracker.config", "TrackerConfig", "tracker"),
    "agent": ("kraken.agent.config", "AgentConfig", "agent"),
    # One entry of a ``backends:`` list (origin, build-index); paths are relative to the entry.
    "backends": ("kraken.backend.config", "NamespaceBackendConfig", None),
}

REQUIRED = "required"


@dataclass(frozen=True)
class Row:
    path: str  # dotted key path; ``a[]`` would mark list items (lists are not expanded)
    type: str  # human description: "duration", "size", "string", "mapping", ...
    required: bool  # the key must be present (in its section, when the section is given)
    default: str | None  # YAML spelling of the default; None for required keys and sections
    # The value when the whole enclosing section is left out, if that differs from ``default``
    # (``listen.port``: the component's port when ``listen:`` is absent, 0 when it is given
    # without ``port``).
    section_default: str | None = None
    help: str = ""

    @property
    def is_section(self) -> bool:
        return self.type.startswith("mapping")


def config_class(component: str) -> type:
    module_name, class_name, _ = COMPONENTS[component]
    return getattr(importlib.import_module(module_name), class_name)


# ---- types and defaults ------------------------------------------------------------------------

def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) != len(get_args(tp)):
            return args[0], True
    return tp, False


def describe_type(tp: Any) -> str:
    """A short description of a config type, as a reader of the YAML sees it."""
    kind = scalar_kind(tp)
    if kind is not None:
        return kind
    if get_origin(tp) is Annotated:
        return describe_type(get_args(tp)[0])
    inner, optional = _strip_optional(tp)
    if optional:
        return f"{describe_type(inner)}, optional"
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    if origin is list:  # typing.List[...] too: get_origin gives list
        (item,) = get_args(tp) or (Any,)
        if dataclasses.is_dataclass(item):
            return "list of mappings"
        return f"list of {_plural(describe_type(item))}"
    if origin is dict:
        key, value = get_args(tp) or (Any, Any)
        return f"mapping {describe_type(key)} -> {describe_type(value)}"
    if dataclasses.is_dataclass(tp) or _is_one_of(tp):
        return "mapping"
    names = {str: "string", int: "int", float: "float", bool: "bool", Secret: "secret"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _is_one_of(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, OneOf)


def _plural(word: str) -> str:
    return word + "s"


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    for unit, factor in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    ms = seconds * 1000
    return f"{int(ms)}ms" if ms == int(ms) else f"{seconds}s"


def format_size(size: int) -> str:
    if size == 0:
        return "0"
    for unit, factor in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def format_value(tp: Any, value: Any) -> str:
    """``value`` of type ``tp`` as it would be written in a config file."""
    kind = scalar_kind(tp)
    if kind == "size":
        return format_size(value)
    if kind == "duration":
        return format_duration(value)
    if get_origin(tp) is Annotated:
        return format_value(get_args(tp)[0], value)
    if value is None:
        return "unset"
    inner, _ = _strip_optional(tp)
    origin = get_origin(inner)
    if origin is list:
        (item,) = get_args(inner) or (Any,)
        return "[" + ", ".join(format_value(item, v) for v in value) + "]"
    if origin is dict:
        key_tp, value_tp = get_args(inner) or (Any, Any)
        items = ", ".join(f"{format_value(key_tp, k)}: {format_value(value_tp, v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if value == "":
            return '""'
        tmp = tempfile.gettempdir()
        if value.startswith(tmp + "/"):  # a default computed from the temp dir at start
            return "<tempdir>" + value[len(tmp):]
        return value
    return str(value)


def _default_value(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


# ---- the walk ------------------------------------------------------------------------------------

def walk(
    cls: type, prefix: str = "", section_value: Any = None, help_text: dict[str, str] | None = None,
) -> Iterator[Row]:
    """One row per key of dataclass ``cls`` and, recursively, of its sub-sections.

    ``section_value`` is the instance the enclosing section defaults to (when it has a
    default), used to report defaults that differ when the whole section is left out.
    Lists are not expanded: a list of mappings is one row (``backends``), documented apart.
    A :class:`~kraken.config.OneOf` section lists every registered kind as an optional
    sub-section (``backend.testfs``, ``backend.file``, ...).
    """
    help_text = help_text or {}
    hints = get_type_hints(cls, include_extras=True)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        path = f"{prefix}{field.name}"
        tp = hints[field.name]
        default = _default_value(field)
        required = default is dataclasses.MISSING
        inner, _ = _strip_optional(tp)
        is_section = dataclasses.is_dataclass(inner) and isinstance(inner, type)
        default_text = None if required or is_section else format_value(tp, default)
        section_default = None
        if section_value is not None and not is_section:
            text = format_value(tp, getattr(section_value, field.name))
            if text != default_text:
                section_default = text
        doc = help_text.get(path) or (_class_doc(inner) if is_section else "")
        yield Row(path, describe_type(tp), required, default_text, section_default, doc)
        if is_section:
            sub_value = None if required or default is None else default
            yield from walk(inner, f"{path}.", sub_value, help_text)
        elif _is_one_of(inner):
            for name, kind_cls in inner.kinds.items():
                kind_path = f"{path}.{name}"
                yield Row(kind_path, "mapping, optional", False, None, None,
                          help_text.get(kind_path) or _class_doc(kind_cls))
                yield from walk(kind_cls, f"{kind_path}.", None, help_text)


def _class_doc(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    if not doc or doc.startswith(f"{cls.__name__}("):  # the signature dataclasses makes up
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def rows(component: str) -> list[Row]:
    """Every key of ``component``'s config, with help from its base.yaml comments."""
    _, _, config_dir = COMPONENTS[component]
    help_text = yaml_comments(CONFIG_ROOT / config_dir / "base.yaml") if config_dir else {}
    return list(walk(config_class(component), help_text=help_text))


# ---- help text from YAML comments ----------------------------------------------------------------

_KEY_RE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*)\s*:(?P<rest>.*)$")


def yaml_comments(path: Path) -> dict[str, str]:
    """Dotted key path -> the comment block right above the key (and its inline comment).

    The file's opening comment block describes the file, not a key; a blank line ends a
    comment block, so a further block between the opening one and the first key is that
    key's.
    """
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    in_header = True  # until the opening comment block has ended (blank line or first key)
    for line in lines:
        stripped = line.strip()
        if not stripped:
            if block:
                in_header = False
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        m = _KEY_RE.match(line)
        if m is None:  # list items, flow values continued on the next line, ...
            block = []
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group("key")))
        key_path = ".".join(k for _, k in stack)
        text = [] if in_header else list(block)
        rest = m.group("rest")
        if " #" in rest:
            text.append(rest.split(" #", 1)[1].strip())
        if text:
            out[key_path] = " ".join(text)
        block = []
        in_header = False
    return out


# ---- markdown ------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def default_cell(row: Row) -> str:
    if row.required:
        if row.section_default is not None:  # required in the section, which has a default
            section = row.path.rpartition(".")[0]
            return f"`{row.section_default}` if `{section}` is absent, else {REQUIRED}"
        return REQUIRED
    if row.default is None:
        return ""
    text = f"`{row.default}`"
    if row.section_default is not None:
        section = row.path.rpartition(".")[0]
        text = f"`{row.section_default}` if `{section}` is absent, else {text}"
    return text


def markdown_table(component: str) -> str:
    out = [f"<!-- configdoc: {component} -->", "| key | type | default | meaning |", "|---|---|---|---|"]
    for row in rows(component):
        out.append(f"| `{row.path}` | {_cell(row.type)} | {_cell(default_cell(row))} | {_cell(row.help)} |")
    return "\n".join(out)


_MARKER_RE = re.compile(r"^<!--\s*configdoc:\s*(?P<component>[\w-]+)\s*-->\s*$")


def doc_tables(markdown: str) -> dict[str, dict[str, list[str]]]:
    """component -> key path -> the cells of its row, from the tables after each marker."""
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    in_table = False
    for line in markdown.splitlines():
        m = _MARKER_RE.match(line.strip())
        if m is not None:
            current = tables.setdefault(m.group("component"), {})
            in_table = False
            continue
        if current is None:
            continue
        if line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            key = re.fullmatch(r"`([^`]+)`", cells[0]) if cells else None
            if key is not None:
                current[key.group(1)] = cells
        elif in_table:
            current, in_table = None, False
    return tables


def check_doc(markdown: str, components: list[str] | None = None) -> list[str]:
    """Problems with the documented keys: missing keys, wrong defaults, keys the code lacks."""
    tables = doc_tables(markdown)
    problems = []
    for component in components or list(COMPONENTS):
        table = tables.get(component)
        if table is None:
            problems.append(f"{component}: no table marked <!-- configdoc: {component} -->")
            continue
        code_rows = rows(component)
        for row in code_rows:
            cells = table.get(row.path)
            if cells is None:
                problems.append(f"{component}: key `{row.path}` is not documented")
                continue
            default = cells[2] if len(cells) > 2 else ""
            if row.required and REQUIRED not in default:
                problems.append(f"{component}: `{row.path}` is required, the doc says {default!r}")
            if row.default is not None and f"`{row.default}`" not in default:
                problems.append(f"{component}: `{row.path}` defaults to `{row.default}`, the doc says {default!r}")
            if row.section_default is not None and f"`{row.section_default}`" not in default:
                problems.append(
                    f"{component}: `{row.path}` is `{row.section_default}` when its section is absent,"
                    f" the doc says {default!r}"
                )
        known = {row.path for row in code_rows}
        problems.extend(f"{component}: documented key `{p}` is not in the code" for p in table if p not in known)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kraken.tools.configdoc", description=__doc__.split("\n\n")[0])
    parser.add_argument("component", nargs="?", choices=list(COMPONENTS), help="print this component's table")
    parser.add_argument("--check", metavar="MARKDOWN", help="check a document (e.g. docs/CONFIGURATION.md)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_doc(Path(args.check).read_text(), [args.component] if args.component else None)
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    if not args.component:
        parser.error("name a component or use --check")
    print(markdown_table(args.component))
    return 0


if __name__ == "__main__":
    sys.exit(main())
