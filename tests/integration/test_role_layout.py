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
