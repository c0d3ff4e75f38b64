# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback fleet_outcome: one per-host outcome table at the end of a rollout."""

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet_outcome
type: aggregate
short_description: Print one per-host outcome table at the end of a rollout
version_added: 0.1.0
author:
  - gpufleet.inference contributors (@gpufleet)
description:
  - At the end of a playbook run, prints one line per host of its plays with the outcome of the
    run for that host, C(changed), C(unchanged), C(failed), C(unreachable), C(rolled back) or
    C(not reached), the number of changed tasks, and a note (the failed task and its message).
  - The table is printed even when the rollout stopped (a batch over C(max_fail_percentage), a
    whole batch failed). Ansible runs no further play then, so a last play cannot print it.
  - C(not reached) is a host that a play was meant for but that got no task before the play
    ended, or that was stopped with nothing changed because another host of its batch failed.
  - A playbook marks a host C(rolled back) with
    C(ansible.builtin.set_stats) of C(gpufleet_outcome=rolled_back) (per host, not aggregated);
    the site playbook does so when an apply was rolled back.
  - By default the table is printed for playbooks with a C(serial) play (rollouts), and for
    any playbook in which a host failed or was unreachable, whatever play it failed in (a
    rollout whose every host fails in a check before its serial play still gets its table);
    set O(always) to print it after every playbook. Ad-hoc commands (C(ansible)) never print
    it.
  - Enable it like every callback of a collection, in C(ansible.cfg)
    (C(callbacks_enabled = gpufleet.inference.fleet_outcome)) or with
    C(ANSIBLE_CALLBACKS_ENABLED=gpufleet.inference.fleet_outcome).
requirements:
  - enable in configuration
options:
  always:
    description: Print the table after every playbook, not only after rollouts and failures.
    type: bool
    default: false
    env:
      - name: GPUFLEET_OUTCOME_ALWAYS
    ini:
      - section: callback_fleet_outcome
        key: always
"""

from ansible.plugins.callback import CallbackBase

from ansible_collections.gpufleet.inference.plugins.module_utils import _fleet


def _first_line(text):
    return " ".join(str(text or "").strip().splitlines()[:1])


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "gpufleet.inference.fleet_outcome"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._play_hosts = {}  # play uuid -> the hosts it was meant for, in inventory order
        self._reached = {}  # play uuid -> hosts that got a task
        self._batch = []  # hosts of the batch running now
        self._play = None
        self._seen = {}  # host -> changed, failed, unreachable, stopped
        self._serial = False
        self._adhoc = False

    def _host(self, name):
        return self._seen.setdefault(name, {"changed": 0, "failed": None, "unreachable": None,
                                            "stopped": False})

    def v2_playbook_on_start(self, playbook):
        """An ad-hoc command (``ansible``) is no rollout: it never gets the table."""
        self._adhoc = getattr(playbook, "_file_name", None) == "__adhoc_playbook__"

    def v2_playbook_on_play_start(self, play):
        """Called once per batch: remember the play's hosts and the batch."""
        self._play = play._uuid
        self._serial = self._serial or bool(play.serial)
        try:
            magic = play.get_variable_manager().get_vars(play=play, include_hostvars=False)
            hosts_all, batch = magic["ansible_play_hosts_all"], magic["ansible_play_batch"]
        except (AttributeError, KeyError):
            hosts_all, batch = [], []
        self._play_hosts.setdefault(self._play, list(hosts_all))
        self._reached.setdefault(self._play, set())
        self._batch = list(batch)

    def _reach(self, result):
        name = result._host.get_name()
        if self._play is not None:
            self._reached[self._play].add(name)
        return self._host(name)

    def v2_runner_on_ok(self, result):
        seen = self._reach(result)
        if result._result.get("changed"):
            seen["changed"] += 1

    def v2_runner_on_failed(self, result, ignore_errors=False):
        seen = self._reach(result)
        if result._result.get("changed"):
            seen["changed"] += 1
        if not ignore_errors:
            seen["failed"] = "%s: %s" % (result._task.get_name(),
                                         _first_line(result._result.get("msg")))

    def v2_runner_on_unreachable(self, result):
        seen = self._reach(result)
        seen["unreachable"] = "%s: %s" % (result._task.get_name(),
                                          _first_line(result._result.get("msg")))

    def v2_runner_on_skipped(self, result):
        self._reach(result)

    def v2_playbook_on_no_hosts_remaining(self):
        """The strategy stopped the batch (max_fail_percentage, any_errors_fatal, all failed)."""
        for name in self._batch:
            self._host(name)["stopped"] = True

    def v2_playbook_on_stats(self, stats):
        failed = any(seen["failed"] or seen["unreachable"] for seen in self._seen.values())
        if self._adhoc or not (self._serial or failed or self.get_option("always")):
            return
        order, meant = [], set()
        for uuid, hosts in self._play_hosts.items():
            for name in hosts:
                if name not in meant:
                    meant.add(name)
                    order.append(name)
                if name not in self._reached[uuid]:
                    self._host(name)["not_reached"] = True
        order += sorted(set(self._seen) - meant)
        hosts = {}
        for name in order:
            seen = dict(self._host(name))
            summary = stats.summarize(name)
            # Stats decide: a failure that a rescue handled is no failure of the host.
            if not summary.get("failures"):
                seen["failed"] = None
            if not summary.get("unreachable"):
                seen["unreachable"] = None
            seen["outcome"] = (stats.custom.get(name) or {}).get("gpufleet_outcome")
            hosts[name] = seen
        self._display.banner("FLEET OUTCOME")
        for line in _fleet.outcome_table(_fleet.outcomes(hosts)):
            self._display.display(line)
        self._display.display("")
