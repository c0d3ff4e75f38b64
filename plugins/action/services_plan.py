# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action services_plan: the plan of a host's inference services, made on the controller.

Documentation: plugins/modules/services_plan.py. The host is asked only what it alone can tell,
each at most once: its GPUs (gpufleet.inference.gpu_facts, unless ``gpus`` is given) and the
DUAL_GPU_MODE of its .env (ansible.builtin.slurp, unless a mode is given). Everything else is
pure computation here: the catalog, profile and mode (module_utils/_plan.py), the placement
(module_utils/_placement.py, with the gpu_placement module's argument spec, so its options are
converted and refused as that module does) and the plan. The placement runs in two passes
(_plan.place_in_two_passes): the catalog's services first, then, on the GPUs they leave spare,
one replica of each ``per_spare_gpu`` entry, with the first pass's services pinned where it put
them. Bad input ends in a failed result naming the field and the value, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import copy

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

from ansible_collections.gpufleet.inference.plugins.module_utils import _common, _placement, _plan
from ansible_collections.gpufleet.inference.plugins.modules.services_plan import ARGUMENT_SPEC

# The keys of placement_options: the gpu_placement options the services role hands on.
PLACEMENT_OPTION_KEYS = ("headroom_mib", "reserve_mib", "live_usage", "managed_processes",
                         "catalog", "pin_not_found")
MODE_KEY = "DUAL_GPU_MODE"


class PlanError(Exception):
    """Bad input or an unreadable host file: the message is the task's failure."""


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=copy.deepcopy(ARGUMENT_SPEC))
        try:
            result.update(self._plan(args, task_vars or {}))
        except PlanError as exc:
            result.update(failed=True, changed=False, msg=str(exc))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    # ---- what only the host can tell ----------------------------------------------------

    def _module(self, name, args, task_vars, said):
        """Run a module on the host; keep its facts (discovered interpreter too) and warnings."""
        answer = self._execute_module(module_name=name, module_args=args, task_vars=task_vars)
        if not answer.get("failed"):
            said["ansible_facts"].update(answer.get("ansible_facts") or {})
        for key in ("warnings", "deprecations"):
            said[key].extend(answer.get(key) or [])
        return answer

    def _env_mode(self, env_file, task_vars, said):
        """DUAL_GPU_MODE of the host's .env, or None when the file or the key is not there."""
        answer = self._module("ansible.builtin.slurp", {"src": env_file}, task_vars, said)
        if answer.get("failed"):
            reason = str(answer.get("msg") or "")
            if reason.lower().startswith("file not found"):
                return None
            raise PlanError("services_env_file %s cannot be read for %s: %s"
                            % (env_file, MODE_KEY, reason or "no reason given"))
        try:
            text = base64.b64decode(answer.get("content") or "").decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise PlanError("services_env_file %s is not UTF-8 text (%s)"
                            % (env_file, exc)) from None
        try:
            mode = _common.dotenv_get(text, MODE_KEY)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        if mode and mode not in _plan.MODES:  # empty (DUAL_GPU_MODE=) is no mode: the default
            raise PlanError(".env %s (%s) must be one of %s; got: %r"
                            % (MODE_KEY, env_file, ", ".join(_plan.MODES), mode))
        return mode or None

    def _settle_mode(self, args, task_vars, said):
        """(mode, source): given, else the .env's DUAL_GPU_MODE, else ollama."""
        mode, source = args["dual_gpu_mode"], "given"
        if not mode:
            mode, source = self._env_mode(args["env_file"], task_vars, said), "env"
        if not mode:
            mode, source = "ollama", "default"
        if mode not in _plan.MODES:
            raise PlanError("services_dual_gpu_mode (or %s in %s when none is given) must be one "
                            "of %s; got: %s" % (MODE_KEY, args["env_file"],
                                                ", ".join(_plan.MODES), mode))
        return mode, source

    # ---- the plan -----------------------------------------------------------------------

    @staticmethod
    def _placement_params(args, gpus, services):
        """gpu_placement's options, checked and converted with that module's argument spec."""
        options = args["placement_options"]
        unknown = sorted(str(key) for key in set(options) - set(PLACEMENT_OPTION_KEYS))
        if unknown:
            raise PlanError("services_placement_options has unknown key(s): %s"
                            % ", ".join(unknown))
        validator = ArgumentSpecValidator(copy.deepcopy(_placement.ARGUMENT_SPEC),
                                          mutually_exclusive=_placement.MUTUALLY_EXCLUSIVE,
                                          required_one_of=_placement.REQUIRED_ONE_OF)
        checked = validator.validate(dict(options, gpus=gpus, services=services,
                                          strategy=args["strategy"],
                                          visible_devices_by=args["visible_devices_by"]))
        if checked.error_messages:
            raise PlanError("services_placement_options: %s" % checked.errors.msg)
        return checked.validated_parameters

    def _place(self, args, gpus, services):
        """One placement pass: gpu_placement on the host's GPUs with the role's options."""
        params = self._placement_params(args, gpus, services)
        return _placement.place(params["gpus"], params["services"],
                                **{k: params[k] for k in _placement.OPTION_KEYS})

    def _plan(self, args, task_vars):
        catalog, extra = args["catalog"], args["extra_profiles"]
        said = {"ansible_facts": {}, "warnings": [], "deprecations": []}
        try:
            # What needs no host first: a bad catalog fails before anything is read.
            _plan.check_catalog(catalog, extra)
            _plan.check_sources(args["sources"])
            secrets = _plan.check_secret_environment(args["secret_environment"], catalog)
            self._placement_params(args, [], [])
            mode, source = self._settle_mode(args, task_vars, said)
            gpus = args["gpus"]
            if gpus is None:
                answer = self._module("gpufleet.inference.gpu_facts", {}, task_vars, said)
                if answer.get("failed"):
                    return dict(answer, changed=False)
                gpus = said["ansible_facts"].get("gpus") or []
            placement = _plan.place_in_two_passes(
                catalog, args["profile"], mode, extra, gpus,
                lambda services: self._place(args, gpus, services))
            said["warnings"].extend(placement.get("warnings") or [])
            plan = _plan.plan(catalog, placement, gpus, args["profile"], mode, extra,
                              args["sources"], secrets)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        plan.update(dual_gpu_mode_source=source, env_file=args["env_file"])
        said["ansible_facts"]["services_plan"] = plan
        return dict({key: value for key, value in said.items() if value}, changed=False,
                    ansible_facts=said["ansible_facts"])
