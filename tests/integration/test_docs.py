# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-doc renders every module and filter of the collection, with its options."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from .conftest import BIN, REPO, ansible_env

MODULES = sorted(p.stem for p in (REPO / "plugins/modules").glob("*.py") if p.stem != "__init__")


def _docs(kind, names):
    """ansible-doc's JSON of ``names`` (one run for all: each run starts Ansible anew)."""
    proc = subprocess.run([str(BIN / "ansible-doc"), "-t", kind, "--json", *names],
                          capture_output=True, text=True, check=False, env=ansible_env())
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    assert sorted(docs) == sorted(names), proc.stderr
    return docs


@pytest.fixture(scope="module")
def module_docs():
    return _docs("module", ["gpufleet.inference.%s" % module for module in MODULES])


@pytest.fixture(scope="module")
def module_pages():
    """The text pages of every module, by module (what `ansible-doc <module>` prints)."""
    names = ["gpufleet.inference.%s" % module for module in MODULES]
    text = subprocess.run([str(BIN / "ansible-doc"), *names], capture_output=True, text=True,
                          check=False, env=ansible_env())
    assert text.returncode == 0, text.stderr
    starts = sorted((text.stdout.index("> MODULE %s" % name), name) for name in names)
    ends = [start for start, _name in starts[1:]] + [len(text.stdout)]
    return {name: text.stdout[start:end] for (start, name), end in zip(starts, ends)}


@pytest.mark.parametrize("module", MODULES)
def test_module_doc_renders(module, module_docs, module_pages):
    name = "gpufleet.inference.%s" % module
    doc = module_docs[name]
    assert doc["doc"]["module"] == module
    assert doc["doc"]["short_description"]
    assert doc["examples"].strip()
    assert doc["return"]
    assert "EXAMPLES" in module_pages[name]


def test_every_filter_has_docs():
    listing = subprocess.run([str(BIN / "ansible-doc"), "-t", "filter", "-l", "--json",
                              "gpufleet.inference"], capture_output=True, text=True,
                             check=False, env=ansible_env())
    assert listing.returncode == 0, listing.stderr
    names = sorted(json.loads(listing.stdout))
    assert names
    for name, doc in _docs("filter", names).items():
        assert doc["doc"]["short_description"], name


def _fault_rows():
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Bad input and faults\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def test_fault_table_names_tests_that_exist():
    """Every row of the README's fault table names a test that is really there."""
    rows = _fault_rows()
    assert len(rows) >= 14
    for fault, outcome, where in rows:
        assert fault and outcome, (fault, outcome)
        for ref in where.replace("`", "").split("<br>"):
            path, _sep, name = ref.partition("::")
            source = (REPO / path).read_text()
            assert "def %s(" % name.split("[")[0] in source, ref


# What users read: the README, the roles, the playbooks, the plugins (their ansible-doc pages,
# the files they render, their comments) and meta/. The design documents ("seed 000" ...
# "seed 004") are not shipped, so these files state the facts instead of pointing at them.
USER_FACING = ("README.md", "galaxy.yml", "docs/", "meta/", "playbooks/", "plugins/", "roles/")
DESIGN_REFERENCE = re.compile(r"\bseeds?\b", re.IGNORECASE)


def _user_facing_files():
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                              "--", *USER_FACING], capture_output=True, text=True, check=True,
                             cwd=str(REPO))
    paths = sorted(set(listing.stdout.split()))
    return [path for path in paths if (REPO / path).is_file()]


@pytest.mark.parametrize("path", _user_facing_files())
def test_user_docs_do_not_cite_design_documents(path):
    if not (REPO / path).is_file():  # deleted since collection: nothing left to read
        return
    data = (REPO / path).read_bytes()
    if b"\0" in data:  # an image
        return
    hits = ["%s:%d: %s" % (path, number, line.strip())
            for number, line in enumerate(data.decode("utf-8").splitlines(), 1)
            if DESIGN_REFERENCE.search(line)]
    assert not hits, "state the fact, not the design document:\n" + "\n".join(hits)
