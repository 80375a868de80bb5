#!/usr/bin/env python3
"""Run the lab from a checkout.

    python stability_lab.py --task logistic_regression --sweep precision,lr,lambda

Same as ``stability-lab run ...``. Works without installing the package (it puts
``src/`` on the path); the dependencies must be installed (see README).

When Python runs in the repository root, ``import stability_lab`` finds this file
before the installed package. Imported that way, the file stands in for the package in
``src/stability_lab`` (it takes its ``__path__`` and runs its ``__init__``), so
``import stability_lab.numerics`` works from the root too.
"""

import os
import sys

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")

if __name__ == "__main__":
    sys.path.insert(0, _SRC)
    from stability_lab.cli import entry

    entry()
else:
    __path__ = [os.path.join(_SRC, "stability_lab")]
    __package__ = __name__
    with open(os.path.join(__path__[0], "__init__.py")) as _fh:
        exec(compile(_fh.read(), _fh.name, "exec"))
