"""Read a legacy (pre-zip) PyTorch state-dict file into numpy arrays, without PyTorch.

A .pth file is a pickle, and unpickling runs whatever callables it names. This reader
admits only the few names a state dict needs (OrderedDict, the tensor-rebuild helper and the
typed storage classes) and refuses everything else, so a tampered file cannot run code.

Legacy layout: pickles of (magic, protocol, sys_info, the state dict with persistent storage
references, the list of storage keys), then each storage's raw bytes prefixed by its length.
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np

from targets.errors import FactoryError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, dtype, size: int):
        self.dtype = dtype
        self.size = size
        self.data: np.ndarray | None = None


class _LazyTensor:
    """A tensor whose storage bytes come later in the file."""

    def __init__(self, storage: _Storage, offset: int, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def materialize(self) -> np.ndarray:
        flat = self.storage.data
        itemsize = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.shape, strides=[s * itemsize for s in self.stride]
        )
        return np.array(view)  # copy: detach from the storage buffer


def _rebuild_tensor(storage, offset, shape, stride, *_ignored):
    return _LazyTensor(storage, offset, shape, stride)


class _StorageType:
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
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, size = pid[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent reference {pid!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(size))
        return self.storages[key]


def _plain_load(f):
    return _RestrictedUnpickler(f, {}).load()


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the state dict in `path` as {name: numpy array}."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            if f.read(2) == b"PK":
                raise FactoryError(f"{path}: zip-format PyTorch file; only the legacy format is supported")
            f.seek(0)
            if _plain_load(f) != _LEGACY_MAGIC:
                raise FactoryError(f"{path}: not a PyTorch weights file (bad magic number)")
            _plain_load(f)  # protocol version
            _plain_load(f)  # sys info
            storages: dict = {}
            state = _RestrictedUnpickler(f, storages).load()
            keys = _plain_load(f)
            for key in keys:
                storage = storages[key]
                count = int(np.frombuffer(f.read(8), "<i8")[0])
                storage.data = np.frombuffer(f.read(count * np.dtype(storage.dtype).itemsize), storage.dtype)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as exc:
        raise FactoryError(f"{path}: cannot read weights ({exc})") from exc
    return {name: t.materialize() for name, t in state.items() if isinstance(t, _LazyTensor)}
