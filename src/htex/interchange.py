"""The interchange: a load-balancing proxy between one executor and many pools.

::

    executor                                          pools (one connection each)
        |                                                 |
        +-- client socketpair --- Interchange --+-- UNIX streams (pools on this host: poollink.UnixPools)
                                                +-- pool ROUTER  (ZeroMQ: TCP, and ipc:// for `htex status`)

Started by the executor as ``python -m htex.interchange``, its configuration
(JSON) on stdin: a command line is readable by every local user.  Its
loop, ``run()``, has four named steps: read the client, read the pools, hand
queued tasks to pools with free capacity (the policy is ``dispatch.plan``, a
pure function; this class applies it), keep time.  It blocks on its
sockets; the only timeouts are heartbeats and liveness checks.

The client's requests (``protocol.Request``) are answered in the order they
come, each by one message with its ``req`` (a CancelTasks once the pools it
asks to Withdraw have answered: ``cancel.Withdrawals``); what happens to pools is told to
the client as typed events (PoolRegistered, PoolGone, PoolRejected, PoolDraining, TasksFailed).

It never unpickles a task, function or result: those are opaque bytes that
it queues and forwards (it reads only a result's first byte, to count tasks
that raised).  Anything from a peer that has not
registered is decoded only if it is small (MAX_CONTROL_BYTES), and dropped
(with a log line) unless it is a Probe, a Register or a StatusRequest.
Requests that change pools (HoldPools, DropBlocks) are read on the client
link only: a holder of the pool key may look, not act.

The client link is one end of a socketpair the executor made and passed us
(``client_fd``): framed messages (``framing.py``), no ZeroMQ I/O thread on
either end, and no name in any directory, so no other process can reach it.
Its end of the stream is the executor's end: we stop.

Each pool holds one connection to us, both ways: 10,000 pools cost 10,000
descriptors here, not 20,000 (``fdlimit.py``), and a pool's results cannot
overtake what it sent before them (a Withdrawn, a Draining).  Parsl's second
port (``worker_ports=(task, result)``) is kept as a name only: the result port
is the task port (``endpoints.py`` says why).

Who may connect: pools on this host reach us over UNIX stream sockets in the
executor's private directory (0700: the kernel keeps other users out; we
check the peer's uid too), each a framed link of its own (``poollink.py``),
whose end loses the pool at once; pools elsewhere over TCP, with CURVE when the run is encrypted (the default): a ZAP
handler lets in only the run's pool key.  A peer's identity is its own: with
ROUTER_HANDOVER off, a second connection that claims a live pool's identity
cannot take its place.

Tasks with cores, memory or gpus (announced by a TaskNeeds) wait apart and are
placed first, each where it fits (``resources.SizedTasks``); plain tasks never
go through that.  A pool's capacity is its worker count plus its prefetch capacity: fixed, or
adapted to what the pool's results show (``prefetch.py``, "auto", the default).
Tasks a pool queues while another pool idles and our queue is empty are taken
back and sent again (``stealing.py``, on the pool's Withdraw).  When a pool
is lost (silent for heartbeat_threshold, or its block's job ended), every task
it held fails with ManagerLost, prefetched ones included: a pool cut off from
us may well have started them, and a task must never run twice unless the
user allowed retries (the executor resends within lost_task_retries).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import __version__, cancel, dispatch, fdlimit, framing, poollink, prefetch, protocol, resources, security, stealing
from .errors import ProtocolError
from .protocol import InterchangeConfig

log = logging.getLogger("htex.interchange")

_Task = tuple[int, int, protocol.Blob]  # task id, function key, payload (opaque)
_DRAIN = 256  # messages read from one socket before looking at the others (fairness)
# The pools' socket carries what two sockets did (control and results): twice the turn, so that the
# client's socket is not read more often, relative to the pools, than it was.
_POOL_DRAIN = 2 * _DRAIN
MAX_CONTROL_BYTES = 1 << 20  # what a peer that has not registered may send: Probe, Register, StatusRequest


@dataclass(slots=True)
class _Pool:
    """What the interchange knows of one registered pool (manager)."""

    identity: bytes
    reg: protocol.Register
    capacity: int  # workers + prefetch capacity: the tasks it may hold at once
    last_heard: float
    tasks: dict[int, _Task] = field(default_factory=dict)  # sent and not done, in the order sent (id -> task)
    functions: set[int] = field(default_factory=set)
    held: bool = False
    draining: bool = False  # it asked for no new task (drain_period); it is stopped once it holds none
    last_busy: float = 0.0
    sized: dict[int, int] = field(default_factory=dict)  # its tasks with needs -> the worker slots each takes
    extra: int = 0  # slots those tasks take beyond one each: while > 0, no prefetch (resources.py says why)
    auto: prefetch.Auto | None = None  # its prefetch adapts (capacity follows auto.cap); None: fixed
    # Its tasks that had a priority -> their place in the queue: one stolen back goes back there (_stolen_back).
    ranks: dict[int, dispatch.Rank] = field(default_factory=dict)

    @property
    def free(self) -> int:
        if self.held:
            return 0
        if self.extra:
            return max(0, self.reg.worker_count - len(self.tasks) - self.extra)
        return max(0, self.capacity - len(self.tasks))  # "auto" may lower capacity below what it holds

    @property
    def workers(self) -> int:
        return self.reg.worker_count

    @property
    def held_ids(self) -> Iterable[int]:
        """What stealing may ask back: tasks with needs stay where they were placed."""
        return (t for t in self.tasks if t not in self.sized) if self.sized else self.tasks.keys()

    @property
    def held_count(self) -> int:
        return len(self.tasks)

    @property
    def idle(self) -> int:
        """Workers with nothing to do, as far as we know (tasks sent but not done occupy workers first)."""
        return max(0, min(self.free, self.reg.worker_count - len(self.tasks) - self.extra))

    def forget(self, ids: Sequence[int]) -> None:
        """Tasks it holds no more (a result, or given back): the slots a task with needs took are free again."""
        for tid in ids:
            if self.tasks.pop(tid, None) is not None and self.sized:
                self.extra -= self.sized.pop(tid, 1) - 1
        if self.ranks:
            self._unrank(ids)

    def _unrank(self, ids: Sequence[int]) -> None:
        for tid in ids:
            self.ranks.pop(tid, None)

    def describe(self) -> str:
        r = self.reg
        return f"manager {r.manager_id} on host {r.hostname} (block {r.block_id}, pid {r.pid})"

    def settle(self, msg: protocol.Results, frames: Sequence[protocol.Blob]) -> Sequence[protocol.Blob]:
        """Its tasks these results end; what to forward: the frames as they came, or only its own tasks' results."""
        known = [tid in self.tasks for tid in msg.ids]
        if self.sized:
            self.forget(msg.ids)
        else:
            for tid in msg.ids:
                self.tasks.pop(tid, None)
            if self.ranks:  # only when tasks with priorities went to it
                self._unrank(msg.ids)
        if not self.tasks:
            self.last_busy = self.last_heard
        if all(known):
            return frames
        keep = [i for i, k in enumerate(known) if k]
        log.warning("%s sent %d results for tasks it does not hold", self.describe(), len(known) - len(keep))
        if not keep:
            return []
        return protocol.Results(protocol.u64_array(msg.ids[i] for i in keep), [msg.payloads[i] for i in keep]).encode()

    def info(self, now: float) -> protocol.PoolInfo:
        r = self.reg
        return protocol.PoolInfo(
            manager=r.manager_id, block_id=r.block_id, hostname=r.hostname, pid=r.pid,
            worker_count=r.worker_count, prefetch_capacity=self.capacity - r.worker_count, tasks=len(self.tasks),
            active=not self.held, idle_duration=0.0 if self.tasks else now - self.last_busy,
            last_heartbeat=now - self.last_heard, python_version=r.python_version, version=r.htex_version,
        )


@dataclass(slots=True)
class _Counts:
    """Tasks since start: done counts every result, raised how many of them are exceptions."""

    received: int = 0
    dispatched: int = 0
    done: int = 0
    raised: int = 0
    lost: int = 0  # failed with the pool that held them
    functions_sent: int = 0

    def stats(self, queued: int, pools: list[_Pool], dropped: int, uptime: float) -> protocol.Stats:
        return protocol.Stats(
            received=self.received, dispatched=self.dispatched, done=self.done, raised=self.raised, lost=self.lost,
            functions_sent=self.functions_sent, queued=queued, pools=len(pools),
            workers=sum(p.reg.worker_count for p in pools), running=sum(len(p.tasks) for p in pools),
            dropped=dropped, uptime=uptime,
        )


class _State:
    """What the Interchange's parts below share: its state and the sends they use (all set in Interchange).

    The Interchange is split by what its methods do, not by the state they touch: each part is a
    base class of it, and reads and writes the same attributes.
    """

    cfg: InterchangeConfig
    queue: dispatch.TaskQueue[_Task]
    functions: dict[int, protocol.Blob]
    pools: dict[bytes, _Pool]
    with_room: OrderedDict[bytes, _Pool]  # pools with free capacity, in turn order
    started: float
    dropped: int
    counts: _Counts
    withdrawals: cancel.Withdrawals
    sized: resources.SizedTasks
    reserved: set[bytes]
    stealing: stealing.Stealing
    selector: Any
    _monitor: Any
    results_out: list[Sequence[protocol.Blob]]  # results read this turn, sent to the client after dispatch

    def _to_client(self, msg: protocol.Message) -> None:
        raise NotImplementedError

    def _to_pool(self, identity: bytes, msg: protocol.Message) -> bool:
        raise NotImplementedError

    def _drop(self, identity: bytes, why: str) -> None:
        raise NotImplementedError

    def _lose_pool(self, pool: _Pool, why: str, released: bool = False) -> None:
        raise NotImplementedError


class _Requests(_State):
    """The client's requests that look at or act on pools (status, hold, drop blocks, cancel), and the pools'
    Withdrawn that answer a cancel: each request is answered by one message (see the module's docstring)."""

    def _answer(self, msg: protocol.Request) -> protocol.Answer:
        """Carry out a request of the client: what goes wrong is its answer (Failed), not our end."""
        try:
            if isinstance(msg, protocol.StatusRequest):
                return self._status(msg.req, msg.pools)
            if isinstance(msg, protocol.HoldPools):
                return protocol.Done(req=msg.req, count=self._hold(msg.managers))
            return protocol.Done(req=msg.req, count=self._drop_blocks(msg.blocks, msg.reason, msg.released))
        except Exception as exc:
            log.exception("could not carry out %s", type(msg).__name__)
            return protocol.Failed(req=msg.req, reason=f"{type(exc).__name__}: {exc}")

    def _status(self, req: int, with_pools: bool = True) -> protocol.StatusReply:
        now = time.monotonic()
        queued = len(self.queue) + len(self.sized.waiting)
        stats = self.counts.stats(queued, list(self.pools.values()), self.dropped, now - self.started)
        return protocol.StatusReply(req=req, stats=stats, pools=[p.info(now) for p in self.pools.values()] if with_pools else [])

    def _hold(self, managers: list[str]) -> int:
        wanted = set(managers)
        held = [p for p in self.pools.values() if p.reg.manager_id in wanted]
        for pool in held:
            pool.held = True
            self.with_room.pop(pool.identity, None)
            log.info("holding %s: no new tasks go to it", pool.describe())
            if self._monitor is not None:
                self._monitor.pool_state(pool.reg.manager_id, "draining", "held: no new task goes to it")
        return len(held)

    def _drop_blocks(self, blocks: list[str], why: str, released: bool) -> int:
        # Their jobs ended, or they are being scaled in: forget their pools now (and tell them to stop).
        wanted = set(blocks)
        gone = [p for p in self.pools.values() if p.reg.block_id in wanted]
        for pool in gone:
            self._to_pool(pool.identity, protocol.Shutdown(reason=why))
            self._lose_pool(pool, why, released)
        return len(gone)

    def _cancel(self, msg: protocol.CancelTasks) -> None:
        """Drop the queued ones; ask each pool holding some to withdraw them (see cancel.py); answer when all did."""
        wanted = set(msg.ids)
        dropped = [t[0] for t in self.queue.remove_if(lambda t: t[0] in wanted)] if self.queue else []
        dropped += self.sized.remove(wanted)
        held = {p.identity: sorted(wanted.intersection(p.tasks)) for p in self.pools.values()}
        sends, answer = self.withdrawals.begin(msg.req, dropped, {k: v for k, v in held.items() if v}, msg.kill)
        for identity, withdraw in sends:
            if not self._to_pool(identity, withdraw):
                unreachable = protocol.Withdrawn(req=withdraw.req, withdrawn=[], started=withdraw.ids)
                _, answer = self.withdrawals.answered(identity, unreachable)
        if answer is not None:
            self._to_client(answer)

    def _withdrawn(self, pool: _Pool, msg: protocol.Withdrawn) -> None:
        """A pool gave tasks back (those it was asked for): it holds them no more (never lost with it)."""
        withdrawn, answer = self.withdrawals.answered(pool.identity, msg)
        pool.forget(withdrawn)
        self.sized.done(withdrawn)
        if pool.free > 0:
            self.with_room[pool.identity] = pool
        if answer is not None:
            self._to_client(answer)


class _Dispatching(_State):
    """Step 3 of the loop: hand queued tasks to pools with room (the policy is dispatch.plan)."""

    def _dispatch(self) -> None:
        """Hand queued tasks, in queue order, to pools with room, as ``dispatch.plan`` says (its rules are there),
        offering them to pools in turn order, or in the order the ``manager_selector`` gives (selectors.py)."""
        if self.sized.waiting or self.reserved:
            self._place_sized()
        room = self.with_room
        while self.queue and room:
            pools = room.values() if self.selector is None else self.selector.order(list(room.values()))
            rooms = ((p, p.idle, p.free) for p in pools)
            if self.reserved:
                rooms = ((p, i, f) for p, i, f in rooms if p.identity not in self.reserved)
            if self._take_turns(dispatch.plan(len(self.queue), rooms)):
                return

            # A pool was unreachable: its tasks are back at the front of the queue, and it left the
            # turn order.  Plan again without it (rare: a pool that vanished without a word).

    def _take_turns(self, turns: list[tuple[_Pool, int]]) -> bool:
        """Apply a plan; False if a pool was unreachable (then the turns after it are not taken)."""
        room = self.with_room
        for pool, n in turns:
            if n and not self._send_tasks(pool, n):
                return False
            room.pop(pool.identity, None)  # its turn is over: to the back, if it has room left
            if pool.free > 0:
                room[pool.identity] = pool
        return True

    def _place_sized(self) -> None:
        """Send the tasks with needs that fit a pool now, one message each (resources.SizedTasks.place)."""
        pools = [(p.identity, resources.Offer.of(p.reg), p.reg.worker_count - len(p.tasks) - p.extra)
                 for p in self.pools.values() if not p.held]
        placed, self.reserved = self.sized.place(pools)
        for identity, task, slots in placed:
            pool = self.pools[identity]
            needs = self.sized.needs[task[0]]
            if needs.gpus > 1:  # the pool runs it on a worker that sees all its devices (process_worker_pool.Wide)
                self._to_pool(identity, protocol.TaskNeeds(ids=[task[0]], needs=[(needs.cores, needs.memory, needs.gpus)]))
            if self._send_batch(pool, [task]):
                pool.sized[task[0]] = slots
                pool.extra += slots - 1
                if pool.free <= 0:
                    self.with_room.pop(pool.identity, None)
            else:
                self.sized.waiting.insert(0, (-math.inf, -1, task))  # unreachable pool: first in line again

    def _send_tasks(self, pool: _Pool, n: int) -> bool:
        """Send the next n queued tasks to the pool; False (the tasks back in the queue) if it is unreachable."""
        batch, ranks = self.queue.take(n)
        if not self._send_batch(pool, batch):
            self.queue.put_back(batch, ranks)  # never left: back where they were
            return False
        if ranks:  # the prioritized ones come first in the batch
            pool.ranks.update(zip((t[0] for t in batch), ranks, strict=False))  # ranks: a prefix
        return True

    def _send_batch(self, pool: _Pool, batch: list[tuple[int, int, protocol.Blob]]) -> bool:
        known, ours = pool.functions, self.functions  # each function goes to a pool once, with its first task
        functions = {key: ours[key] for _, key, _ in batch if key not in known and key in ours}
        ids, keys = protocol.u64_array(t[0] for t in batch), protocol.u64_array(t[1] for t in batch)
        if self._monitor is not None:  # before the send: the pool may start them before we look at the clock
            self._monitor.dispatched(ids, pool.reg.manager_id)
        if not self._to_pool(pool.identity, protocol.Tasks(ids, keys, [t[2] for t in batch], functions)):
            self.with_room.pop(pool.identity, None)
            return False
        pool.functions.update(functions)
        self.counts.functions_sent += len(functions)
        if pool.auto is not None:
            pool.auto.sent(time.monotonic(), not pool.tasks)
        tasks = pool.tasks  # the whole task stays with its pool, to go elsewhere if it is stolen back
        for task in batch:
            tasks[task[0]] = task
        self.stealing.sent(pool)
        self.counts.dispatched += len(batch)
        return True


class _Membership(_State):
    """Pools joining and leaving: registration, draining, and a pool lost (its tasks fail with ManagerLost)."""

    def _register(self, identity: bytes, reg: protocol.Register) -> None:
        reason = _version_mismatch(reg)
        if reason:
            log.error("refusing manager %s from %s: %s", reg.manager_id, reg.hostname, reason)
            self._to_pool(identity, protocol.Rejected(reason=reason))
            self._to_client(protocol.PoolRejected(manager=reg.manager_id, reason=reason))
            return
        if reg.worker_count < 1 or reg.prefetch_capacity < prefetch.AUTO or identity in self.pools:
            self._drop(identity, f"bad registration {reg}")
            return
        now = time.monotonic()
        auto = prefetch.Auto(reg.worker_count) if reg.prefetch_capacity == prefetch.AUTO else None
        pool = _Pool(identity, reg, reg.worker_count + max(0, reg.prefetch_capacity), now, last_busy=now, auto=auto)
        self.pools[identity] = pool
        self.with_room[identity] = pool
        self.stealing.look = True
        self._to_pool(identity, protocol.Registered())
        log.info("registered %s with %d workers%s", pool.describe(), reg.worker_count,
                 f", accelerators {' '.join(reg.accelerators)}" if reg.accelerators else "")
        if self._monitor is not None:
            self._monitor.registered(reg.manager_id, reg.block_id, reg.hostname, reg.worker_count)
        self._to_client(protocol.PoolRegistered(pool=pool.info(now)))

    def _draining(self, pool: _Pool) -> None:
        """The pool's drain time came: no new task for it; its block's replacement can start now."""
        log.info("%s is draining (%d tasks to finish)", pool.describe(), len(pool.tasks))
        pool.held = pool.draining = True
        self.with_room.pop(pool.identity, None)
        self._to_client(protocol.PoolDraining(manager=pool.reg.manager_id, block_id=pool.reg.block_id))
        if not pool.tasks:
            self._drained(pool)

    def _drained(self, pool: _Pool) -> None:
        self._to_pool(pool.identity, protocol.Shutdown(reason="drained: its block's walltime is near"))
        self._lose_pool(pool, "it drained (drain_period) and holds no task", released=True)

    def _lose_pool(self, pool: _Pool, why: str, released: bool = False) -> None:
        del self.pools[pool.identity]
        self.with_room.pop(pool.identity, None)
        self.stealing.gone(pool.identity)
        # Every task it held may have started (a pool cut off from us runs its prefetched tasks):
        # none goes back to the queue.  The executor resends them only within lost_task_retries.
        held = list(pool.tasks)
        message = f"{pool.describe()} was {'released' if released else 'lost'}: {why}"
        log.error("%s; the %d tasks it held fail", message, len(held))
        self.counts.lost += len(held)
        for answer in self.withdrawals.pool_gone(pool.identity):
            self._to_client(answer)
        if held:
            self._to_client(protocol.TasksFailed(ids=held, error=protocol.LostReason.MANAGER_LOST, message=message))
        r = pool.reg
        if self._monitor is not None:
            self._monitor.pool_state(r.manager_id, "gone" if released else "lost", why)
        self._to_client(protocol.PoolGone(manager=r.manager_id, block_id=r.block_id, message=message, released=released))


class _FromPools(_Requests, _Membership):
    """Step 2 of the loop, past the sockets: what a pool sent (results, Withdrawn, Draining), what anyone may
    send (Probe, StatusRequest, Register), and a UNIX link's end (the pool is lost at once)."""

    def _unix_ended(self, unix: poollink.UnixPools) -> None:
        """UNIX links that ended: the pool's process exited or died, so it is lost now, not at the heartbeat threshold."""
        ended, unix.ended = unix.ended, []
        for identity in ended:
            pool = self.pools.get(identity)
            if pool is not None:
                self._lose_pool(pool, "its connection closed: the pool's process exited or died")

    def _from_pool(self, identity: bytes, frames: Sequence[protocol.Blob]) -> None:
        pool = self.pools.get(identity)
        if pool is None and sum(len(f) for f in frames) > MAX_CONTROL_BYTES:
            # A peer that has not registered only sends small control messages: decode nothing more.
            self._drop(identity, "a large message from an unregistered peer")
            return
        try:
            msg = protocol.decode(frames)
        except ProtocolError as exc:
            self._drop(identity, str(exc))
            return
        if pool is None:
            self._from_anyone(identity, msg)
            return
        pool.last_heard = time.monotonic()
        if isinstance(msg, protocol.Results):
            self._results(pool, msg, frames)
        elif isinstance(msg, protocol.Withdrawn) and msg.req >= stealing.FIRST_REQ:
            self._stolen_back(pool, msg)
        elif isinstance(msg, protocol.Withdrawn):
            self._withdrawn(pool, msg)
        elif isinstance(msg, protocol.Draining):
            self._draining(pool)
        elif isinstance(msg, (protocol.Probe, protocol.StatusRequest, protocol.Register)):
            self._from_anyone(identity, msg)  # as from anyone (a second Register is dropped)

    def _from_anyone(self, identity: bytes, msg: protocol.Message) -> None:
        """What any peer may send (Probe, StatusRequest, Register); the rest, from a peer that has not registered
        (or was declared lost), is dropped."""
        if isinstance(msg, protocol.Probe):
            self._to_pool(identity, protocol.ProbeReply())
        elif isinstance(msg, protocol.StatusRequest):
            self._to_pool(identity, self._status(msg.req, msg.pools))  # `htex status` (req 0)
        elif isinstance(msg, protocol.Register):
            self._register(identity, msg)
        else:
            # A pool we declared lost (it may have been stopped and resumed): tell it to go.
            self._drop(identity, f"{type(msg).__name__} from an unregistered peer")
            if isinstance(msg, protocol.Heartbeat):
                self._to_pool(identity, protocol.Rejected(reason="unknown pool: it was declared lost"))

    def _results(self, pool: _Pool, msg: protocol.Results, frames: Sequence[protocol.Blob]) -> None:
        forward = pool.settle(msg, frames)
        if self.sized.needs:
            self.sized.done(msg.ids)
        if forward:
            self.results_out.append(forward)
        if pool.auto is not None:
            pool.capacity = pool.reg.worker_count + pool.auto.finished(len(msg.ids), pool.last_heard, bool(pool.tasks))
        self.stealing.finished(pool)
        self.counts.done += len(msg.ids)
        self.counts.raised += sum(1 for p in msg.payloads if _raised(p))
        if pool.free > 0:
            self.with_room[pool.identity] = pool
        elif pool.draining and not pool.tasks:
            self._drained(pool)

    def _stolen_back(self, pool: _Pool, msg: protocol.Withdrawn) -> None:
        """A pool gave tasks back: those we asked for and it still holds for us go back to the queue, to go
        elsewhere, where they were: a task with a priority keeps its priority and arrival number (ahead
        of equals queued since), the others go to the front of the plain tasks, in their order (ids grow
        with submission)."""
        asked = self.stealing.answered(msg.req, pool.identity)
        if asked is None:
            log.warning("%s answered a withdraw we did not ask for (req %d)", pool.describe(), msg.req)
            return
        cancelled = self.withdrawals.taken_back(msg.withdrawn)  # a cancel waits for these: they stop here
        back = sorted((task for tid in msg.withdrawn
                       if tid in asked and (task := pool.tasks.pop(tid, None)) and tid not in cancelled),
                      key=lambda t: t[0])
        pool.forget(sorted(cancelled))
        self.stealing.moved(pool.identity, len(back))
        if back:
            ranked = [t for t in back if t[0] in pool.ranks]
            if ranked:
                back = ranked + [t for t in back if t[0] not in pool.ranks]
            self.queue.put_back(back, [pool.ranks.pop(t[0]) for t in ranked])
            self.stealing.finished(pool)
            # No room for the victim until its next results: its workers are busy, and the room the steal made
            # would take back a share of what it gave (W6 at prefetch 256: the stolen tasks went back and forth
            # while its last long task waited behind two others for 1.6 s, in 4 rounds of 5).
            self.with_room.pop(pool.identity, None)
            log.debug("took back %d tasks from %s", len(back), pool.describe())


class Interchange(_FromPools, _Dispatching):
    """The loop and its sockets: step 1 reads the client (requests go to _Requests), step 2 the pools
    (what they send is _FromPools', registering and losing them _Membership's), step 3 is _Dispatching's,
    step 4 keeps time."""

    def __init__(self, cfg: InterchangeConfig) -> None:
        self.cfg = cfg
        self.ctx = zmq.Context()
        self.queue: dispatch.TaskQueue[_Task] = dispatch.TaskQueue()
        self.next_liveness_check = 0.0
        self.results_out: list[Sequence[protocol.Blob]] = []  # results read this turn, sent to the client after dispatch
        self.functions: dict[int, protocol.Blob] = {}
        self.pools: dict[bytes, _Pool] = {}
        self.with_room: OrderedDict[bytes, _Pool] = OrderedDict()  # pools with free capacity, in turn order
        self.stopping = False
        self.client_last_heard = time.monotonic()
        self.client_last_sent = self.pools_last_sent = 0.0  # a heartbeat is due a period after the last message
        self.parent = os.getppid()
        self.started = time.monotonic()
        self.dropped = 0
        self.counts = _Counts()
        self.withdrawals = cancel.Withdrawals()  # CancelTasks waiting for pools' Withdrawn
        self.sized = resources.SizedTasks()  # tasks with cores/memory/gpus: placed apart from the plain queue
        self.reserved: set[bytes] = set()  # pools kept free for a task with needs: no plain task goes there
        self.stealing = stealing.Stealing()
        self.selector = None  # the order pools are offered tasks in (selectors.py); None: they take turns
        if cfg.manager_selector is not None:
            from .selectors import unpack  # only then: cloudpickle is not needed otherwise

            self.selector = unpack(cfg.manager_selector)
        self._monitor = _monitor(cfg)  # monitoring.reporters.InterchangeReporter, or None

        socks = _open_sockets(self.ctx, cfg)
        self.pool_sock, self.port, self.auth = socks.pools, socks.port, socks.auth
        self.poller = zmq.Poller()
        # The ROUTER is watched through its ZMQ_FD, as a plain descriptor: zmq_poll on the socket itself
        # costs ~5 system calls each turn of the loop, even when no pool uses ZeroMQ (pools on this host
        # use UNIX streams).  That descriptor is edge-triggered: readable when the socket's state may
        # have changed, and a send may consume that edge, so after a send we look again (pools_unread).
        self.pool_fd = int(self.pool_sock.getsockopt(zmq.FD))
        self.pools_unread = True  # look at the ROUTER's ZMQ_EVENTS on the next turn, whatever the fd says
        self.poller.register(self.pool_fd, zmq.POLLIN)
        self.client = framing.StreamLink(socket.socket(fileno=cfg.client_fd), self.poller)
        # Pools on this host: framed UNIX streams (poollink.py), if the executor bound the listener.
        self.unix = poollink.UnixPools(cfg.unix_fd, self.poller) if cfg.unix_fd is not None else None
        self.descriptors = fdlimit.Probe()  # out of descriptors: say so

    # -- the loop -------------------------------------------------------------

    def run(self) -> None:
        # One port serves both of Parsl's names (the module's docstring says why).
        self._to_client(protocol.Ready(task_port=self.port, result_port=self.port, pid=os.getpid()))
        log.info("interchange ready: pools connect to port %d (0: UNIX sockets only)", self.port)
        try:
            while not self.stopping:
                events = dict(self.poller.poll(0 if self.pools_unread else self._timeout_ms()))
                if self.client.fd in events:
                    self._client_ready(events[self.client.fd])
                if self.pools_unread or self.pool_fd in events:
                    self._read_pools()
                if self.unix is not None:
                    self._read_unix(self.unix, events)
                self._dispatch()
                if not self.queue and self.stealing.victims:
                    self._steal()
                self._forward_results()  # after dispatch: a freed worker gets its next task first
                if self.unix is not None and self.unix.ended:
                    self._unix_ended(self.unix)
                self._keep_time()
        finally:
            self._shutdown()

    def _timeout_ms(self) -> int:
        now = time.monotonic()
        due = min(
            self.client_last_sent + self.cfg.heartbeat_period,
            self.pools_last_sent + self.cfg.heartbeat_period,
            now + 1.0,  # look at the parent process once a second: if it is gone, so are we
        )
        return max(0, int((due - now) * 1000) + 1)

    # -- step 1: the client -----------------------------------------------------

    def _client_ready(self, events: int) -> None:
        if events & framing.POLLOUT:
            self._client_io(self.client.flush)
        if events & framing.POLLIN:
            try:
                batch = self.client.read()
            except ProtocolError as exc:  # only the executor can write there: a bug, and no way to resynchronise
                log.error("corrupt stream from the client: %s; stopping", exc)
                self.stopping = True
                return
            if batch is None:
                log.error("the client closed its end of the link (it exited or died); stopping")
                self.stopping = True
                return
            self.client_last_heard = time.monotonic()
            for frames in batch:
                if not self.stopping:
                    self._from_client(frames)

    def _client_io(self, op: Callable[[], None]) -> None:
        try:
            op()
        except OSError as exc:  # EPIPE, ECONNRESET: the executor is gone
            log.error("cannot reach the client: %s; stopping", exc)
            self.client.close()
            self.stopping = True
        self.client_last_sent = time.monotonic()

    def _from_client(self, frames: Sequence[protocol.Blob]) -> None:
        try:
            msg = protocol.decode(frames)
        except ProtocolError as exc:
            log.error("bad message from the client: %s", exc)
            return
        if isinstance(msg, protocol.Tasks):
            self.functions.update(msg.functions)
            tasks = zip(msg.ids, msg.fn_keys, msg.payloads, strict=False)
            priorities = msg.priorities
            if self.sized.needs:  # a TaskNeeds came: set its tasks apart (plain batches never look)
                tasks, priorities = self.sized.split(list(tasks), priorities)  # type: ignore[assignment]
            if priorities is None:  # the common case: no heap, no per-task test
                self.queue.extend(tasks)
            else:
                self.queue.extend_ranked(tasks, priorities)
            self.counts.received += len(msg.ids)
        elif isinstance(msg, protocol.TaskNeeds):
            self.sized.expect(msg)
        elif isinstance(msg, protocol.CancelTasks):
            self._cancel(msg)
        elif isinstance(msg, protocol.Request):
            self._to_client(self._answer(msg))
        elif isinstance(msg, protocol.Shutdown):
            log.info("client asked for shutdown")
            self.stopping = True

    def _to_client(self, msg: protocol.Message) -> None:
        frames = msg.encode()
        self._client_io(lambda: self.client.send(frames))

    # -- step 2: the pools --------------------------------------------------------

    def _read_pools(self) -> None:
        sock = self.pool_sock
        self.pools_unread = False
        for _ in range(_POOL_DRAIN):
            if not int(sock.getsockopt(zmq.EVENTS)) & framing.POLLIN:  # cheaper than the zmq.Again of a NOBLOCK recv
                return
            # Frames, not copies: a result's payloads are forwarded to the client as they came.
            frames = sock.recv_multipart(copy=False)
            self._from_pool(frames[0].bytes, frames[1:])
        self.pools_unread = True  # our turn is over (fairness), and more may wait: no edge will say so

    def _read_unix(self, unix: poollink.UnixPools, events: dict[Any, int]) -> None:
        """The UNIX links to pools on this host that the poller reported (poollink.py)."""
        for fd, ev in events.items():
            identity = unix.fds.get(fd) if type(fd) is int else None
            if identity is None:
                continue
            try:
                for peer, frames in unix.ready(fd, ev):
                    self._from_pool(peer, frames)
            except ProtocolError as exc:  # a corrupt stream cannot be resynchronised: close it
                self._drop(identity, str(exc))
                unix.drop(identity)

    def _forward_results(self) -> None:
        if self.results_out:
            out, self.results_out = self.results_out, []

            def send_all() -> None:
                for frames in out:
                    self.client.send(frames)
            self._client_io(send_all)

    def _drop(self, identity: bytes, why: str) -> None:
        self.dropped += 1
        if self.dropped <= 100 or self.dropped % 1000 == 0:  # a flood must not fill the disk
            log.warning("dropped a message from %r: %s (%d dropped so far)", identity[:32], why, self.dropped)

    def _to_pool(self, identity: bytes, msg: protocol.Message) -> bool:
        return self._send_frames(identity, msg.encode())

    def _to_pools(self, identities: Iterable[bytes], msg: protocol.Message) -> None:
        """One message to many pools, encoded once: heartbeats, and the shutdown of 10,000 pools."""
        frames = msg.encode()
        for identity in identities:
            self._send_frames(identity, frames)

    def _send_frames(self, identity: bytes, frames: Sequence[protocol.Blob]) -> bool:
        if self.unix is not None and identity in self.unix:
            return self.unix.send(identity, frames)
        try:
            self.pool_sock.send_multipart([identity, *frames], copy=False)
            self.pools_unread = True  # the send may have taken the fd's edge (see __init__)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer disconnected
            log.info("cannot send to %r: %s", identity[:32], exc)
            return False

    # -- step 3: dispatch (_Dispatching, above), and stealing ---------------------

    def _steal(self) -> None:
        """Workers idle and nothing queued: ask a pool that queues tasks for some back (stealing.py)."""
        steal = self.stealing.plan(self.with_room.values())
        if steal is not None:
            req, victim, ids = steal
            if not self._to_pool(victim.identity, protocol.Withdraw(req=req, ids=ids)):
                self.stealing.gone(victim.identity)  # unreachable: its silence will be noticed

    # -- step 4: time -------------------------------------------------------------

    def _keep_time(self) -> None:
        now = time.monotonic()
        if now - self.client_last_heard > self.cfg.heartbeat_threshold:
            log.error("no word from the client for %.0f s; stopping", now - self.client_last_heard)
            self.stopping = True
            return
        if now - self.client_last_sent >= self.cfg.heartbeat_period:
            self._to_client(protocol.Heartbeat())
        if now - self.pools_last_sent >= self.cfg.heartbeat_period:
            self._to_pools(list(self.pools), protocol.Heartbeat())
            self.pools_last_sent = now
        if now >= self.next_liveness_check:
            # Not on every turn of the loop: with 1,000 pools heartbeating, this scan (and even the
            # getppid system call) would cost more than the messages.  A second late is nothing.
            self.next_liveness_check = now + min(1.0, self.cfg.heartbeat_threshold / 10)
            self.descriptors.check(now, len(self.pools))
            if self.unix is not None:
                self.unix.resume()
            if os.getppid() != self.parent:
                log.error("the client process is gone (parent changed); stopping")
                self.stopping = True
                return
            for pool in [p for p in self.pools.values() if now - p.last_heard > self.cfg.heartbeat_threshold]:
                self._lose_pool(pool, f"it sent nothing for {now - pool.last_heard:.0f} s (heartbeat_threshold)")

    # -- shutdown -------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Tell every pool to stop, then close the sockets (pools not told exit on heartbeat)."""
        self._to_pools(list(self.pools), protocol.Shutdown(reason="the executor is shutting down"))
        if self.unix is not None:
            self.unix.close()  # what waits goes first (up to poollink.LINGER_SECONDS)
        self.pool_sock.setsockopt(zmq.LINGER, 1000)
        self.pool_sock.close()
        if self.auth is not None:
            self.auth.stop()
        if self._monitor is not None:
            self._monitor.sender.stop()
        self.ctx.destroy(linger=0)
        self.client.close()  # the executor sees the end of the stream (and our pidfd)
        log.info("interchange stopped")


@dataclass(frozen=True)
class _Sockets:
    pools: zmq.Socket[Any]  # ROUTER: every pool's one connection (registration, heartbeats, tasks, results)
    port: int  # 0: no TCP port (pools reach us over UNIX sockets only)
    auth: Any  # the ZAP handler that lets in only the run's pool key (encrypted TCP), else None


def _open_sockets(ctx: zmq.Context[zmq.Socket[Any]], cfg: InterchangeConfig) -> _Sockets:
    pools = _router(ctx)
    # No MAXMSGSIZE: results come in here, and a result is as large as the task made it.  What keeps
    # strangers' messages out is who may connect at all: on UNIX sockets, the private directory; on
    # TCP, CURVE's ZAP check (only the run's pool key) when encrypted.  A peer let in that has not
    # registered has a message above MAX_CONTROL_BYTES dropped undecoded (_read_pools).  (Before
    # one connection per pool, the task socket had MAXMSGSIZE, but the result socket, open to the
    # same peers, did not: a limit on half the ways in kept nobody out.)
    # UNIX sockets first, as plain ZeroMQ (their directory keeps strangers out); then TCP, with
    # CURVE when encrypted.  libzmq takes the security options at bind time, per endpoint.
    if cfg.ipc_name:
        pools.bind(f"ipc://{cfg.ipc_name}-tasks")  # its name from when pools had a -results socket too
    port, auth = 0, None
    if cfg.tcp:
        if cfg.cert_dir:
            auth = security.authenticator(ctx, cfg.cert_dir, "pool")
            security.serve(pools, cfg.cert_dir)
        port = _bind_tcp(cfg, pools)
    return _Sockets(pools, port, auth)


def _router(ctx: zmq.Context[zmq.Socket[Any]]) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.ROUTER)
    _unbounded(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished pool raises, not drops
    # No ROUTER_HANDOVER: with it, whoever connects with a live pool's identity takes over its
    # connection (and its results); without it, the newcomer gets an identity of its own.
    return sock


def _unbounded(sock: zmq.Socket[Any]) -> None:
    # A full high-water mark makes ZeroMQ drop or block silently; the executor's
    # in-flight window bounds memory instead.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)


def _bind_tcp(cfg: InterchangeConfig, sock: zmq.Socket[Any]) -> int:
    """Bind the pools' port (the first of worker_ports: the second is the same one, see endpoints.py); return it."""
    address = f"tcp://{cfg.bind_address}"
    if cfg.worker_ports and cfg.listen_fds:
        # The executor bound the port and passed us the listening socket (ZMQ_USE_FD).
        sock.setsockopt(zmq.USE_FD, cfg.listen_fds[0])
        sock.bind(f"{address}:{cfg.worker_ports[0]}")
        sock.setsockopt(zmq.USE_FD, -1)  # it sticks: a later bind would reuse the fd (libzmq aborts)
        return cfg.worker_ports[0]
    if cfg.worker_ports:
        sock.bind(f"{address}:{cfg.worker_ports[0]}")
        return cfg.worker_ports[0]
    low, high = cfg.worker_port_range
    return sock.bind_to_random_port(address, low, high, 200)


def _monitor(cfg: InterchangeConfig) -> Any:
    """The interchange's monitoring reporter, started, if the executor asked for monitoring."""
    if not cfg.monitor_url or not cfg.monitor_run:
        return None
    from .monitoring.reporters import InterchangeReporter
    from .monitoring.sender import EventSender

    sender = EventSender(cfg.monitor_url, cfg.monitor_run, "interchange", cfg.monitor_cert_dir)
    sender.start()
    return InterchangeReporter(sender)


def _version_mismatch(reg: protocol.Register) -> str:
    """Why this pool cannot serve us ("" if it can): tasks are pickled, so htex and Python must match."""
    mine = (__version__, ".".join(platform.python_version_tuple()[:2]))
    theirs = (reg.htex_version, ".".join(reg.python_version.split(".")[:2]))
    if mine == theirs:
        return ""
    return (
        f"version mismatch: the executor runs htex {mine[0]} on Python {mine[1]}, "
        f"this pool runs htex {theirs[0]} on Python {theirs[1]}; install the same versions on both"
    )


def _raised(result: protocol.Blob) -> bool:
    data = protocol.as_buffer(result)
    return len(data) > 0 and data[0] == protocol.RESULT_RAISED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = InterchangeConfig.from_json(argv[0].encode() if argv else sys.stdin.buffer.read())  # stdin: the executor's way
    except ProtocolError as exc:
        raise SystemExit(f"htex.interchange: bad configuration: {exc}") from None
    os.makedirs(cfg.logdir, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(cfg.logdir, "interchange.log"),
        level=logging.DEBUG if cfg.debug else logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    soft, hard = fdlimit.raise_limit()
    log.info("file descriptors: soft limit %d, hard %d (1 a pool)", soft, hard)
    # Ctrl-C in the terminal is the client's; it tells us to stop over the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        Interchange(cfg).run()
    except Exception:
        log.exception("interchange failed")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
