"""The names users import are a contract. Derived from the modules themselves: every public class and function
a module defines is in its `__all__`, and everything in `__all__` exists, so adding one is a decision and
losing one is a break that this test names."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import classifiers
import router


def _modules() -> list[ModuleType]:
    found = []
    for package in (router, classifiers):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            found.append(importlib.import_module(info.name))
    return found


def test_every_module_declares_what_it_defines() -> None:
    for module in _modules():
        exported = getattr(module, "__all__", None)
        defined = {
            name
            for name, obj in vars(module).items()
            if not name.startswith("_")
            and (inspect.isclass(obj) or inspect.isfunction(obj))
            and obj.__module__ == module.__name__
        }
        if exported is None:
            assert not defined, f"{module.__name__} defines {sorted(defined)} but declares no __all__"
            continue
        missing = [name for name in exported if not hasattr(module, name)]
        assert not missing, f"{module.__name__}.__all__ names what it does not have: {missing}"
        undeclared = defined - set(exported)
        assert not undeclared, f"{module.__name__} defines {sorted(undeclared)} outside __all__"


def test_the_documented_entry_points_stay() -> None:
    """What the README tells users to import or run."""
    assert {"load", "Classifier", "ClassifierFileError", "default_path"} <= set(classifiers.__all__)
    assert router.__all__ == ["__version__"]
    from router.cli import main

    assert callable(main)
