"""Offline stand-in for ansible-test's pip bootstrap script (get-pip).

ansible-test creates its sanity virtual environments without pip and downloads a
get-pip script from a host this project's machines cannot reach. This script is
placed in ansible-test's cache instead (see the Makefile's ``sanity`` target): it
installs the packages it is asked for with the pip wheel that lies beside it, which
``make`` downloads from the package index.
"""

import glob
import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
wheels = sorted(glob.glob(os.path.join(here, "pip-*.whl")))
if not wheels:
    sys.exit("no pip wheel beside %s" % __file__)
sys.path.insert(0, wheels[-1])
# get-pip's own flags, which pip itself does not know.
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.argv = ["pip", "install", *args]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
