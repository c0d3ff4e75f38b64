# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role follows the house style (STYLE.md): one check for all roles, found on disk."""

from __future__ import annotations

import pytest
import yaml

from .conftest import REPO

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "meta").is_dir())


class _Loader(yaml.SafeLoader):
    """Safe loading that also reads Ansible's !unsafe strings (as plain strings)."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def _yaml(path):
    return yaml.load(path.read_text(), Loader=_Loader) if path.is_file() else {}


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_keys_equal_defaults(role):
    defaults = _yaml(REPO / "roles" / role / "defaults/main.yml")
    specs = _yaml(REPO / "roles" / role / "meta/argument_specs.yml")
    options = specs["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults)
    assert all(k.startswith(role + "_") for k in defaults)
    assert all("type" in o for o in options.values())
    private = _yaml(REPO / "roles" / role / "vars/main.yml") or {}
    assert all(k.startswith("_%s_" % role) for k in private)


@pytest.mark.parametrize("template", sorted(
    str(p.relative_to(REPO)) for role in ROLES for p in (REPO / "roles" / role).glob(
        "templates/*.j2")))
def test_templates_start_with_ansible_managed(template):
    assert (REPO / template).read_text().startswith("{{ ansible_managed | comment }}\n")


# Issue 13: no logic in long Jinja. A Jinja expression or a for/if block that spans this many
# lines or more is logic: it belongs in a unit-tested function of module_utils, used through a
# filter (STYLE.md, "Logic in Jinja").
MAX_JINJA_LINES = 6
# All role task files together: they stay a table of contents. Issue 14 added the fetch steps
# (one task each in compose and systemd_units; the token file and the planned
# downloads in preflight), about 120 lines.
MAX_TASK_FILE_LINES = 1250

_JINJA_FILES = sorted(p for top in ("roles", "playbooks") for p in (REPO / top).rglob("*")
                      if p.is_file() and p.suffix in (".yml", ".yaml", ".j2"))


def _yaml_jinja_spans(text):
    """(first line, last line) of every YAML scalar holding Jinja; lines count from 1.

    A scalar runs from its first mark (a block scalar's ``>-`` included) to its last line that
    is not blank: a block scalar's end mark sits at the start of a line after it, past the blank
    lines that follow it. Scalars tagged ``!unsafe`` are not templated by Ansible and are left
    out.
    """
    lines = text.splitlines()
    spans = []
    stack = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    while stack:
        node = stack.pop()
        if node is None:
            continue
        if isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in node.value for item in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.ScalarNode) and node.tag != "!unsafe" and (
                "{{" in node.value or "{%" in node.value):
            start = node.start_mark.line
            end = node.end_mark.line - (1 if node.end_mark.column == 0 else 0)
            while end > start and not lines[end].strip():
                end -= 1
            spans.append((start + 1, end + 1))
    return spans


def _template_jinja_spans(text):
    """(what, first line, last line) of every ``{{ }}`` and every for/if block to its end tag."""
    import jinja2  # noqa: PLC0415  (ansible-core's own dependency)

    spans = []
    open_blocks = []
    expression_start = None
    tokens = list(jinja2.Environment().lex(text))
    for i, (line, kind, _value) in enumerate(tokens):
        if kind == "variable_begin":
            expression_start = line
        elif kind == "variable_end":
            spans.append(("{{ }}", expression_start, line))
        elif kind == "block_begin":
            word = next((v for _ln, k, v in tokens[i + 1:] if k != "whitespace"), None)
            if word in ("for", "if"):
                open_blocks.append((word, line))
            elif word in ("endfor", "endif"):
                opened, start = open_blocks.pop()
                # the block ends where its end tag closes
                end = next(ln for ln, k, _v in tokens[i + 1:] if k == "block_end")
                spans.append(("{%% %s %%}" % opened, start, end))
    return spans


def _long_jinja(path):
    text = path.read_text()
    if path.suffix == ".j2":
        spans = _template_jinja_spans(text)
    else:
        spans = [("scalar", start, end) for start, end in _yaml_jinja_spans(text)]
    return ["%s:%d-%d %s (%d lines)" % (path.relative_to(REPO), start, end, what, end - start + 1)
            for what, start, end in spans if end - start + 1 >= MAX_JINJA_LINES]


@pytest.mark.parametrize("path", [str(p.relative_to(REPO)) for p in _JINJA_FILES])
def test_no_long_jinja(path):
    assert _long_jinja(REPO / path) == []


@pytest.mark.parametrize(("text", "suffix", "found"), [
    ("a: '{{ x }}'\n", ".yml", []),
    ("a: >-\n  {{ x\n  }}\n", ".yml", []),
    ("a: >-\n  {{ 1\n  + 2\n  + 3\n  + 4\n  }}\n", ".yml", ["t.yml:1-6 scalar (6 lines)"]),
    ("a:\n  - b: |\n      {% if x %}\n      1\n      2\n      3\n      {% endif %}\nc: 1\n", ".yml",
     ["t.yml:2-7 scalar (6 lines)"]),
    ("a: !unsafe >-\n  {{ 1\n  2\n  3\n  4\n  }}\n", ".yml", []),
    ("a: >-\n  no\n  jinja\n  in\n  this\n  text\n", ".yml", []),
    ("a: >-\n  {{ x }}\n\n\n\n\n\nb: 1\n", ".yml", []),  # the blank lines after it do not count
    ("a: |\n  {{ x }}\n  # c\n\n\n\n\n\n# comment\nb: 1\n", ".yml", []),
    ("- a: \"{{ x\n\n\n\n\n    }}\"\n", ".yml", ["t.yml:1-6 scalar (6 lines)"]),
    ("{% for x in y %}\n1\n2\n3\n4\n{% endfor %}\n", ".j2", ["t.j2:1-6 {% for %} (6 lines)"]),
    ("{% for x in y %}\n1\n2\n3\n{% endfor %}\n", ".j2", []),
    ("{% if a %}\n{% if b %}\n1\n{% endif %}\n2\n3\n{%\nendif\n%}\n", ".j2",
     ["t.j2:1-9 {% if %} (9 lines)"]),
    ("{{ a\n|\nb\n|\nc\n|d }}\n", ".j2", ["t.j2:1-6 {{ }} (6 lines)"]),
    ("{% set x = 1 %}\n{{ x }}\n", ".j2", []),
])
def test_long_jinja_rule_finds_what_it_should(tmp_path, monkeypatch, text, suffix, found):
    monkeypatch.setattr("%s.REPO" % __name__, tmp_path)
    path = tmp_path / ("t" + suffix)
    path.write_text(text)
    assert _long_jinja(path) == found


def test_role_task_files_stay_short():
    files = sorted((REPO / "roles").glob("*/tasks/*.yml"))
    lines = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in files}
    assert sum(lines.values()) <= MAX_TASK_FILE_LINES, sorted(
        lines.items(), key=lambda item: -item[1])
