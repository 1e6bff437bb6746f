"""Seeding a unit: Python, NumPy and torch, torch through an import hook the moment it is first imported.

A unit whose approach never imports torch does not carry its 200 MB in the serving memory it reports: the hook
(:class:`_SeedTorchOnImport`) waits in ``sys.meta_path`` for the import, and seeds torch as soon as it is executed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
from typing import Any


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch on every device, as transformers' ``set_seed`` does.

    torch is seeded the moment it is first imported rather than imported here: a unit whose approach
    never uses torch would otherwise carry its 200 MB in the serving memory it reports.
    """
    import random
    import sys

    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)  # seeds every CUDA device too
    elif not any(isinstance(finder, _SeedTorchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SeedTorchOnImport(seed))


class _SeedTorchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the real finder find torch, and seeds it as soon as it is executed.

    It stays in place until torch is really imported: libraries probe with ``importlib.util.find_spec
    ("torch")`` (transformers does, to see whether torch is installed) long before they import it.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch":
            return None
        import sys

        index = sys.meta_path.index(self)
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec("torch")
        finally:
            sys.meta_path.insert(index, self)
        if spec is None or spec.loader is None:
            return spec
        original, finder = spec.loader, self

        class SeedingLoader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return original.create_module(spec)

            def exec_module(self, module: Any) -> None:
                original.exec_module(module)
                module.manual_seed(finder.seed)
                if finder in sys.meta_path:
                    sys.meta_path.remove(finder)

        spec.loader = SeedingLoader()
        return spec
