# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private plugin_utils of gpufleet.inference: one way for filters to report bad input.

Not a public API: the leading underscore says so. The filters are thin wrappers of pure
functions in module_utils, which raise ValueError (or TypeError) naming the field and value.
"""

from __future__ import annotations

import functools

from ansible.errors import AnsibleFilterError


def filter_function(name, function):
    """``function`` as a filter: its bad-input errors become AnsibleFilterError("name: ...").

    The original exception is not chained: a chained message could carry an argument's value
    (the router's filters get API keys).
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnsibleFilterError("%s: %s" % (name, exc)) from None

    return wrapper
