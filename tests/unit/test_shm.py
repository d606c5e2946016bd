"""The shared-memory arena for large arguments (real memfds, read back through /proc like a worker does)."""

from __future__ import annotations

import os
import pickle
import threading

import pytest

from htex import serialize, shm
from htex.errors import DeserializationError

from support import wait_for

pytestmark = [pytest.mark.timeout(30), pytest.mark.skipif(not shm.supported(), reason="needs Linux memfd")]

MB = 1024 * 1024


def _roundtrip(arena: shm.Arena, reader: shm.Reader, args: tuple, kwargs: dict) -> tuple:  # type: ignore[type-arg]
    split = serialize.pack_args_split(args, kwargs)
    placed = arena.put([split[0], *split[1]])
    assert placed is not None
    ref, lease = placed
    assert shm.is_reference(ref) and len(ref) < 100
    got = serialize.unpack_args(*reader.resolve(ref))
    arena.release(lease)
    return got


def test_large_bytes_go_out_of_band_and_come_back_equal() -> None:
    big, other = os.urandom(MB), os.urandom(200_000)
    stream, buffers = serialize.pack_args_split((big, 3, b"small"), {"k": other})
    assert len(stream) < 1000, "the large bytes must not be copied into the pickle stream"
    assert sorted(b.raw().nbytes for b in buffers) == [200_000, MB]
    arena, reader = shm.Arena(), shm.Reader()
    try:
        args, kwargs = _roundtrip(arena, reader, (big, 3, b"small"), {"k": other})
        assert args == (big, 3, b"small") and kwargs == {"k": other}
        assert type(args[0]) is bytes  # a copy, not a view of memory the client will reuse
    finally:
        arena.close()


def test_other_buffers_stay_in_band_so_nothing_aliases_shared_memory() -> None:
    arr = bytearray(os.urandom(300_000))
    nested = [os.urandom(100_000)]  # bytes deeper than the top level: the pickler gives no hook there
    stream, buffers = serialize.pack_args_split((arr, nested), {})
    assert buffers == []
    assert pickle.loads(stream) == ((arr, nested), {})


def test_large_bytes_next_to_something_only_cloudpickle_takes_go_in_band() -> None:
    big = os.urandom(100_000)
    stream, buffers = serialize.pack_args_split((big, lambda: 7), {})
    assert buffers == []
    (got, fn), _ = serialize.unpack_args(stream)
    assert got == big and fn() == 7


def test_references_are_never_mistaken_for_pickles() -> None:
    assert not shm.is_reference(pickle.dumps(((b"HXM\x01",), {}), 5))
    assert not shm.is_reference(b"HXM\x01")
    reader = shm.Reader()
    blob = serialize.pack_args((1,), {})
    assert reader.resolve(blob) == (blob, None)


def test_done_regions_are_reused_so_pages_stay_warm() -> None:
    arena = shm.Arena(segment_bytes=4 * MB, limit_bytes=8 * MB)
    try:
        refs = set()
        for _ in range(50):  # 50 MB through an 8 MB arena
            placed = arena.put([os.urandom(MB)])
            assert placed is not None
            refs.add(placed[0][:16])  # magic, pid, fd
            arena.release(placed[1])
        assert arena.in_use == 1 and len(refs) == 1
    finally:
        arena.close()


def test_a_full_arena_waits_for_room_then_gives_up() -> None:
    arena = shm.Arena(segment_bytes=2 * MB, limit_bytes=2 * MB)
    try:
        first = arena.put([os.urandom(MB + MB // 2)])
        assert first is not None
        assert arena.put([os.urandom(MB)], wait=0) is None  # full: the caller sends in-band
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(arena.put([os.urandom(MB)], wait=20)))
        t.start()
        wait_for(lambda: arena.waiting == 1, what="put() to wait for room")
        arena.release(first[1])
        t.join(20)
        assert got and got[0] is not None
    finally:
        arena.close()


def test_a_lost_tasks_segment_is_never_written_again() -> None:
    """A worker of a lost pool may still read its region later: it must not see another task's bytes."""
    arena, reader = shm.Arena(segment_bytes=4 * MB), shm.Reader()
    try:
        data = os.urandom(MB)
        ref, lease = arena.put([data]) or (b"", None)
        assert lease is not None
        stream, _ = reader.resolve(ref)  # the lost pool's worker mapped it...
        arena.release(lease, lost=True)
        for _ in range(10):
            placed = arena.put([os.urandom(MB)])
            assert placed is not None and placed[0][-16:] != ref[-16:]  # another segment (token)
            arena.release(placed[1])
        assert bytes(stream) == data  # ...and, reading late, still sees its own bytes
    finally:
        arena.close()


def test_trim_gives_idle_memory_back() -> None:
    arena = shm.Arena(segment_bytes=2 * MB)
    try:
        leases = [p[1] for p in (arena.put([os.urandom(MB)]) for _ in range(5)) if p is not None]
        assert arena.in_use >= 2
        for lease in leases:
            arena.release(lease)
        arena.trim(idle=0)
        assert arena.in_use == 0
        assert arena.put([os.urandom(MB)]) is not None  # and it still works after
    finally:
        arena.close()
    assert not _memfds()


def test_a_worker_that_cannot_read_the_memory_says_what_to_do() -> None:
    arena, reader = shm.Arena(), shm.Reader()
    try:
        ref, _ = arena.put([os.urandom(100_000)]) or (b"", None)
        wrong_token = ref[:-16] + bytes(16)
        with pytest.raises(DeserializationError, match="shared_memory=False"):
            reader.resolve(wrong_token)
        gone = shm._REF.pack(shm.MAGIC, 2**22 + 12345, 3, 16, 64, bytes(16))  # no such process
        with pytest.raises(DeserializationError, match="another host or as another user"):
            reader.resolve(gone)
    finally:
        arena.close()


def _memfds() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "htex-args" in target:
            out.append(target)
    return out
