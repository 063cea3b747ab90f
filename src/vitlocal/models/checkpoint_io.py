"""Reading official checkpoints without running the code their pickles name.

Released checkpoints pickle more than weights: SimMIM's ``save_checkpoint``
stores its yacs ``config`` (a ``yacs.config.CfgNode``), others an argparse
``Namespace``. ``torch.load(weights_only=True)`` refuses any class outside
torch's allowlist, and a full unpickle imports (and may run) whatever the
file names: "No module named 'yacs'" at best, ``os.system`` at worst.

``load_checkpoint`` first tries ``weights_only=True``. If that refuses a
global, it unpickles again with ``RestrictedUnpickler``, whose ``find_class``
(the only way a pickle reaches code) returns

- torch's own weights-only allowlist (tensor rebuilders, storages, dtypes,
  ``OrderedDict``, ...) and a few plain builtin types, as themselves;
- for ``copyreg._reconstructor`` (protocols 0/1), a builder of stand-ins;
- for a global of a module that executes code or touches the system
  (``os``, ``subprocess``, ``builtins.eval``, ...): a refusal naming it;
- for anything else: an inert ``Foreign`` stand-in class named after it.
  Nothing is imported, so a class of an absent module (``yacs``) loads as
  well as a present one; calling, building or filling a stand-in only
  records what the pickle gave it.

So the result holds tensors, plain containers and stand-ins; the converters
take the state dict (``model``, ``state_dict``, ...) and ignore the rest.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import pickle
from pathlib import Path
from typing import Any

import torch

#: Modules whose callables run code or reach the system: a pickle naming one is refused outright.
REFUSED_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "builtins", "importlib", "runpy", "code",
    "codeop", "shutil", "socket", "pty", "pickle", "_pickle", "marshal", "ctypes", "types", "functools",
    "operator", "io", "_io", "pathlib", "tempfile", "signal", "multiprocessing", "threading", "asyncio",
    "platform", "inspect", "webbrowser", "copyreg", "pydoc", "timeit", "cProfile", "profile", "pdb", "bdb",
})
#: Builtin types that only build plain values when called.
PLAIN_BUILTINS = {name: getattr(builtins, name) for name in (
    "object", "frozenset", "set", "slice", "range", "tuple", "list", "dict", "int", "float", "complex", "str",
    "bytes", "bytearray", "bool")}


class Foreign:
    """Inert stand-in for a class the loader will not import; keeps what the pickle gave it.

    ``foreign_name`` is the ``module.name`` it stands for; ``args`` the
    constructor arguments, ``state`` the ``__setstate__`` value, ``items`` /
    ``values`` what ``SETITEMS`` / ``APPENDS`` added (a yacs ``CfgNode`` is a dict).
    """

    foreign_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Foreign:
        obj = super().__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "kwargs", kwargs)
        object.__setattr__(obj, "state", None)
        object.__setattr__(obj, "items", {})
        object.__setattr__(obj, "values", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.values.append(value)

    def extend(self, values: Any) -> None:
        self.values.extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self.foreign_name}>"


def _stand_in_reconstructor(cls: Any, base: Any, state: Any) -> Foreign:
    """``copyreg._reconstructor`` of protocols 0/1, for stand-ins only."""
    if not (isinstance(cls, type) and issubclass(cls, Foreign)):
        raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r}: only stand-ins are rebuilt")
    if base is dict and isinstance(state, dict):  # a dict subclass: its items (yacs CfgNode)
        obj = cls()
        obj.items.update(state)
        return obj
    if base is list and isinstance(state, list):
        obj = cls()
        obj.values.extend(state)
        return obj
    return cls(state)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` never imports: see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stand_ins: dict[str, type[Foreign]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocols < 3 write Python 2 names (__builtin__, copy_reg): map them as pickle's own find_class does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        allowed = {**torch._weights_only_unpickler._get_allowed_globals(),
                   **torch._weights_only_unpickler._get_user_allowed_globals()}
        if full in allowed:
            return allowed[full]
        if module == "builtins" and name in PLAIN_BUILTINS:
            return PLAIN_BUILTINS[name]
        if full == "copyreg._reconstructor":
            return _stand_in_reconstructor
        if module.split(".")[0] in REFUSED_MODULES:
            raise pickle.UnpicklingError(f"refusing to load global {full}: it could run code")
        if full not in self.stand_ins:
            self.stand_ins[full] = type(name, (Foreign,), {"__module__": module, "foreign_name": full})
        return self.stand_ins[full]


class _RestrictedPickle:
    """What ``torch.load(pickle_module=...)`` needs of a pickle module."""

    __name__ = "vitlocal.models.checkpoint_io"
    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


def load_checkpoint(path: str | Path) -> Any:
    """The object a torch checkpoint holds: ``weights_only`` if it allows, else with stand-ins (never foreign code).

    Errors propagate (the caller names the file).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)


__all__ = ["Foreign", "REFUSED_MODULES", "RestrictedUnpickler", "load_checkpoint"]
