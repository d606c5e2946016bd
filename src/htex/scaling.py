"""Scaling: the strategy, a pure function from the executor's state to a decision; and what applies it.

``decide`` is kept free of I/O so it is tested as a function.  ``Blocks`` keeps
the executor's blocks (started, running, ended; their pools, from the
interchange's events) and scales out and in; ``BlockPoller`` asks the provider
for the blocks' states every ``status_polling_interval`` and applies ``decide``.

The rules:

* wanted blocks = enough to give ``parallelism`` of a worker slot to each
  outstanding task, rounded up, at least one while there is work, and kept
  within [min_blocks, max_blocks];
* scale out by the difference when fewer blocks are alive (pending or running);
* scale in only blocks that have been idle (no task) for ``max_idletime``,
  never below what is wanted nor below min_blocks: an idle block runs nothing,
  so no task is ever killed;
* after MAX_FAILED_BLOCKS blocks in a row fail before their pool connects,
  give up: the executor goes to the bad state with the scheduler's reason;
* a draining block (its pools reached ``drain_period`` before the walltime) is
  not counted as alive: it takes no new task, so its replacement starts at
  once (the poller is woken by the event), before the walltime ends it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import protocol
from .errors import HtexError, ScaleOutFailed, VersionMismatch
from .inflight import Lifecycle
from .providers.base import ExecutionProvider, JobState, JobStatus

log = logging.getLogger("htex.executor")


@dataclass(frozen=True)
class ScalingState:
    outstanding: int  # tasks submitted and not done
    live_blocks: int  # blocks whose job is pending or running
    slots_per_block: int  # worker slots one block brings (known once a pool registered, else 1)
    min_blocks: int
    max_blocks: int
    parallelism: float
    failed_in_a_row: int  # blocks that ended in failure before any pool of theirs registered
    idle_blocks: tuple[str, ...] = ()  # live blocks idle for longer than max_idletime, longest idle first


@dataclass(frozen=True)
class Decision:
    scale_out: int = 0
    scale_in: tuple[str, ...] = field(default_factory=tuple)
    give_up: bool = False  # blocks keep failing: the executor should go to the bad state


MAX_FAILED_BLOCKS = 3


def wanted_blocks(s: ScalingState) -> int:
    wanted = math.ceil(s.outstanding * s.parallelism / max(1, s.slots_per_block))
    if s.outstanding > 0:
        wanted = max(wanted, 1)
    return min(max(wanted, s.min_blocks), s.max_blocks)


def decide(s: ScalingState) -> Decision:
    if s.failed_in_a_row >= MAX_FAILED_BLOCKS:
        return Decision(give_up=True)
    wanted = wanted_blocks(s)
    if s.live_blocks < wanted:
        return Decision(scale_out=wanted - s.live_blocks)
    surplus = s.live_blocks - wanted
    return Decision(scale_in=s.idle_blocks[:surplus])


# ---------------------------------------------------------------------------
# Applying it: the executor's blocks, and the thread that polls them
# ---------------------------------------------------------------------------

POLLER_JOIN_SECONDS = 10.0  # for a poll in progress (a slow scheduler command) to finish at shutdown


class Blocks:
    """This executor's blocks and what became of them; scaling out and in.

    One lock guards the bookkeeping: the I/O thread reports pools coming and
    going (typed events), the poller and the user's threads scale.  Scheduler
    commands (slow) run outside the lock.
    """

    def __init__(self, provider: ExecutionProvider, label: str, launch_command: Callable[[str], str],
                 ask: Callable[[Callable[[int], protocol.Message]], Any], lifecycle: Lifecycle,
                 outstanding: Callable[[], int], max_idletime: float, give_up: Callable[[BaseException], None]) -> None:
        self.provider = provider
        self.label = label
        self.launch_command = launch_command
        self.ask = ask  # send a control message to the interchange, return its answer
        self.lifecycle = lifecycle
        self.outstanding = outstanding
        self.max_idletime = max_idletime
        self.give_up = give_up
        self.lock = threading.Lock()
        self.jobs: dict[str, str] = {}  # block id -> job id
        self.status: dict[str, JobStatus] = {}  # the last we know of each block
        self.pools: dict[str, set[str]] = {}  # block id -> its registered pools
        self.connected: set[str] = set()  # blocks that ever had a pool
        self.failed_in_a_row = 0
        self.last_failure = ""
        self.slots_per_block = 1
        self.draining: set[str] = set()  # blocks whose pools drain: they take no new task
        self.wake: Callable[[], None] = lambda: None  # run the poller now (BlockPoller sets it)
        self._next_id = 0
        self.monitor: Any = None  # monitoring.reporters.ClientReporter, or None

    # -- events from the interchange (the I/O thread) ------------------------------

    def on_event(self, msg: protocol.Message) -> None:
        if isinstance(msg, protocol.PoolRegistered):
            p = msg.pool
            log.info("pool registered: manager %s on %s (block %s)", p.manager, p.hostname, p.block_id)
            with self.lock:
                self.pools.setdefault(p.block_id, set()).add(p.manager)
                self.connected.add(p.block_id)
                self.slots_per_block = max(1, p.worker_count + p.prefetch_capacity)
                self.failed_in_a_row = 0
        elif isinstance(msg, protocol.PoolGone):
            log.log(logging.INFO if msg.released else logging.ERROR, "%s", msg.message)
            with self.lock:
                self.pools.get(msg.block_id, set()).discard(msg.manager)
        elif isinstance(msg, protocol.PoolRejected):
            log.error("a pool was refused: %s", msg.reason)
            with self.lock:
                none_left = not any(self.pools.values())
            if none_left:  # no pool can serve us: waiting would only hide the reason
                self.give_up(VersionMismatch(msg.reason))
        elif isinstance(msg, protocol.PoolDraining):
            log.info("block %s is draining (manager %s): a replacement may start", msg.block_id, msg.manager)
            with self.lock:
                self.draining.add(msg.block_id)
            self.wake()

    # -- scaling (any thread) ------------------------------------------------------

    def scale_out(self, blocks: int = 1) -> list[str]:
        new = []
        for _ in range(blocks):
            with self.lock:
                block_id = str(self._next_id)
                self._next_id += 1
            try:
                job_id = self.provider.submit(self.launch_command(block_id), 1, f"{self.label}.block-{block_id}")
            except HtexError:
                raise
            except Exception as exc:
                raise ScaleOutFailed(f"the provider could not start block {block_id}: {exc}") from exc
            log.info("started block %s as job %s", block_id, job_id)
            with self.lock:
                self.jobs[block_id] = job_id
            if self.monitor is not None:
                self.monitor.block_requested(block_id, job_id)
            new.append(block_id)
        return new

    def scale_in(self, blocks: int | None = None, block_ids: list[str] | None = None) -> list[str]:
        """Cancel blocks (idle ones first): hold their pools, cancel the jobs, release the pools.

        Two round trips to the interchange whatever the number of blocks and pools.
        """
        if block_ids is None:
            busy = {p.block_id for p in self.pool_infos() if p.tasks}
            with self.lock:
                live = [b for b in self.jobs if b not in self.status or not self.status[b].terminal]
            live.sort(key=lambda b: (b in busy, -int(b) if b.isdigit() else 0))
            block_ids = live[: blocks if blocks is not None else len(live)]
        with self.lock:
            managers = [m for b in block_ids for m in self.pools.get(b, ())]
            jobs = [self.jobs[b] for b in block_ids if b in self.jobs]
        if managers:
            self._tell(lambda req: protocol.HoldPools(req=req, managers=managers), "hold the pools of", block_ids)
        if jobs:
            self.provider.cancel(jobs)
        if managers:
            self._tell(lambda req: protocol.DropBlocks(req=req, blocks=list(block_ids), reason="its block was scaled in",
                                                       released=True), "release the pools of", block_ids)
        with self.lock:
            for b in block_ids:
                self.status[b] = JobStatus(JobState.CANCELLED, "scaled in")
        if self.monitor is not None:
            self.monitor.blocks_seen({b: self.status[b] for b in block_ids}, self.jobs)
        return list(block_ids)

    def _tell(self, make: Callable[[int], protocol.Message], what: str, blocks: list[str]) -> None:
        if self.lifecycle.shut_down.is_set():
            return
        try:
            self.ask(make)
        except Exception as exc:
            log.warning("could not %s blocks %s: %s", what, blocks, exc)

    def pool_infos(self) -> list[protocol.PoolInfo]:
        with self.lock:
            if not any(self.pools.values()):
                return []  # nothing to ask
        try:
            reply: protocol.StatusReply = self.ask(lambda req: protocol.StatusRequest(req=req))
        except Exception:
            return []
        return list(reply.pools)

    def refresh(self) -> dict[str, JobStatus]:
        """Ask the provider for every block's status (keeping our own "scaled in" mark)."""
        with self.lock:
            ids = list(self.jobs)
            jobs = [self.jobs[b] for b in ids]
        if not ids:
            return {}
        statuses = self.provider.status(jobs)
        with self.lock:
            for b, st in zip(ids, statuses, strict=True):
                known = self.status.get(b)
                if known is None or known.state is not JobState.CANCELLED:
                    self.status[b] = st
            seen = {b: self.status[b] for b in ids}
        if self.monitor is not None:
            self.monitor.blocks_seen(seen, self.jobs)
        return seen

    def cancel_all(self) -> None:
        with self.lock:
            jobs = list(self.jobs.values())
            live = {b: j for b, j in self.jobs.items() if b not in self.status or not self.status[b].terminal}
        if self.monitor is not None:
            self.monitor.blocks_cancelled(live, "cancelled at the executor's shutdown")
        if jobs:
            try:
                self.provider.cancel(jobs)
            except Exception:
                log.exception("cancelling blocks failed")
        try:
            self.provider.close()  # what it made around the blocks (a cloud's network): after they are gone
        except Exception:
            log.exception("the provider %s could not release what it made", self.provider.label)

    # -- one round of the poller ---------------------------------------------------------

    def poll_once(self) -> None:
        """Note ended and held blocks, then apply the strategy's decision."""
        with self.lock:
            before = {b: s.state for b, s in self.status.items()}
        statuses = self.refresh()
        for block, st in statuses.items():
            if st.terminal and before.get(block) is not st.state:
                self._block_ended(block, st)
            elif st.state is JobState.HELD and block not in self.connected:
                self._block_held(block, st)
                statuses[block] = self.status[block]
        if not self.lifecycle.running:
            return
        with self.lock:
            live = [b for b, st in statuses.items() if not st.terminal and b not in self.draining]
            failed, slots = self.failed_in_a_row, self.slots_per_block
        decision = decide(ScalingState(
            outstanding=self.outstanding(), live_blocks=len(live), slots_per_block=slots,
            min_blocks=self.provider.min_blocks, max_blocks=self.provider.max_blocks,
            parallelism=self.provider.parallelism, failed_in_a_row=failed,
            idle_blocks=idle_blocks(live, self.pool_infos(), self.max_idletime),
        ))
        if decision.give_up:
            self.give_up(ScaleOutFailed(f"{failed} blocks in a row failed to start; the last: {self.last_failure}"))
        elif decision.scale_out:
            self.scale_out(decision.scale_out)
        elif decision.scale_in:
            log.info("scaling in idle blocks %s", list(decision.scale_in))
            self.scale_in(block_ids=list(decision.scale_in))

    def _block_held(self, block: str, st: JobStatus) -> None:
        """A held job never starts by itself (bad script, unwritable output, ...): a failed start."""
        job = self.jobs[block]
        log.error("block %s (job %s) is held by the scheduler: %s; cancelling it", block, job, st.message)
        self.provider.cancel([job])
        with self.lock:
            self.failed_in_a_row += 1
            self.last_failure = f"block {block} (job {job}) was held by the scheduler: {st.message}"
            self.status[block] = JobStatus(JobState.FAILED, st.message)
        if self.monitor is not None:
            self.monitor.blocks_seen({block: self.status[block]}, self.jobs)

    def _block_ended(self, block: str, st: JobStatus) -> None:
        """A block's job ended (done, failed, cancelled from outside, walltime): act on it now."""
        with self.lock:
            job = self.jobs.get(block)
            if st.state is JobState.FAILED and block not in self.connected:
                self.failed_in_a_row += 1
                self.last_failure = f"block {block} (job {job}) failed before its pool connected: {st.message}"
            has_pools = bool(self.pools.get(block))
            drained = block in self.draining
        # A drained block's job ends by itself: expected, not worth a warning.
        level = logging.INFO if drained else logging.WARNING
        log.log(level, "block %s (job %s) ended: %s %s", block, job, st.state.value, st.message)
        if has_pools and self.lifecycle.running:
            # Its pools are gone with the job: fail (or retry) their tasks now, not after heartbeat_threshold.
            reason = f"its job {job} ended ({st.state.value})"
            self._tell(lambda req: protocol.DropBlocks(req=req, blocks=[block], reason=reason, released=False),
                       "drop the pools of", [block])


def idle_blocks(live: list[str], pools: list[protocol.PoolInfo], max_idletime: float) -> tuple[str, ...]:
    """Live blocks whose every pool has had no task for max_idletime, longest idle first.

    A block with no pool registered yet is not idle: it may still be starting.
    """
    idle: dict[str, float] = {}
    busy = set()
    for p in pools:
        if p.tasks or p.idle_duration < max_idletime:
            busy.add(p.block_id)
        else:
            idle[p.block_id] = min(idle.get(p.block_id, math.inf), p.idle_duration)
    return tuple(sorted((b for b in idle if b in live and b not in busy), key=lambda b: -idle[b]))


class BlockPoller(threading.Thread):
    """Every ``period`` s: one round of ``Blocks.poll_once``.  A failed round is logged and tried again."""

    def __init__(self, blocks: Blocks, period: float) -> None:
        super().__init__(name=f"htex-blocks-{blocks.label}", daemon=True)
        self.blocks = blocks
        self.period = period
        self._stop_event = threading.Event()
        self._wake_event = threading.Event()  # set by stop() and by Blocks.wake (a block began to drain)
        blocks.wake = self._wake_event.set

    def run(self) -> None:
        while True:
            self._wake_event.wait(self.period)
            self._wake_event.clear()
            if self._stop_event.is_set():
                return
            try:
                self.blocks.poll_once()
            except Exception:
                log.exception("the block poller failed; trying again next period")

    def stop(self) -> None:
        self._stop_event.set()
        self._wake_event.set()
        if self is not threading.current_thread() and self.is_alive():
            self.join(POLLER_JOIN_SECONDS)
