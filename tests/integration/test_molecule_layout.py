# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Molecule's layout, checked without a lab: every role of the collection is converged by a
scenario, every scenario tests converge, idempotence, check and verify, and the shared base
config is where molecule (6 and later) finds it by itself, so that `molecule test --all` from
the repository root needs no --base-config."""

from __future__ import annotations

import pytest
import yaml

from .conftest import REPO

# molecule's own lookup (molecule/shell.py LOCAL_CONFIG_SEARCH): this path under the root of
# the VCS repository molecule runs in, else under the user's home directory.
BASE_CONFIG = ".config/molecule/config.yml"
REQUIRED_STEPS = ("converge", "idempotence", "check", "verify")
PREFIX = "gpufleet.inference."


def _yaml(path):
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def scenarios(root):
    """The scenario directories molecule's glob (molecule/*/molecule.yml) finds, by name."""
    return {p.parent.name: p.parent for p in sorted((root / "molecule").glob("*/molecule.yml"))}


def sequence_of(root, scenario_dir):
    """The test_sequence molecule runs: the scenario's own, else the base config's."""
    own = (_yaml(scenario_dir / "molecule.yml") or {}).get("scenario", {})
    if "test_sequence" in own:
        return own["test_sequence"]
    base = _yaml(root / BASE_CONFIG) or {}
    return base.get("scenario", {}).get("test_sequence", [])


def _role_name(name, root):
    """A role reference as users write it (gpufleet.inference.<role>) -> <role>, else None."""
    if isinstance(name, str) and name.startswith(PREFIX):
        role = name[len(PREFIX):]
        return role if (root / "roles" / role).is_dir() else None
    return None


def _playbook_path(ref, here, root):
    """An import_playbook target: the collection's playbook by FQCN, else a path."""
    if ref.startswith(PREFIX):
        return root / "playbooks" / (ref[len(PREFIX):] + ".yml")
    return (here / ref).resolve()


def _walk_tasks(tasks, here, root, seen):
    roles = set()
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        for key in ("block", "rescue", "always"):
            roles |= _walk_tasks(task.get(key), here, root, seen)
        for key in ("ansible.builtin.include_role", "ansible.builtin.import_role",
                    "include_role", "import_role"):
            if isinstance(task.get(key), dict):
                role = _role_name(task[key].get("name"), root)
                if role:
                    roles.add(role)
        for key in ("ansible.builtin.include_tasks", "ansible.builtin.import_tasks",
                    "include_tasks", "import_tasks"):
            ref = task.get(key)
            ref = ref.get("file") if isinstance(ref, dict) else ref
            if isinstance(ref, str) and "{{" not in ref:
                path = (here / ref).resolve()
                if path.is_file() and path not in seen:
                    seen.add(path)
                    roles |= _walk_tasks(_yaml(path), path.parent, root, seen)
    return roles


def converged_roles(playbook, root, seen=None):
    """The collection's roles a playbook runs: `roles:`, include_role / import_role (in
    blocks and included task files too) and the playbooks it imports, followed."""
    seen = set() if seen is None else seen
    if playbook in seen or not playbook.is_file():
        return set()
    seen.add(playbook)
    roles = set()
    for play in _yaml(playbook) or []:
        for key in ("ansible.builtin.import_playbook", "import_playbook"):
            if isinstance(play.get(key), str):
                target = _playbook_path(play[key], playbook.parent, root)
                roles |= converged_roles(target, root, seen)
        for entry in play.get("roles") or []:
            name = entry.get("role", entry.get("name")) if isinstance(entry, dict) else entry
            role = _role_name(name, root)
            if role:
                roles.add(role)
        for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            roles |= _walk_tasks(play.get(key), playbook.parent, root, seen)
    return roles


def layout_problems(root):
    """Every way the layout falls short, one line each (empty: as it should be)."""
    problems = []
    if not (root / ".git").exists():
        problems.append("%s is not a repository root (molecule looks for %s in the VCS root)"
                        % (root, BASE_CONFIG))
    if not (root / BASE_CONFIG).is_file():
        problems.append("no base config at %s: molecule would run without it" % BASE_CONFIG)
    found = scenarios(root)
    if not found:
        problems.append("no scenario in molecule/")
    covered = set()
    for name, directory in found.items():
        steps = sequence_of(root, directory)
        missing = [step for step in REQUIRED_STEPS if step not in steps]
        if missing:
            problems.append("scenario %s: test_sequence lacks %s" % (name, ", ".join(missing)))
        roles = converged_roles(directory / "converge.yml", root)
        if not roles:
            problems.append("scenario %s: its converge.yml runs no role of the collection"
                            % name)
        covered |= roles
    for role in sorted(p.name for p in (root / "roles").iterdir() if (p / "tasks").is_dir()):
        if role not in covered:
            problems.append("role %s: no scenario's converge runs it" % role)
    return problems


def test_the_repository_layout_is_complete():
    assert layout_problems(REPO) == []


def test_molecule_finds_the_base_config_by_itself():
    """No scenario or tool passes --base-config: the old location is gone, and no scenario
    names a base config of its own."""
    assert (REPO / BASE_CONFIG).is_file()
    assert not (REPO / "molecule" / "shared" / "base.yml").exists()
    for path in [REPO / "lab" / "lab.mk", REPO / "tests" / "lab" / "test_lab_molecule.py"]:
        assert "--base-config" not in path.read_text(), path


def test_the_default_scenario_runs_the_site_playbook():
    """site.yml's roles are followed through import_playbook (by FQCN or by path)."""
    assert converged_roles(REPO / "molecule" / "default" / "converge.yml", REPO) >= {
        "host_lock", "services", "preflight", "compose", "systemd_units", "health", "router"}


# A small tree per case, each one flaw: the checks above must see it.
GOOD_CONVERGE = [{"hosts": "all", "roles": ["gpufleet.inference.alpha"]}]
GOOD_SEQUENCE = {"scenario": {"test_sequence": ["create", "converge", "idempotence", "check",
                                                "verify", "destroy"]}}


def _tree(tmp_path, roles=("alpha",), base=True, sequence=None, converge=None):
    (tmp_path / ".git").mkdir()
    for role in roles:
        (tmp_path / "roles" / role / "tasks").mkdir(parents=True)
    if base:
        (tmp_path / ".config" / "molecule").mkdir(parents=True)
        (tmp_path / BASE_CONFIG).write_text(yaml.safe_dump(GOOD_SEQUENCE))
    scenario = tmp_path / "molecule" / "alpha"
    scenario.mkdir(parents=True)
    (scenario / "molecule.yml").write_text(yaml.safe_dump(sequence or {}))
    (scenario / "converge.yml").write_text(yaml.safe_dump(
        GOOD_CONVERGE if converge is None else converge))
    return tmp_path


@pytest.mark.parametrize("case, expected", [
    ({}, []),
    ({"roles": ("alpha", "beta")}, ["role beta: no scenario's converge runs it"]),
    ({"base": False}, [
        "no base config at .config/molecule/config.yml: molecule would run without it",
        "scenario alpha: test_sequence lacks converge, idempotence, check, verify"]),
    ({"sequence": {"scenario": {"test_sequence": ["create", "converge", "verify"]}}},
     ["scenario alpha: test_sequence lacks idempotence, check"]),
    # The role's own templates are no role: the old default scenario.
    ({"converge": [{"hosts": "all", "tasks": [
        {"name": "Render", "ansible.builtin.template": {"src": "a.j2", "dest": "/a"}}]}]},
     ["scenario alpha: its converge.yml runs no role of the collection",
      "role alpha: no scenario's converge runs it"]),
    ({"converge": [{"hosts": "all", "tasks": [{"name": "Work", "block": [
        {"name": "Run", "ansible.builtin.include_role": {"name": "gpufleet.inference.alpha"}}
    ]}]}]}, []),
    ({"converge": [{"ansible.builtin.import_playbook": "gpufleet.inference.missing"}]},
     ["scenario alpha: its converge.yml runs no role of the collection",
      "role alpha: no scenario's converge runs it"]),
])
def test_layout_problems_are_found(tmp_path, case, expected):
    assert layout_problems(_tree(tmp_path, **case)) == expected
