"""Import an app from a path like `examples.porygon.app:jobs`, with errors that say what to fix."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from stride.errors import ConfigurationError

if TYPE_CHECKING:
    from stride.app import Stride


def load_app(path: str) -> Stride:
    """The `Stride` object named by `module.path:attribute`."""
    from stride.app import Stride

    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(
            f"APP {path!r} must look like 'package.module:attribute', e.g. "
            "'examples.porygon.app:jobs'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"cannot import {module_name!r} for APP {path!r}: {exc}; run from the directory "
            "that contains the package, or install it") from exc
    app = getattr(module, attribute, None)
    if app is None:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}")
    if not isinstance(app, Stride):
        raise ConfigurationError(
            f"{path!r} is a {type(app).__name__}, not a Stride app (jobs = Stride(app_id=...))")
    return app
