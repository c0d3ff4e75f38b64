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
# The host's recorded mode (any kind), beside the dual-GPU mode in DUAL_GPU_MODE.
RECORD_KEY = "INFERENCE_MODE"


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

    def _env_modes(self, env_file, task_vars, said):
        """(INFERENCE_MODE, DUAL_GPU_MODE) of the host's .env, None for a missing file or key."""
        answer = self._module("ansible.builtin.slurp", {"src": env_file}, task_vars, said)
        if answer.get("failed"):
            reason = str(answer.get("msg") or "")
            if reason.lower().startswith("file not found"):
                return None, None
            raise PlanError("services_env_file %s cannot be read for %s: %s"
                            % (env_file, MODE_KEY, reason or "no reason given"))
        try:
            text = base64.b64decode(answer.get("content") or "").decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise PlanError("services_env_file %s is not UTF-8 text (%s)"
                            % (env_file, exc)) from None
        try:
            recorded = _common.dotenv_get(text, RECORD_KEY)
            dual = _common.dotenv_get(text, MODE_KEY)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        if dual and dual not in _plan.MODES:  # empty (DUAL_GPU_MODE=) is no mode: the default
            raise PlanError(".env %s (%s) must be one of %s; got: %r"
                            % (MODE_KEY, env_file, ", ".join(_plan.MODES), dual))
        return recorded or None, dual or None

    def _settle_mode(self, args, task_vars, said, modes):
        """(mode, dual-GPU mode, source): given (mode, then dual_gpu_mode), else the .env's
        INFERENCE_MODE, then its DUAL_GPU_MODE, else ollama."""
        given = args["mode"] or args["dual_gpu_mode"]
        recorded = dual = None
        if not given or not args["dual_gpu_mode"]:
            recorded, dual = self._env_modes(args["env_file"], task_vars, said)
        if given:
            name, source = given, "given"
            where = "services_mode" if args["mode"] else "services_dual_gpu_mode"
        elif recorded or dual:
            name, source = recorded or dual, "env"
            where = "%s in %s" % (RECORD_KEY if recorded else MODE_KEY, args["env_file"])
        else:
            name, source, where = "ollama", "default", "services_mode"
        if args["dual_gpu_mode"] and args["dual_gpu_mode"] not in _plan.MODES:
            raise PlanError("services_dual_gpu_mode must be one of %s; got: %s"
                            % (", ".join(_plan.MODES), args["dual_gpu_mode"]))
        try:
            mode = _plan.resolve_mode(name, modes, where=where)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        return mode, args["dual_gpu_mode"] or dual, source

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
            modes = _plan.check_modes(args["modes"], _plan.check_catalog(catalog, extra))
            mode, dual, source = self._settle_mode(args, task_vars, said, modes)
            gpus = args["gpus"]
            if gpus is None:
                answer = self._module("gpufleet.inference.gpu_facts",
                                      dict(args["gpu_facts_options"]), task_vars, said)
                if answer.get("failed"):
                    return dict(answer, changed=False)
                gpus = said["ansible_facts"].get("gpus") or []
            placement = _plan.place_in_two_passes(
                catalog, args["profile"], mode, extra, gpus,
                lambda services: self._place(args, gpus, services))
            said["warnings"].extend(placement.get("warnings") or [])
            plan = _plan.plan(catalog, placement, gpus, args["profile"], mode, extra,
                              args["sources"], secrets, args["modes"], dual)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        plan.update(dual_gpu_mode_source=source, env_file=args["env_file"])
        said["ansible_facts"]["services_plan"] = plan
        return dict({key: value for key, value in said.items() if value}, changed=False,
                    ansible_facts=said["ansible_facts"])
