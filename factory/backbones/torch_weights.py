"""Read a legacy (pre-zip) PyTorch state-dict file into numpy arrays, without PyTorch.

A .pth file is a pickle, and unpickling runs whatever callables it names. This reader
admits only the few names a state dict needs (OrderedDict, the tensor-rebuild helper and the
typed storage classes) and refuses everything else, so a tampered file cannot run code.
Nothing in the file is trusted: every storage's size and every tensor's shape, stride and
offset are checked against the bytes actually present before an array is viewed, and any
malformed input becomes one FactoryError.

Legacy layout: pickles of (magic, protocol, sys_info, the state dict with persistent storage
references, the list of storage keys), then each storage's raw bytes prefixed by its
little-endian int64 element count.
"""
from __future__ import annotations

import collections
import io
import math
import pickle
from pathlib import Path

import numpy as np

from targets.errors import FactoryError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001
_STORAGE_DTYPES = {  # little-endian, as the legacy format writes them
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
MAX_DIMS = 8
MAX_KEY = 256  # characters of a storage key


class _Malformed(Exception):
    """Raised inside the reader; load_state_dict turns it into a FactoryError naming the file."""


def _index(value, what: str) -> int:
    """A non-negative Python int (not bool), or _Malformed."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Malformed(f"{what} is {str(value)[:40]}, not a non-negative integer")
    return value


class _Sealed:
    """Refuses the pickle BUILD opcode, which would overwrite checked fields (shape, size, dtype) afterwards."""

    def __setstate__(self, _state):
        raise _Malformed("the file tries to change a tensor or storage after it was checked")


class _Storage(_Sealed):
    def __init__(self, dtype: np.dtype, size: int):
        self.dtype = dtype
        self.size = size
        self.data: np.ndarray | None = None


class _LazyTensor(_Sealed):
    """A tensor whose storage bytes come later in the file; its view is checked to lie inside them."""

    def __init__(self, storage, offset, shape, stride):
        if not isinstance(storage, _Storage):
            raise _Malformed("a tensor's storage is not a storage reference")
        if not isinstance(shape, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(shape) != len(stride) \
                or len(shape) > MAX_DIMS:
            raise _Malformed(f"a tensor's shape and stride are not two sequences of the same length (at most {MAX_DIMS})")
        self.storage = storage
        self.offset = _index(offset, "a tensor's storage offset")
        self.shape = tuple(_index(s, "a tensor dimension") for s in shape)
        self.stride = tuple(_index(s, "a tensor stride") for s in stride)
        self.count = math.prod(self.shape)
        if self.count > storage.size:
            raise _Malformed(f"a tensor of {self.count} values views a storage of {storage.size}")
        if self.count and self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) >= storage.size:
            raise _Malformed(f"a tensor (shape {self.shape}, stride {self.stride}, offset {self.offset}) reaches "
                             f"beyond its storage of {storage.size} values")

    def materialize(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None or len(flat) != self.storage.size:
            raise _Malformed("a tensor's storage has no data in the file")
        if self.count == 0:
            return np.empty(self.shape, flat.dtype)
        view = np.lib.stride_tricks.as_strided(  # inside flat: checked in __init__ against the same size
            flat[self.offset:], shape=self.shape, strides=[s * flat.itemsize for s in self.stride], writeable=False
        )
        return np.array(view)  # copy: detach from the storage buffer


def _rebuild_tensor(storage=None, offset=None, shape=None, stride=None, *_ignored, **_also_ignored):
    return _LazyTensor(storage, offset, shape, stride)


class _StorageType(_Sealed):
    """Stands for torch.<X>Storage in a persistent reference; it can be named, never called."""

    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _Malformed(f"refusing to load {str(module)[:64]}.{str(name)[:64]} from a weights file")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise _Malformed(f"unexpected persistent reference {str(pid)[:80]}")
        _kind, storage_type, key, _location, size = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise _Malformed("a storage reference names no storage type")
        if not isinstance(key, str) or len(key) > MAX_KEY:
            raise _Malformed("a storage key is not a short string")
        size = _index(size, "a storage size")
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = _Storage(storage_type.dtype, size)
        elif known.dtype != storage_type.dtype or known.size != size:
            raise _Malformed(f"storage {key!r} is referenced with two different types or sizes")
        return known


def _plain_load(f):
    return _RestrictedUnpickler(f, {}).load()


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the state dict in `path` as {name: numpy array}."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FactoryError(f"{path}: cannot read weights ({exc.strerror or exc})") from None
    if data[:2] == b"PK":
        raise FactoryError(f"{path}: zip-format PyTorch file; only the legacy format is supported")
    try:
        return _parse(io.BytesIO(data), len(data))
    except _Malformed as exc:
        raise FactoryError(f"{path}: cannot read weights ({exc})") from None
    except Exception as exc:  # the unpickler's own errors for a malformed stream (also Recursion/MemoryError)
        text = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise FactoryError(f"{path}: cannot read weights (malformed pickle: {type(exc).__name__}"
                           f"{': ' + text if text else ''})") from None


def _parse(f: io.BytesIO, file_size: int) -> dict[str, np.ndarray]:
    magic = _plain_load(f)
    if not isinstance(magic, int) or isinstance(magic, bool) or magic != _LEGACY_MAGIC:
        raise _Malformed("not a PyTorch weights file: bad magic number")
    if _plain_load(f) != _PROTOCOL:
        raise _Malformed(f"unsupported legacy protocol (expected {_PROTOCOL})")
    sys_info = _plain_load(f)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) is not True:
        raise _Malformed("written on a big-endian machine or without system info; unsupported")
    storages: dict[str, _Storage] = {}
    state = _RestrictedUnpickler(f, storages).load()
    if not isinstance(state, dict):
        raise _Malformed("the state dict is not a dict")
    keys = _plain_load(f)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys) \
            or set(keys) != set(storages):
        raise _Malformed("the storage key list does not match the storages the tensors use")
    for key in keys:
        _read_storage(f, key, storages[key], file_size)
    if f.read(1):
        raise _Malformed("unexpected bytes after the last storage")
    return _materialize(state, file_size)


def _read_storage(f: io.BytesIO, key: str, storage: _Storage, file_size: int) -> None:
    header = f.read(8)
    if len(header) != 8:
        raise _Malformed(f"storage {key!r}: the file ends before its size")
    count = int.from_bytes(header, "little", signed=True)
    if count != storage.size:
        raise _Malformed(f"storage {key!r} holds {count} values but is referenced as {storage.size}")
    nbytes = count * storage.dtype.itemsize
    if nbytes > file_size - f.tell():
        raise _Malformed(f"storage {key!r} claims {count} values, more than the file holds")
    raw = f.read(nbytes)
    storage.data = np.frombuffer(raw, storage.dtype)


def _materialize(state: dict, file_size: int) -> dict[str, np.ndarray]:
    """The arrays, within a memory budget: views may share storage, but not multiply it without bound."""
    budget = 2 * file_size + (1 << 20)
    result = {}
    for name, tensor in state.items():
        if not isinstance(tensor, _LazyTensor):
            continue
        if not isinstance(name, str):
            raise _Malformed("a state-dict key is not a string")
        budget -= tensor.count * tensor.storage.dtype.itemsize
        if budget < 0:
            raise _Malformed("the tensors view far more data than the file holds")
        result[name] = tensor.materialize()
    return result
