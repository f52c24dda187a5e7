"""A pool of persistent rank processes, for engines whose loaders need one process per rank.

Engines such as vLLM read a rank's tensor/pipeline/expert-parallel position from
``torch.distributed`` process groups, which need one process per rank.  Starting a world of
processes per example costs tens of seconds (every process imports the engine); this pool starts
each rank process once, with the engine imported once in a ``forkserver`` (``preload``), keeps
it, and runs one *world run* per example: every rank gets its request, and the pool returns
every rank's result.

    from weightcheck.adapters.pool import RankPool

    pool = RankPool("mypkg.engine:Engine", preload=["mypkg.engine"])
    world = pool.world(4)                       # started on first use, kept afterwards
    results = world.run([req0, req1, req2, req3])  # one result per rank, or RankFailed
    value = world.call(2, request)              # one rank only (raises RankFailed)
    pool.close()

The engine (``"module:attr"``) is called in every rank process, after the pool has set up the
distributed world (``torch.distributed`` with gloo, a TCP store on 127.0.0.1 served by rank 0,
``GLOO_SOCKET_IFNAME=lo``), as ``attr(rank=r, world_size=n, scratch=DIR)``; it returns an object
with ``handle(request) -> result`` and optionally ``close()``.  ``DIR`` is a private directory
of the world (logs, sockets, config files), removed when the world stops.

- Worlds: one set of processes per world size, started when a size is first asked for; other
  sizes keep theirs (at most ``max_processes`` processes in all: the least recently used world
  is stopped to make room).  ``World.generation`` changes whenever a world is (re)started: a
  caller holding per-world state (a model built in a rank process) passes
  ``generation=...`` and gets ``WorldReplaced`` instead of a silently different world.
- Recycling: a world is restarted before an unpinned run or call once it has served
  ``recycle_after`` unpinned runs and calls (engines leak a little per example; an adapter
  that builds on one rank with ``call``, as SGLang's, counts its builds); requests pinned to a
  generation never trigger it.
- Timeouts: a run that does not finish in ``timeout`` seconds raises ``WorldTimeout``, which
  names the ranks that did not finish and where each one was (its Python stack, taken with
  ``faulthandler``), telling apart ranks stuck in a ``torch.distributed`` collective from the
  rank that hung elsewhere or finished without joining it.  The world is then stopped and
  started afresh on next use.  A rank process that dies raises ``WorldDied`` (exit code and
  the tail of its log).  An exception inside the engine is a ``RankFailed`` for that rank
  only; the world stays.
- Every gloo process group of a rank process shares one gloo device on 127.0.0.1 (one TCP loop
  thread, which wakes 100 times a second, instead of one per group: vLLM makes a dozen groups
  per parallel configuration, and a device each made a few dozen idle rank processes saturate
  two cores).
- Requests and results travel as plain pickles over pipes, CPU tensors as (dtype, shape, raw
  bytes), never through shared memory (torch's multiprocessing reductions are not used).
- Shutdown: ``close()`` (also at interpreter exit) asks every rank to close its engine and
  destroy its process group, waits, and kills what did not exit.  A rank killed this way (or
  on a timeout) has its ``/dev/shm`` segments removed after it died.  Every rank watches a
  pipe held only by the pool's process: if that process dies (an xdist worker exiting, a
  kill), the ranks exit at once (rank 0 kills its peers, then removes the world's directory).  Rank processes ignore SIGINT: Ctrl-C interrupts the test
  process, whose exit stops them.

Environment: ``WEIGHTCHECK_POOL_TIMEOUT`` (seconds, default 300) and
``WEIGHTCHECK_POOL_RECYCLE`` (runs, default 500) override the defaults of every pool.
"""

from __future__ import annotations

import atexit
import faulthandler
import importlib
import io
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.popen_forkserver
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "RankPool",
    "World",
    "PoolError",
    "RankFailed",
    "WorldTimeout",
    "WorldDied",
    "WorldReplaced",
    "PoolClosed",
    "process_memory",
    "ModelEngine",
]

DEFAULT_TIMEOUT = 300.0
DEFAULT_RECYCLE = 500
DEFAULT_MAX_PROCESSES = 48
CLOSE_GRACE = 5.0  # seconds a rank gets to close its engine before it is killed
STACK_WAIT = 1.0  # seconds to wait for a hung rank's stack dump
SHM = "/dev/shm"


# --- the adapter-independent half of a rank's engine ------------------------------------------


class ModelEngine:
    """A base for an adapter's engine in a rank process (``RankPool(engine=...)``): requests are
    dicts with an ``op``; ``{"op": "timings"}`` returns and resets the seconds and count spent
    per kind of request (``ci/pool_benchmark.py``); models built for handles are kept by key
    (the oldest go past ``max_models``) and a request's ``free`` keys are dropped first.  A
    subclass answers every other request in ``_handle``."""

    max_models = 8  # models a rank process keeps for live handles

    def __init__(self) -> None:
        self.models: OrderedDict[Any, Any] = OrderedDict()
        self.timings: dict[str, list[float]] = {}  # op -> [seconds, count]

    def handle(self, request: dict) -> Any:
        if request["op"] == "timings":
            timings, self.timings = self.timings, {}
            return timings
        start = time.perf_counter()
        try:
            for key in request.get("free", ()):
                self.models.pop(key, None)
            return self._handle(request)
        finally:
            kind = request["op"]
            if kind in ("build", "load_ranks") and not request.get("active"):
                kind = "groups"  # a rank that only takes part in the groups of another's build
            entry = self.timings.setdefault(kind, [0.0, 0])
            entry[0] += time.perf_counter() - start
            entry[1] += 1

    def _handle(self, request: dict) -> Any:
        raise NotImplementedError

    def keep(self, key: Any, model: Any) -> None:
        self.models[key] = model
        while len(self.models) > self.max_models:
            self.models.popitem(last=False)

    def model(self, key: Any) -> Any:
        model = self.models.get(key)
        if model is None:
            raise RuntimeError(
                f"this rank no longer holds the model (more than {self.max_models} were built "
                "since, or it was freed); build it again"
            )
        return model

    def close(self) -> None:
        self.models.clear()


# --- errors -----------------------------------------------------------------------------------


class PoolError(RuntimeError):
    """Something went wrong in the pool (not in the engine's own code)."""


class PoolClosed(PoolError):
    pass


class WorldReplaced(PoolError):
    """The world a caller's state lived in was stopped (recycled, timed out, evicted, closed)."""


@dataclass
class _Remote:
    type_name: str
    message: str
    traceback: str
    pickled: bytes | None


class RankFailed(PoolError):
    """The engine raised on one rank.  ``original`` is the engine's exception when it could be
    sent back (else None); ``type_name``/``message``/``remote_traceback`` always are."""

    def __init__(self, rank: int, world_size: int, remote: _Remote):
        self.rank, self.world_size = rank, world_size
        self.type_name, self.message = remote.type_name, remote.message
        self.remote_traceback = remote.traceback
        self.original: BaseException | None = None
        if remote.pickled is not None:
            try:
                self.original = pickle.loads(remote.pickled)
            except Exception:
                self.original = None
        super().__init__(f"rank {rank} of {world_size} raised {remote.type_name}: {remote.message}")

    def exception(self) -> BaseException:
        """The engine's exception (or this error when it could not be sent back), with the
        rank and the remote traceback attached as a note where Python supports notes."""
        exc = self.original if self.original is not None else self
        if exc is not self and hasattr(exc, "add_note"):
            exc.add_note(f"(raised on rank {self.rank} of {self.world_size})\n{self.remote_traceback}")
        return exc


class WorldTimeout(PoolError):
    """A world run did not finish in time.  ``pending``: ranks that did not finish;
    ``hung``: those of them not inside a torch.distributed collective (the culprits; if every
    pending rank is inside a collective, all of them); ``stacks``: rank -> faulthandler dump."""

    def __init__(self, message: str, pending: list[int], hung: list[int], stacks: dict[int, str]):
        super().__init__(message)
        self.pending, self.hung, self.stacks = pending, hung, stacks


class WorldDied(PoolError):
    """A rank process died during a run (or while starting)."""

    def __init__(self, message: str, rank: int, exitcode: int | None):
        super().__init__(message)
        self.rank, self.exitcode = rank, exitcode


def _env_number(name: str, default: float, kind: Callable = float):
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise PoolError(f"{name}={text!r} is not a number") from None


# --- the rank process -------------------------------------------------------------------------


def _describe(exc: BaseException) -> _Remote:
    try:
        pickled = _dumps(exc)
        pickle.loads(pickled)
    except Exception:
        pickled = None
    name = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return _Remote(name, str(exc), text, pickled)


def _rebuild_tensor(dtype: str, shape: tuple, data: bytes):
    import torch

    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return flat.view(getattr(torch, dtype)).reshape(shape)


class _Pickler(pickle.Pickler):
    """Plain pickle, with CPU tensors as (dtype, shape, raw bytes): no shared memory (torch's
    multiprocessing reductions), every dtype (float8 included), a Parameter as a tensor."""

    def reducer_override(self, obj):
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            tensor = obj.detach().to("cpu")
            # contiguous() keeps a tensor whose size-1 dimensions have strides other than 1 (it
            # counts as contiguous), and such a tensor cannot be viewed as bytes: copy it into
            # a fresh, densely strided one-dimensional tensor instead.
            flat = tensor.reshape(-1)
            if flat.numel() and flat.stride(-1) != 1:
                flat = flat.clone(memory_format=torch.contiguous_format)
            data = flat.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
            return _rebuild_tensor, (str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), data)
        return NotImplemented


def _dumps(obj) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _send(conn, message) -> None:
    conn.send_bytes(_dumps(message))


def _recv(conn):
    return pickle.loads(conn.recv_bytes())


_PEERS: list[int] = []  # the pids of this world's ranks, once they all started


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _watch_parent(alive, scratch: str, rank: int) -> None:
    """Exit at once when the pool's process is gone (its end of ``alive`` closes).  Rank 0
    also stops the other ranks of its world and, once they are gone, removes the world's
    directory (their leftover shared memory is removed by Python's resource tracker when the
    last of them exits)."""
    try:
        alive.recv_bytes()
    except (EOFError, OSError):
        pass
    if rank == 0:
        others = [pid for pid in _PEERS if pid != os.getpid()]
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        while not all(_gone(pid) for pid in others) and time.monotonic() < deadline:
            time.sleep(0.01)
        shutil.rmtree(scratch, ignore_errors=True)
    os._exit(70)


def _load_factory(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    obj = importlib.import_module(module_name)
    for part in (attr or "engine").split("."):
        obj = getattr(obj, part)
    return obj


def _share_one_gloo_device() -> None:
    """Make every gloo process group of this process use one gloo device on 127.0.0.1 (one TCP
    loop thread, which wakes 100 times a second) and one worker thread, instead of a device
    and two threads per group: engines such as vLLM create a dozen groups per parallel
    configuration, and with a device each a few dozen idle rank processes keep both cores busy
    waking thousands of loop threads.  The groups, their ranks and their collectives are
    unchanged: only the transport object is shared."""
    import datetime

    import torch.distributed.distributed_c10d as c10d

    base = c10d.ProcessGroupGloo
    if getattr(base, "_weightcheck_shared", False):
        return
    device = base.create_device(hostname="127.0.0.1")

    class ProcessGroupGloo(base):
        _weightcheck_shared = True

        def __init__(self, store, rank, size, timeout=datetime.timedelta(seconds=1800)):
            if isinstance(timeout, base._Options):
                super().__init__(store, rank, size, timeout)
                return
            options = base._Options()
            options._devices = [device]
            options._threads = 1
            options._timeout = timeout
            super().__init__(store, rank, size, options)

    c10d.ProcessGroupGloo = ProcessGroupGloo


def _worker_main(spec, rank, size, conn, alive, scratch, env, threads, dist_timeout) -> None:
    """One rank: set up the distributed world, build the engine, serve requests until closed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log = os.open(os.path.join(scratch, f"rank{rank}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    stacks = open(os.path.join(scratch, f"rank{rank}.stack"), "w")
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    threading.Thread(target=_watch_parent, args=(alive, scratch, rank), daemon=True).start()
    os.environ.update(env)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    engine = None
    try:
        import datetime

        import torch
        import torch.distributed as dist

        torch.set_num_threads(threads)
        _share_one_gloo_device()
        timeout = datetime.timedelta(seconds=dist_timeout)
        if rank == 0:
            store = dist.TCPStore("127.0.0.1", 0, size, True, timeout, wait_for_workers=False)
            _send(conn, ("port", store.port))
        else:
            _, port = _recv(conn)
            store = dist.TCPStore("127.0.0.1", port, size, False, timeout)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=timeout)
        engine = _load_factory(spec)(rank=rank, world_size=size, scratch=scratch)
        _send(conn, ("ready", os.getpid()))
        _, peers = _recv(conn)
        _PEERS[:] = peers
    except BaseException as exc:
        _send(conn, ("err", _describe(exc)))
        return
    _serve(engine, conn)
    try:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
        if dist.is_initialized():
            dist.destroy_process_group()
        _send(conn, ("closed", None))
    except BaseException as exc:
        try:
            _send(conn, ("err", _describe(exc)))
        except Exception:
            pass


def _serve(engine, conn) -> None:
    while True:
        try:
            message = _recv(conn)
        except (EOFError, OSError):
            return
        if message[0] == "close":
            return
        try:
            reply = ("ok", engine.handle(message[1]))
        except BaseException as exc:  # the engine's failure, sent back as this rank's result
            reply = ("err", _describe(exc))
        try:
            data = _dumps(reply)
        except Exception as exc:
            data = _dumps(("err", _describe(exc)))
        conn.send_bytes(data)


# --- the pool's side --------------------------------------------------------------------------


def process_memory(pid: int) -> dict[str, int]:
    """RSS and PSS (bytes) and open fds of a process (zeros if it is gone)."""
    out = {"rss": 0, "pss": 0, "fds": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    out[key.lower()] = int(rest.split()[0]) * 1024
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def _shm_entries(pid: int) -> set[str]:
    """The top-level /dev/shm files a process maps or holds open (its shared-memory segments)."""
    found = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                at = line.find(SHM + "/")
                if at >= 0:
                    path = line[at:].strip()
                    if path.endswith(" (deleted)"):
                        continue
                    found.add(path)
    except OSError:
        pass
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    except OSError:
        pass
    return {p for p in found if os.path.dirname(p) == SHM}


def _remove_shm(paths: Iterable[str]) -> list[str]:
    """Unlink leftover segments of dead rank processes (and drop them from Python's resource
    tracker, which the rank processes share with this process)."""
    removed = []
    for path in sorted(paths):
        try:
            os.unlink(path)
        except OSError:
            continue
        removed.append(path)
        name = os.path.basename(path)
        if name.startswith("psm_"):  # multiprocessing.shared_memory: registered by its creator
            try:
                from multiprocessing import resource_tracker

                resource_tracker.unregister("/" + name, "shared_memory")
            except Exception:
                pass
    return removed


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def _main_thread_frames(dump: str) -> list[tuple[str, int, str]]:
    """Frames (innermost first) of the thread serving requests in a faulthandler dump."""
    blocks, current = [], []
    for line in dump.splitlines():
        if line.startswith(("Thread 0x", "Current thread 0x")):
            if current:
                blocks.append(current)
            current = []
            continue
        match = _FRAME.match(line)
        if match:
            current.append((match["file"], int(match["line"]), match["func"]))
    if current:
        blocks.append(current)
    for block in blocks:
        if any(func in ("_serve", "_worker_main") for _, _, func in block):
            return block
    return blocks[0] if blocks else []


def _in_collective(frames) -> bool:
    return any("torch/distributed" in path.replace(os.sep, "/") for path, _, _ in frames)


def _where(frames) -> str:
    """Where a rank's serving thread is, innermost first: the collective it waits in, or the
    line it is at."""
    if not frames:
        return "(no Python stack could be read)"
    if _in_collective(frames):
        inside = [f for f in frames if "torch/distributed" in f[0].replace(os.sep, "/")]
        named = [f for f in inside if f[2] not in ("wrapper", "inner", "<lambda>")]
        call = (named or inside)[-1][2]  # the outermost torch.distributed function called
        caller = next((f for f in frames if "torch/distributed" not in f[0].replace(os.sep, "/")), None)
        text = f"in the torch.distributed collective {call}()"
        if caller is not None:
            text += f", called at {caller[0]}:{caller[1]} in {caller[2]}"
        return text
    path, line, func = frames[0]
    return f"at {path}:{line} in {func}"


class _Popen(multiprocessing.popen_forkserver.Popen):
    """The forkserver's Popen, without re-running the main module in the rank process (a rank
    runs this module's ``_worker_main``; re-importing a test runner's or a script's main
    module there would run it again)."""

    def _launch(self, process_obj):
        spawn = multiprocessing.popen_forkserver.spawn
        original = spawn.get_preparation_data

        def preparation_data(name):
            data = original(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = preparation_data
        try:
            super()._launch(process_obj)
        finally:
            spawn.get_preparation_data = original


class _RankProcess(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        return _Popen(process_obj)


@dataclass
class _Rank:
    rank: int
    process: Any
    conn: Any
    alive: Any
    pid: int = 0


@dataclass
class WorldStats:
    starts: int = 0
    start_seconds: float = 0.0
    recycles: int = 0
    replaced: int = 0  # stopped after a timeout or a dead rank
    runs: int = 0
    calls: int = 0
    removed_shm: list[str] = field(default_factory=list)


class World:
    """The rank processes of one world size.  Obtain it with ``RankPool.world(size)``."""

    def __init__(self, pool: "RankPool", size: int):
        self.pool, self.size = pool, size
        self.generation = 0
        self.ranks: list[_Rank] = []
        self.scratch: str | None = None
        self.runs_since_start = 0
        self.broken = False
        self.stats = WorldStats()

    # -- state

    @property
    def running(self) -> bool:
        return bool(self.ranks)

    @property
    def pids(self) -> list[int]:
        return [r.pid for r in self.ranks]

    def memory(self) -> list[dict[str, int]]:
        return [process_memory(pid) for pid in self.pids]

    def log_tail(self, rank: int, lines: int = 20) -> str:
        if self.scratch is None:
            return ""
        try:
            with open(os.path.join(self.scratch, f"rank{rank}.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # -- running

    def run(self, requests: Sequence[Any], *, generation: int | None = None, timeout: float | None = None) -> list:
        """One world run: rank r handles ``requests[r]``.  Returns every rank's result, or a
        ``RankFailed`` for a rank whose engine raised.  ``generation``: the world this run
        belongs to (``WorldReplaced`` if it was restarted since); None allows a (re)start."""
        if len(requests) != self.size:
            raise ValueError(f"a world of {self.size} ranks needs {self.size} requests, got {len(requests)}")
        self._ready(generation)
        self.runs_since_start += 1
        self.stats.runs += 1
        return self._exchange(list(range(self.size)), list(requests), timeout)

    def call(self, rank: int, request: Any, *, generation: int | None = None, timeout: float | None = None) -> Any:
        """Rank ``rank`` alone handles ``request`` (no collective may be involved).  Returns its
        result; raises ``RankFailed`` if the engine raised."""
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} is not in a world of {self.size}")
        self._ready(generation)
        self.stats.calls += 1
        if generation is None:  # an unpinned call starts an example (an engine's build) too
            self.runs_since_start += 1
        result = self._exchange([rank], [request], timeout)[0]
        if isinstance(result, RankFailed):
            raise result
        return result

    def _ready(self, generation: int | None) -> None:
        pool = self.pool
        if pool.closed:
            raise PoolClosed("the rank pool is closed")
        pool._touch(self)
        if generation is not None:
            if generation != self.generation or not self.running or self.broken:
                raise WorldReplaced(
                    f"the world of {self.size} ranks this model lived in (generation {generation}) "
                    f"was stopped since (now generation {self.generation}); build it again"
                )
            return
        if self.running and not self.broken and self.runs_since_start >= pool.recycle_after:
            self.stats.recycles += 1
            self.stop()
        if self.broken:
            self.stop()
        if not self.running:
            self.start()

    def _exchange(self, ranks: list[int], requests: list, timeout: float | None) -> list:
        timeout = self.pool.timeout if timeout is None else timeout
        payloads = [_dumps(("run", request)) for request in requests]  # unpicklable: nothing sent
        done = False
        try:
            for rank, payload in zip(ranks, payloads):
                try:
                    self.ranks[rank].conn.send_bytes(payload)
                except (OSError, EOFError):
                    self._died(rank, "its pipe was closed")
            results = self._collect(ranks, timeout)
            done = True
            return results
        finally:
            if not done:  # a timeout, a dead rank, an interrupt: the world is not usable
                self.broken = True

    def _collect(self, ranks: list[int], timeout: float) -> list:
        deadline = time.monotonic() + timeout
        results: dict[int, Any] = {}
        by_conn = {self.ranks[r].conn: r for r in ranks}
        by_sentinel = {self.ranks[r].process.sentinel: r for r in ranks}
        while len(results) < len(ranks):
            waiting = [c for c, r in by_conn.items() if r not in results]
            left = deadline - time.monotonic()
            if left <= 0:
                self._timed_out(sorted(set(ranks) - set(results)), sorted(results), timeout)
            ready = multiprocessing.connection.wait(
                waiting + [s for s, r in by_sentinel.items() if r not in results], timeout=left
            )
            for obj in ready:
                if obj in by_conn:
                    rank = by_conn[obj]
                    try:
                        kind, payload = _recv(obj)
                    except (EOFError, OSError):
                        self._died(rank, "it closed its pipe")
                    results[rank] = payload if kind == "ok" else RankFailed(rank, self.size, payload)
            for obj in ready:
                if obj in by_sentinel and by_sentinel[obj] not in results:
                    rank = by_sentinel[obj]
                    if self.ranks[rank].conn.poll():  # its answer arrived just before it exited
                        continue
                    self._died(rank, "it exited")
        return [results[r] for r in ranks]

    def _died(self, rank: int, how: str):
        proc = self.ranks[rank].process
        proc.join(1.0)
        code = proc.exitcode
        tail = self.log_tail(rank)
        self.broken = True
        self.stats.replaced += 1
        self.stop()
        raise WorldDied(
            f"rank {rank} of a world of {self.size} died during a run ({how}; exit code {code}); "
            f"the world was stopped and will be started afresh"
            + (f"\nlast lines of its log:\n{tail}" if tail else ""),
            rank,
            code,
        )

    def _timed_out(self, pending: list[int], finished: list[int], timeout: float):
        stacks = self._stacks(pending)
        frames = {r: _main_thread_frames(stacks.get(r, "")) for r in pending}
        outside = [r for r in pending if not _in_collective(frames[r])]
        hung = outside or pending
        parts = []
        for r in pending:
            role = "hung" if r in outside else "waiting"
            parts.append(f"rank {r}: {role} {_where(frames[r])}")
        if outside:
            verdict = f"rank{'s' if len(outside) > 1 else ''} {', '.join(map(str, outside))} hung"
        elif finished:
            verdict = (
                f"rank{'s' if len(pending) > 1 else ''} {', '.join(map(str, pending))} waited in a "
                f"collective that rank{'s' if len(finished) > 1 else ''} "
                f"{', '.join(map(str, finished))} never joined (they finished the run)"
            )
        else:
            verdict = f"ranks {', '.join(map(str, pending))} are in collectives that do not match"
        message = (
            f"world run timed out after {timeout:g} s in a world of {self.size} ranks: {verdict}.\n"
            + "\n".join(f"  {p}" for p in parts)
            + (f"\n  finished: rank{'s' if len(finished) > 1 else ''} {', '.join(map(str, finished))}" if finished else "")
            + "\nThe world was stopped and will be started afresh on next use."
        )
        self.broken = True
        self.stats.replaced += 1
        self.stop()
        raise WorldTimeout(message, pending, hung, stacks)

    def _stacks(self, ranks: list[int]) -> dict[int, str]:
        """Each rank's Python stacks, dumped by faulthandler on SIGUSR1."""
        files, sizes = {}, {}
        for r in ranks:
            path = os.path.join(self.scratch or "", f"rank{r}.stack")
            files[r] = path
            sizes[r] = os.path.getsize(path) if os.path.exists(path) else 0
            try:
                os.kill(self.ranks[r].pid, signal.SIGUSR1)
            except OSError:
                pass
        # a dump is complete once its file has grown and then stayed the same size a while
        grown: dict[int, tuple[int, float]] = {}
        deadline = time.monotonic() + STACK_WAIT
        while time.monotonic() < deadline:
            time.sleep(0.02)
            now = time.monotonic()
            for r in ranks:
                size = os.path.getsize(files[r]) if os.path.exists(files[r]) else 0
                if size > sizes[r] and grown.get(r, (None,))[0] != size:
                    grown[r] = (size, now)
            if len(grown) == len(ranks) and all(now - t >= 0.1 for _, t in grown.values()):
                break
        out: dict[int, str] = {}
        for r in ranks:
            try:
                with open(files[r], errors="replace") as f:
                    f.seek(sizes[r])
                    out[r] = f.read()
            except OSError:
                out[r] = ""
        return out

    # -- starting and stopping

    def start(self) -> None:
        pool = self.pool
        pool._make_room(self)
        began = time.perf_counter()
        ctx = pool.context
        self.scratch = tempfile.mkdtemp(prefix=f"{pool.name}-w{self.size}-")
        self.ranks = []
        self.broken = False
        self.generation = pool._next_generation()
        self.runs_since_start = 0
        ok = False
        try:
            for rank in range(self.size):
                parent, child = ctx.Pipe()
                alive_r, alive_w = ctx.Pipe(duplex=False)
                proc = _RankProcess(
                    target=_worker_main,
                    args=(pool.engine, rank, self.size, child, alive_r, self.scratch, pool.env,
                          pool.threads, pool.dist_timeout),
                    name=f"{pool.name}-w{self.size}-r{rank}",
                    daemon=True,
                )
                proc.start()
                child.close()
                alive_r.close()
                self.ranks.append(_Rank(rank, proc, parent, alive_w, proc.pid))
            port = self._start_reply(0, "port")
            for r in self.ranks[1:]:
                _send(r.conn, ("port", port))
            for r in range(self.size):
                self._start_reply(r, "ready")
            for r in self.ranks:
                _send(r.conn, ("peers", [x.pid for x in self.ranks]))
            ok = True
        finally:
            if not ok:
                self.broken = True
                self.stop()
        self.stats.starts += 1
        self.stats.start_seconds += time.perf_counter() - began

    def _start_reply(self, rank: int, expect: str):
        """Rank ``rank``'s next start-up message, which must be ``expect``."""
        r = self.ranks[rank]
        timeout = self.pool.start_timeout
        ready = multiprocessing.connection.wait([r.conn, r.process.sentinel], timeout=timeout)
        if r.conn in ready or r.conn.poll():
            try:
                kind, payload = _recv(r.conn)
            except (EOFError, OSError):
                kind = payload = None
            if kind == "err":
                raise PoolError(
                    f"rank {rank} of a world of {self.size} failed to start: "
                    f"{payload.type_name}: {payload.message}\n{payload.traceback}"
                )
            if kind == expect:
                return payload
            if kind is not None:
                raise PoolError(f"rank {rank} sent {kind!r} while starting, expected {expect!r}")
            ready.append(r.process.sentinel)
        if r.process.sentinel in ready:
            r.process.join(1.0)
            raise WorldDied(
                f"rank {rank} of a world of {self.size} died while starting (exit code "
                f"{r.process.exitcode})\n{self.log_tail(rank)}",
                rank,
                r.process.exitcode,
            )
        stacks = self._stacks([rank])
        raise WorldTimeout(
            f"rank {rank} of a world of {self.size} did not start within {timeout:g} s: "
            f"{_where(_main_thread_frames(stacks.get(rank, '')))}",
            [rank],
            [rank],
            stacks,
        )

    def stop(self, grace: float | None = None) -> None:
        """Stop the rank processes: ask them to close (unless the world is broken), wait up to
        ``grace`` seconds, kill the rest, remove the segments they left in /dev/shm."""
        if not self.ranks:
            return
        grace = CLOSE_GRACE if grace is None else grace
        ranks, self.ranks = self.ranks, []
        if not self.broken:
            for r in ranks:
                try:
                    _send(r.conn, ("close",))
                except (OSError, EOFError):
                    pass
            deadline = time.monotonic() + grace
            for r in ranks:
                r.process.join(max(0.0, deadline - time.monotonic()))
        leftovers: set[str] = set()
        for r in ranks:
            if r.process.exitcode is None:
                leftovers |= _shm_entries(r.pid)
        for r in ranks:
            if r.process.exitcode is None:
                try:
                    r.process.kill()
                except Exception:
                    pass
        for r in ranks:
            r.process.join(5.0)
            for conn in (r.conn, r.alive):
                try:
                    conn.close()
                except Exception:
                    pass
            try:
                r.process.close()
            except Exception:
                pass
        self.stats.removed_shm += _remove_shm(leftovers)
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None
        self.broken = False


class RankPool:
    """Persistent rank processes for ``engine`` (``"module:attr"``); see the module docstring.

    ``preload``: modules the forkserver imports once, so that every rank process starts with
    them imported (the first pool of a process starts the forkserver; its preload wins).
    ``env``: environment variables set in every rank process before the engine is built.
    ``threads``: ``torch.set_num_threads`` in every rank.  ``timeout``: seconds a run may take
    (default ``WEIGHTCHECK_POOL_TIMEOUT`` or 300); ``start_timeout``: seconds a world may take
    to start (default: the same); ``recycle_after``: runs after which a world is restarted
    (default ``WEIGHTCHECK_POOL_RECYCLE`` or 500); ``max_processes``: rank processes kept in
    all (least recently used worlds are stopped beyond it).
    """

    def __init__(
        self,
        engine: str,
        *,
        preload: Iterable[str] = (),
        env: dict[str, str] | None = None,
        threads: int = 1,
        timeout: float | None = None,
        start_timeout: float | None = None,
        recycle_after: int | None = None,
        max_processes: int = DEFAULT_MAX_PROCESSES,
        name: str = "weightcheck-pool",
    ):
        self.engine = engine
        self.preload = list(preload)
        self.env = dict(env or {})
        self.threads = threads
        self.timeout = timeout if timeout is not None else _env_number("WEIGHTCHECK_POOL_TIMEOUT", DEFAULT_TIMEOUT)
        self.start_timeout = start_timeout if start_timeout is not None else max(self.timeout, 60.0)
        self.recycle_after = (
            recycle_after
            if recycle_after is not None
            else _env_number("WEIGHTCHECK_POOL_RECYCLE", DEFAULT_RECYCLE, int)
        )
        if self.recycle_after < 1:
            raise ValueError("recycle_after must be at least 1")
        # gloo's own timeout stays above the pool's, so that the pool reports a hang first
        self.dist_timeout = max(self.timeout, self.start_timeout) + 60.0
        self.max_processes = max_processes
        self.name = name
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["weightcheck.adapters.pool", *self.preload])
        self.closed = False
        self._worlds: "OrderedDict[int, World]" = OrderedDict()
        self._generation = 0
        self._owner = os.getpid()
        self._finalizer = weakref.finalize(self, RankPool._close_worlds, self._worlds, self._owner)
        atexit.register(self._finalizer)

    # -- worlds

    def world(self, size: int) -> World:
        """The world of ``size`` ranks (not started until it runs)."""
        if self.closed:
            raise PoolClosed("the rank pool is closed")
        if size < 1:
            raise ValueError("a world has at least one rank")
        if size > self.max_processes:
            raise PoolError(f"a world of {size} ranks exceeds max_processes={self.max_processes}")
        world = self._worlds.get(size)
        if world is None:
            world = self._worlds[size] = World(self, size)
        return world

    def run(self, requests: Sequence[Any], **kwargs) -> list:
        """``world(len(requests)).run(requests)``."""
        return self.world(len(requests)).run(requests, **kwargs)

    @property
    def worlds(self) -> dict[int, World]:
        return dict(self._worlds)

    def processes(self) -> int:
        return sum(len(w.ranks) for w in self._worlds.values())

    def pids(self) -> list[int]:
        return [pid for w in self._worlds.values() for pid in w.pids]

    def stats(self) -> dict[str, Any]:
        return {
            size: {
                "generation": w.generation,
                "pids": w.pids,
                "runs_since_start": w.runs_since_start,
                **vars(w.stats),
            }
            for size, w in self._worlds.items()
        }

    def _touch(self, world: World) -> None:
        self._worlds.move_to_end(world.size)

    def _make_room(self, starting: World) -> None:
        """Stop least recently used worlds until ``starting`` fits within max_processes."""
        for size in list(self._worlds):
            if self.processes() + starting.size <= self.max_processes:
                return
            other = self._worlds[size]
            if other is not starting and other.running:
                other.stop()

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    # -- shutdown

    def close(self) -> None:
        """Stop every world (idempotent; also run at interpreter exit)."""
        if self.closed:
            return
        self.closed = True
        self._finalizer()

    @staticmethod
    def _close_worlds(worlds, owner: int) -> None:
        if os.getpid() != owner:  # a forked copy of the pool's process: not ours to stop
            return
        for world in list(worlds.values()):
            try:
                world.stop()
            except BaseException:
                pass

    def __enter__(self) -> "RankPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        running = {s: w.pids for s, w in self._worlds.items() if w.running}
        return f"<RankPool {self.engine} worlds={running}{' closed' if self.closed else ''}>"
