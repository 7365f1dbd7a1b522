"""Optional dependencies: import one, or stop with one line naming the extra that installs it.

    pa = require("pyarrow", extra="index", feature="the vector index")

The edge install stays small (openvino, numpy, Pillow, a tokenizer); Ray, LanceDB and pyarrow come with the
`ray` and `index` extras.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ovclip.errors import OvclipError, first_line


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """`importlib.import_module(module)`, or an OvclipError saying how to install it.

    A module that is installed but fails to import (e.g. a pyarrow wheel built for another numpy) is reported with
    its own first line, so the fix is visible too.
    """
    hint = f"pip install 'ovclip[{extra}]'"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or module
        raise OvclipError(f"{feature} needs {missing}, which is not installed: {hint}") from None
    except ImportError as e:
        raise OvclipError(
            f"{feature} needs {module}, which is installed but fails to import ({first_line(e)}): {hint}"
        ) from None
