from __future__ import annotations

import copyreg
import sys
import threading
from typing import Any

import pytest

from htex import serialize
from htex.errors import DeserializationError, RemoteError, RemoteTraceback, SerializationError


def test_registry_pickles_each_function_once() -> None:
    reg = serialize.FunctionRegistry()
    key, blob = reg.key_for(len)
    assert blob is not None
    assert reg.key_for(len) == (key, None)

    def f(x: int) -> int:
        return x

    k2, b2 = reg.key_for(f)
    assert k2 != key and b2 is not None
    assert reg.key_for(f) == (k2, None)


def test_equal_lambdas_share_a_key() -> None:
    reg = serialize.FunctionRegistry()
    keys = {reg.key_for(lambda x: x + 1)[0] for _ in range(3)}
    assert len(keys) == 1


def test_function_blob_runs_after_a_round_trip() -> None:
    k = 3
    fn = serialize.unpack_function(serialize.pack_function(lambda x: x * k))
    assert fn(2) == 6


def test_args_fall_back_to_cloudpickle_for_lambdas() -> None:
    args, kwargs = serialize.unpack_args(serialize.pack_args((lambda: 5,), {"k": 1}))
    assert args[0]() == 5 and kwargs == {"k": 1}


def test_unpicklable_argument_is_named() -> None:
    with pytest.raises(SerializationError, match=r"positional argument 1 \(lock\)"):
        serialize.pack_args((1, threading.Lock()), {})


def test_missing_module_is_named(tmp_path: Any, monkeypatch: Any) -> None:
    (tmp_path / "nomodxyz.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import nomodxyz  # type: ignore[import-not-found]

    blob = serialize.pack_function(nomodxyz.f)  # by reference: the module is importable here
    del sys.modules["nomodxyz"]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(DeserializationError, match="no module named 'nomodxyz'") as info:
        serialize.unpack_function(blob)
    assert info.value.module == "nomodxyz"


def test_result_round_trips() -> None:
    assert serialize.unpack_result(serialize.pack_result([1, 2])) == (True, [1, 2])
    ok, exc = serialize.unpack_result(serialize.pack_exception(KeyError("k"), "Traceback: here"))
    assert not ok and isinstance(exc, KeyError)
    assert isinstance(exc.__cause__, RemoteTraceback) and "here" in str(exc.__cause__)


def test_unpicklable_result_becomes_a_serialization_error() -> None:
    ok, exc = serialize.unpack_result(serialize.pack_result(threading.Lock()))
    assert not ok and isinstance(exc, SerializationError)


class _Odd(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")  # so unpickling calls _Odd("1/2") and fails


def test_exception_that_cannot_be_rebuilt_is_stood_in_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # Parsl installs tblib's pickling support, which registers a reducer for every exception class
    # that then rebuilds _Odd fine; this test is about the stdlib's pickling of it.
    monkeypatch.delitem(copyreg.dispatch_table, _Odd, raising=False)
    ok, exc = serialize.unpack_result(serialize.pack_exception(_Odd(1, 2), "tb"))
    assert not ok and isinstance(exc, RemoteError) and "_Odd" in str(exc)
