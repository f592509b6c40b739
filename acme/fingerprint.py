"""The fingerprint of a run: what must be the same for ``resume=True`` to continue it.

A fingerprint is stored in ``.acme/run.json`` when a run starts; a resumed run
computes its own and compares them, so that results of two different runs are never
mixed in one folder.

A digest must be exact (a changed value changes it) and stable across processes
(``PYTHONHASHSEED`` differs between runs, so nothing may depend on ``hash()``, set
iteration order or ``id()``). What is digested:

* plain values, containers (sets and dicts order-free, as ``==`` compares them),
  numpy arrays (dtype, shape, bytes; object arrays element by element; masked
  arrays with their mask and fill value), numpy scalars;
* functions defined in the user's own code by what they do: their bytecode,
  constants, names, defaults, closure cells, attributes, and the module-level
  globals their code reads (a global constant changed between runs changes the
  results as much as an argument does); functions and classes of installed
  packages and of the standard library by name and package version (digesting a
  library's whole code would be slow and would not make the digest more useful);
* partials, bound methods and other objects by their type and their state as
  pickle sees it (``__reduce_ex__``): exactly what a worker process receives.

What acme cannot digest soundly (an open file, a lock, a generator, an object whose
``__reduce_ex__`` fails) makes that part of the fingerprint *unknown*, and an unknown
part is never equal to anything: resume is refused, naming it. A function's reads
that the code does not name (``getattr`` with a computed name, files, environment
variables) cannot be seen by any fingerprint.
"""
from __future__ import annotations

import copyreg
import dis
import functools
import hashlib
import os
import struct
import sys
import sysconfig
import types
from typing import Any

import numpy as np

from .inputs import CallPlan, hdf5_object

__all__ = ["fingerprint", "describe_difference", "digest", "UNKNOWN"]

#: Changed whenever what a digest covers changes: older records are not comparable.
FORMAT = 2
#: Prefix of a digest that could not be computed soundly (never equal to anything).
UNKNOWN = "unknown: "
#: Upper bound on the objects visited for one digest (shared objects count each time).
_BUDGET = 2_000_000

_SIMPLE = (int, float, complex, str, bytes, bool, type(None))
_SLOT_TYPES = (types.MemberDescriptorType, types.GetSetDescriptorType,
               types.WrapperDescriptorType, types.MethodDescriptorType,
               types.BuiltinFunctionType, types.MethodWrapperType)


class Undigestable(Exception):
    """A value whose content acme cannot put into a fingerprint."""


def _library_prefixes() -> tuple:
    paths = sysconfig.get_paths()
    prefixes = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    try:
        import site
        prefixes.update(site.getsitepackages())
        prefixes.add(site.getusersitepackages())
    except Exception:  # some embedded Pythons have no full site module
        pass
    return tuple(sorted(p.rstrip("/") + "/" for p in prefixes if p))


_LIBRARY_PREFIXES = _library_prefixes()


@functools.lru_cache(maxsize=None)
def _module_is_library(name: str) -> bool:
    """A module of the standard library or of an installed package (not user code)."""
    if not name or name == "__main__":
        return False
    if name in sys.builtin_module_names or name.split(".")[0] in sys.builtin_module_names:
        return True
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path is None:  # frozen or built-in modules; not a namespace package of the user
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        return module is not None and origin in ("built-in", "frozen")
    return path.startswith(_LIBRARY_PREFIXES)


def _library_version(module_name: str) -> str:
    top = sys.modules.get(module_name.split(".")[0])
    return str(getattr(top, "__version__", ""))


class _Digest:
    """One digest computation: a hash fed with tagged, length-prefixed tokens."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.path: list = []  # ids of the containers being digested (cycles)
        self.budget = _BUDGET

    def token(self, tag: str, payload: bytes = b"") -> None:
        self.h.update(f"{tag}:{len(payload)}:".encode() + payload)

    def sub(self, value: Any, names: frozenset = frozenset()) -> bytes:
        """The digest of ``value`` on its own, e.g. one element of a set (so that
        the order in which elements come does not matter)."""
        other = _Digest()
        other.path = list(self.path)
        other.budget = self.budget
        other.value(value, names)
        self.budget = other.budget
        return other.h.digest()

    def value(self, value: Any, names: frozenset = frozenset()) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise Undigestable("the value is too large to fingerprint")
        kind = type(value)
        if kind in _SIMPLE:
            return self._simple(value)
        if id(value) in self.path:  # a cycle: say how far back it points
            return self.token("cycle", str(len(self.path) - self.path.index(id(value))).encode())
        self.path.append(id(value))
        try:
            self._compound(value, names)
        finally:
            self.path.pop()

    def _simple(self, value: Any) -> None:
        kind = type(value)
        if kind is str:
            self.token("str", value.encode("utf-8", "surrogatepass"))
        elif kind is bytes:
            self.token("bytes", value)
        elif kind is float:
            self.token("float", struct.pack("<d", value))
        else:  # int, bool, complex, None: repr is exact and names the type
            self.token(kind.__name__, repr(value).encode())

    def _compound(self, value: Any, names: frozenset) -> None:
        kind = type(value)
        if kind in (list, tuple):
            if all(type(v) in _SIMPLE for v in value):  # fast path: repr is exact here
                return self.token(kind.__name__ + "-simple", repr(value).encode())
            self.token(kind.__name__, str(len(value)).encode())
            for item in value:
                self.value(item)
        elif (kind is dict or kind is types.MappingProxyType) and all(
                type(k) is str for k in value):  # common and fast: sorted keys
            self.token("dict-str", str(len(value)).encode())
            for key in sorted(value):
                self._simple(key)
                self.value(value[key])
        elif kind is dict or kind is types.MappingProxyType:
            self._unordered("dict", [(k, v) for k, v in value.items()])
        elif kind in (set, frozenset):
            self._unordered(kind.__name__, list(value))
        elif isinstance(value, np.ndarray):
            self._array(value)
        elif isinstance(value, np.generic):
            self.token("np." + kind.__name__, repr(value.dtype).encode() + value.tobytes())
        elif isinstance(value, types.CodeType):
            self._code(value)
        elif isinstance(value, types.FunctionType):
            self._function(value)
        elif isinstance(value, types.MethodType):
            self.token("method")
            self.value(value.__func__)
            self.value(value.__self__)
        elif isinstance(value, functools.partial):
            self.token("partial")
            self.value(value.func)
            self.value(value.args)
            self.value(value.keywords)
            self.value(value.__dict__)
        elif isinstance(value, types.ModuleType):
            self._module(value, names)
        elif isinstance(value, type):
            self._class(value)
        elif isinstance(value, (staticmethod, classmethod)):
            self.token(kind.__name__)
            self.value(value.__func__)
        elif isinstance(value, property):
            self.token("property")
            for part in (value.fget, value.fset, value.fdel):
                self.value(part)
        elif hdf5_object(value):
            self._hdf5(value)
        else:
            self._object(value)

    def _hdf5(self, value: Any) -> None:
        """An h5py dataset (sent by name) by its file, path and content, read in
        slabs; groups and files are not digested."""
        import h5py
        if not isinstance(value, h5py.Dataset):
            raise Undigestable(f"an h5py.{type(value).__name__} cannot be fingerprinted; "
                               "pass its datasets or their file names")
        self.token("h5dataset", f"{os.path.abspath(value.file.filename)}:{value.name}:"
                                f"{value.dtype!r}{value.shape}".encode())
        if value.shape is None or value.ndim == 0:  # empty or scalar
            self.value(value[()] if value.shape is not None else None)
            return
        row_bytes = max(1, value.dtype.itemsize * int(np.prod(value.shape[1:])))
        step = max(1, (64 << 20) // row_bytes)
        for start in range(0, value.shape[0], step):
            self._array(np.asarray(value[start:start + step]))

    def _unordered(self, tag: str, items: list) -> None:
        parts = sorted(self.sub(item) for item in items)
        self.token(tag, b"".join(parts))

    def _array(self, value: np.ndarray) -> None:
        if type(value) is np.ma.MaskedArray:
            self.token("masked")
            self._array(np.ma.getdata(value))
            self._array(np.ma.getmaskarray(value))
            self.value(value.fill_value)
            self.value(bool(value.hardmask))
            return
        if type(value) is not np.ndarray:  # a subclass: its attributes count too
            self.value(type(value))
            self._array(np.asarray(value).view(np.ndarray))
            self.value(getattr(value, "__dict__", {}))
            return
        dtype = value.dtype  # .str is exact for plain types; fields need the full repr
        plain = dtype.names is None and dtype.subdtype is None
        self.token("ndarray", f"{dtype.str if plain else repr(dtype)}{value.shape}".encode())
        if value.dtype.hasobject:
            for item in value.flat:
                self.value(item)
        else:
            self.h.update(np.ascontiguousarray(value).view(np.uint8).data
                          if value.size else b"")

    def _code(self, code: types.CodeType) -> None:
        self.token("code", code.co_code)
        for attr in ("co_name", "co_argcount", "co_posonlyargcount", "co_kwonlyargcount",
                     "co_flags", "co_names", "co_varnames", "co_freevars", "co_cellvars"):
            self.value(getattr(code, attr, None))
        self.value(code.co_consts)  # nested functions' code objects, recursively

    def _function(self, func: types.FunctionType) -> None:
        module = getattr(func, "__module__", None) or ""
        qualname = getattr(func, "__qualname__", func.__name__)
        if _module_is_library(module):
            return self.token("libfunc", f"{module}.{qualname} {_library_version(module)}"
                              .encode())
        self.token("function", f"{module}.{qualname}".encode())
        self._code(func.__code__)
        self.value(func.__defaults__)
        self.value(func.__kwdefaults__)
        cells = func.__closure__ or ()
        for name, cell in zip(func.__code__.co_freevars, cells):
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not filled yet
                self.token("empty-cell")
                continue
            self._within(f"the closure variable {name!r} of {qualname}", contents)
        self._within(f"the attributes of {qualname}", dict(func.__dict__))
        self._globals(func, qualname)

    def _within(self, where: str, value: Any, names: frozenset = frozenset()) -> None:
        """``value``, with ``where`` named if it cannot be digested."""
        try:
            self.value(value, names)
        except Undigestable as exc:
            raise Undigestable(f"{where}: {exc}") from None

    def _globals(self, func: types.FunctionType, qualname: str) -> None:
        """The module-level values the function's code (and nested code) names."""
        global_names, names = _code_names(func.__code__)
        scope = func.__globals__
        for name in sorted(global_names):
            if name in scope:
                self.token("global", name.encode())
                self._within(f"the global {name!r} read by {qualname}", scope[name], names)

    def _module(self, module: types.ModuleType, names: frozenset) -> None:
        """A library module by name and version; a module of the user's own code by
        the attributes the referring code names (``helpers.scale`` reads ``scale``)."""
        name = module.__name__
        if _module_is_library(name):
            return self.token("libmodule", f"{name} {_library_version(name)}".encode())
        self.token("module", name.encode())
        for attr in sorted(names):
            if attr in vars(module):
                self.token("attr", attr.encode())
                self.value(vars(module)[attr], names)

    def _class(self, cls: type) -> None:
        module = getattr(cls, "__module__", "") or ""
        if _module_is_library(module):
            return self.token("libclass", f"{module}.{cls.__qualname__} "
                              f"{_library_version(module)}".encode())
        self.token("class", f"{module}.{cls.__qualname__}".encode())
        for base in cls.__mro__[1:]:
            if not _module_is_library(getattr(base, "__module__", "") or ""):
                self.token("base", f"{base.__module__}.{base.__qualname__}".encode())
        for attr in sorted(vars(cls)):
            if attr in ("__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"):
                continue
            self.token("attr", attr.encode())
            member = vars(cls)[attr]
            if isinstance(member, _SLOT_TYPES):  # C-level slots and descriptors
                self.token("slot", f"{type(member).__name__}".encode())
            else:
                self.value(member)
        for base in cls.__mro__[1:]:
            if not _module_is_library(getattr(base, "__module__", "") or ""):
                self.value(base)

    def _object(self, value: Any) -> None:
        """Anything else: its type and its state as pickle would send it."""
        kind = type(value)
        module = getattr(kind, "__module__", "") or ""
        try:
            reducer = copyreg.dispatch_table.get(kind)  # as pickle looks it up
            reduced = reducer(value) if reducer is not None else value.__reduce_ex__(4)
        except Exception as exc:
            raise Undigestable(f"a {module}.{kind.__qualname__} object cannot be "
                               f"fingerprinted (it cannot be pickled: {exc})") from None
        if isinstance(reduced, str):  # a global such as a builtin function: by name
            where = getattr(value, "__module__", None) or module
            self.token("global-ref", f"{where}.{reduced} {_library_version(where)}"
                       .encode())
            return
        self.value(kind)
        reduced = tuple(reduced) + (None,) * (6 - len(reduced))
        constructor, args, state, items, dict_items = reduced[:5]
        if constructor is copyreg._reconstructor or getattr(
                constructor, "__name__", "") == "__newobj__":
            self.token("reconstruct")
        else:
            self.value(constructor)
        self.value(args)
        self.value(state)
        self.value(list(items) if items is not None else None)
        # in the order pickle sends them (an OrderedDict's order is part of its value)
        self.value(list(dict_items) if dict_items is not None else None)


_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"})


@functools.lru_cache(maxsize=4096)
def _code_names(code: types.CodeType) -> tuple[frozenset, frozenset]:
    """The global names ``code`` (and the code nested in it) loads, and every name
    it uses (attribute names too: ``helpers.scale`` reads ``scale`` of a module)."""
    globals_, names = set(), set(code.co_names)
    for instruction in dis.get_instructions(code):
        if instruction.opname in _GLOBAL_OPS and isinstance(instruction.argval, str):
            globals_.add(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            more_globals, more_names = _code_names(const)
            globals_ |= more_globals
            names |= more_names
    return frozenset(globals_), frozenset(names)


def digest(value: Any) -> str:
    """A stable hex digest of ``value``, or ``UNKNOWN + reason`` when acme cannot
    digest it soundly (such a digest is never equal to any other)."""
    d = _Digest()
    try:
        d.value(value)
    except Undigestable as exc:
        return UNKNOWN + str(exc)
    except RecursionError:
        return UNKNOWN + "the value is nested too deeply to fingerprint"
    except Exception as exc:  # user objects may raise anything from __reduce_ex__
        return UNKNOWN + f"fingerprinting it failed ({type(exc).__name__}: {exc})"
    return d.h.hexdigest()[:32]


def function_parts(func: Any) -> dict:
    """Digests of the parts of ``func`` that a resume message can name (its code,
    defaults, each closure variable and global it reads); the whole digest decides,
    these only say what changed."""
    if isinstance(func, types.MethodType):
        return dict(function_parts(func.__func__),
                    **{"the object the method is bound to": digest(func.__self__)})
    if isinstance(func, functools.partial):
        return dict(function_parts(func.func),
                    **{"what the partial binds": digest((func.args, func.keywords))})
    if not isinstance(func, types.FunctionType) or _module_is_library(func.__module__ or ""):
        return {f"the callable {type(func).__qualname__} object": digest(func)}
    qualname = func.__qualname__
    parts = {f"the code of {qualname}": digest(func.__code__),
             f"the defaults of {qualname}": digest((func.__defaults__, func.__kwdefaults__)),
             f"the attributes of {qualname}": digest(dict(func.__dict__))}
    for name, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
        try:
            parts[f"the closure variable {name!r} of {qualname}"] = digest(cell.cell_contents)
        except ValueError:  # a cell not filled yet
            parts[f"the closure variable {name!r} of {qualname}"] = "empty"
    global_names, _ = _code_names(func.__code__)
    for name in sorted(global_names):
        if name in func.__globals__:
            parts[f"the global {name!r} read by {qualname}"] = digest(func.__globals__[name])
    return parts


def fingerprint(plan: CallPlan, settings: dict) -> dict:
    """What identifies a run: the function, the calls, and how results are stored."""
    func = plan.func
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return {
        "format": FORMAT,
        "python": "%d.%d" % sys.version_info[:2],
        "function": f"{getattr(func, '__module__', None) or '?'}.{name}",
        "function_digest": digest(func),
        "function_parts": function_parts(func),
        "n_calls": plan.n_inputs,
        "positional": [digest(a.value) for a in plan.positional],
        "keywords": {k: digest(a.value) for k, a in sorted(plan.keywords.items())},
        "settings": settings,
    }


def _differs(what: str, old: Any, new: Any) -> list[str]:
    """Why ``what`` cannot be taken as unchanged, or nothing when it is the same."""
    for side, value in (("now", new), ("in the earlier run", old)):
        if isinstance(value, str) and value.startswith(UNKNOWN):
            return [f"{what} cannot be compared ({side}: {value[len(UNKNOWN):]}), so "
                    "acme cannot tell whether it is unchanged"]
    return [f"{what} has changed"] if old != new else []


def _parts_that_differ(old: dict, new: dict) -> list[str]:
    """Which named parts of the function differ (see :func:`function_parts`)."""
    found = []
    for key in sorted(set(old) | set(new)):
        if key not in old or key not in new:
            found.append(f"{key} was {'added' if key in new else 'removed'}")
        else:
            found += _differs(key, old[key], new[key])
    return found


def describe_difference(old: dict, new: dict) -> list[str]:
    """Human-readable reasons why the run recorded as ``old`` cannot be continued
    as ``new`` (empty when they are the same)."""
    if old.get("format") != new.get("format"):
        return [f"the earlier run's record has fingerprint format {old.get('format')}, "
                f"this acme writes format {new.get('format')}, so they cannot be compared"]
    diffs = []
    if old.get("python") != new.get("python"):
        diffs.append(f"the earlier run used Python {old.get('python')}, this one "
                     f"Python {new.get('python')} (bytecode differs)")
    if old.get("function") != new.get("function"):
        diffs.append(f"the function was {old.get('function')}, now {new.get('function')}")
    else:
        found = _differs(f"the function {new.get('function')}",
                         old.get("function_digest"), new.get("function_digest"))
        if found:  # name the parts that changed where the records say
            diffs += _parts_that_differ(old.get("function_parts", {}),
                                        new.get("function_parts", {})) or found
    if old.get("n_calls") != new.get("n_calls"):
        diffs.append(f"the number of calls was {old.get('n_calls')}, now {new.get('n_calls')}")
    old_pos, new_pos = old.get("positional", []), new.get("positional", [])
    if len(old_pos) != len(new_pos):
        diffs.append(f"the function got {len(old_pos)} positional arguments, now {len(new_pos)}")
    else:
        for k, (a, b) in enumerate(zip(old_pos, new_pos)):
            diffs += _differs(f"positional argument {k}", a, b)
    old_kw, new_kw = old.get("keywords", {}), new.get("keywords", {})
    for key in sorted(set(old_kw) | set(new_kw)):
        if key not in old_kw or key not in new_kw:
            diffs.append(f"keyword argument {key!r} was {'added' if key in new_kw else 'removed'}")
        else:
            diffs += _differs(f"keyword argument {key!r}", old_kw[key], new_kw[key])
    old_set, new_set = old.get("settings", {}), new.get("settings", {})
    for key in sorted(set(old_set) | set(new_set)):
        if old_set.get(key) != new_set.get(key):
            diffs.append(f"{key} was {old_set.get(key)!r}, now {new_set.get(key)!r}")
    return diffs
