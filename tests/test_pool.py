"""The rank pool (weightcheck.adapters.pool), without any engine: ``Engine`` below is a trivial
engine doing torch.distributed gloo collectives (all_reduce, new_group).  Every test stops what
it started, also when it fails (the ``pool`` fixture and ``_reap``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import shared_memory
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from weightcheck.adapters.pool import (
    RankFailed,
    RankPool,
    WorldDied,
    WorldReplaced,
    WorldTimeout,
    _shm_entries,
)

REPO = Path(__file__).resolve().parents[1]
ENGINE = "tests.test_pool:Engine"
PRELOAD = ["torch", "torch.distributed", "tests.test_pool"]


class Engine:
    """Runs in every rank process of the tests' pools."""

    def __init__(self, rank: int, world_size: int, scratch: str):
        self.rank, self.size, self.scratch = rank, world_size, scratch
        self.segments: list[shared_memory.SharedMemory] = []

    def handle(self, request):
        op, ranks = request["op"], request.get("ranks", ())
        if op == "all_reduce":
            value = torch.tensor([float(self.rank + 1)])
            dist.all_reduce(value)
            return value
        if op == "new_group":  # collective: every rank creates it, its members reduce in it
            group = dist.new_group(ranks, backend="gloo")
            if self.rank not in ranks:
                return None
            value = torch.tensor([float(self.rank)])
            dist.all_reduce(value, group=group)
            return value.item()
        if op == "hang":
            if self.rank in ranks:
                time.sleep(3600)
            dist.all_reduce(torch.zeros(1))
            return "reduced"
        if op == "skip":
            if self.rank in ranks:
                return "skipped"
            dist.all_reduce(torch.zeros(1))
            return "reduced"
        if op == "raise":
            if self.rank in ranks:
                raise ValueError(f"boom on rank {self.rank}")
            return "fine"
        if op == "exit":
            if self.rank in ranks:
                os._exit(3)
            return "fine"
        if op == "shm":
            segment = shared_memory.SharedMemory(create=True, size=4096)
            self.segments.append(segment)
            return "/dev/shm/" + segment.name.lstrip("/")
        if op == "tensor":
            return torch.arange(request["n"], dtype=torch.float32) + self.rank
        if op == "pid":
            return os.getpid()
        if op == "sleep":
            time.sleep(request["seconds"])
            return "slept"
        raise ValueError(op)

    def close(self):
        for segment in self.segments:
            segment.close()
            segment.unlink()


# --- helpers --------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids, seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _reap(pids) -> None:
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _listening_sockets(pids) -> set[str]:
    """The inodes of the TCP sockets the processes ``pids`` listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    return inodes & _listening()


def _listening() -> set[str]:
    """Inodes of every listening TCP socket of this machine (network namespace)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                out.add(fields[9])
    return out


@pytest.fixture
def pool():
    p = RankPool(ENGINE, preload=PRELOAD, timeout=30, start_timeout=120)
    seen: set[int] = set()
    p.seen = seen
    try:
        yield p
    finally:
        seen.update(p.pids())
        p.close()
        left = _wait_gone(seen, 5.0)
        _reap(left)
        assert not left, f"rank processes left after close: {left}"


def _run(pool, size, request):
    pids = pool.world(size).pids
    pool.seen.update(pids)
    out = pool.world(size).run([dict(request) for _ in range(size)])
    pool.seen.update(pool.world(size).pids)
    return out


# --- world runs -----------------------------------------------------------------------------


def test_a_world_run_returns_every_ranks_result(pool):
    out = _run(pool, 3, {"op": "all_reduce"})
    assert [t.tolist() for t in out] == [[6.0]] * 3
    assert all(isinstance(t, torch.Tensor) and not t.is_shared() for t in out)


def test_new_group_is_collective_across_the_world(pool):
    assert _run(pool, 4, {"op": "new_group", "ranks": [1, 3]}) == [None, 4.0, None, 4.0]
    assert _run(pool, 4, {"op": "new_group", "ranks": [0, 1, 2]}) == [3.0, 3.0, 3.0, None]


def test_tensors_come_back_as_bytes_without_shared_memory(pool):
    world = pool.world(2)
    out = _run(pool, 2, {"op": "tensor", "n": 1 << 20})
    assert torch.equal(out[1], torch.arange(1 << 20, dtype=torch.float32) + 1)
    assert not any(t.is_shared() for t in out)
    assert not _shm_entries(os.getpid())
    assert not any(_shm_entries(pid) for pid in world.pids)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.arange(4.0)[::2][:1].reshape(1, 1),  # "contiguous", yet stride 2
        lambda: torch.arange(4.0)[::2][:1],
        lambda: torch.arange(6.0).reshape(3, 2).t()[:1],
        lambda: torch.arange(6.0).reshape(2, 3).t(),
        lambda: torch.zeros(0, 3).t(),
        lambda: torch.arange(8, dtype=torch.float32).to(torch.float8_e4m3fn)[::2],
    ],
)
def test_any_strided_tensor_travels_exactly(make):
    """A parameter vLLM's processing leaves with odd strides (MLA's transposed views: size-1
    dimensions with strides other than 1 count as contiguous) comes back exactly."""
    import pickle

    from weightcheck.adapters.pool import _dumps

    tensor = make()
    back = pickle.loads(_dumps(tensor))
    assert back.shape == tensor.shape and back.dtype == tensor.dtype
    def as_bytes(t):  # float8 has no torch.equal; compare the bytes of a fresh dense copy
        return t.reshape(-1).clone(memory_format=torch.contiguous_format).view(torch.uint8)

    assert torch.equal(as_bytes(back), as_bytes(tensor))


def test_worlds_of_different_sizes_are_served_side_by_side(pool):
    two = _run(pool, 2, {"op": "pid"})
    three = _run(pool, 3, {"op": "pid"})
    one = _run(pool, 1, {"op": "pid"})
    assert _run(pool, 2, {"op": "pid"}) == two  # not restarted by the others
    assert len(set(two + three + one)) == 6 and pool.processes() == 6
    assert _run(pool, 3, {"op": "all_reduce"})[0].item() == 6.0


def test_call_runs_one_rank(pool):
    world = pool.world(3)
    pids = _run(pool, 3, {"op": "pid"})
    assert world.call(2, {"op": "pid"}) == pids[2]
    with pytest.raises(RankFailed, match="boom on rank 1"):
        world.call(1, {"op": "raise", "ranks": [1]})


def test_least_recently_used_world_is_stopped_beyond_max_processes():
    with RankPool(ENGINE, preload=PRELOAD, timeout=30, start_timeout=120, max_processes=4) as p:
        seen = set()
        try:
            two = p.world(2).run([{"op": "pid"}] * 2)
            seen.update(two)
            seen.update(p.world(3).run([{"op": "pid"}] * 3))
            assert not p.world(2).running and p.processes() == 3
            assert not _wait_gone(two)
            again = p.world(2).run([{"op": "pid"}] * 2)
            seen.update(again)
            assert set(again).isdisjoint(two) and p.processes() == 2
        finally:
            seen.update(p.pids())
    _reap(_wait_gone(seen, 5.0))


# --- recycling ------------------------------------------------------------------------------


def test_recycling_after_n_runs_and_generations():
    p = RankPool(ENGINE, preload=PRELOAD, timeout=30, start_timeout=120, recycle_after=2)
    seen: set[int] = set()
    try:
        world = p.world(2)
        first = world.run([{"op": "pid"}] * 2)
        generation = world.generation
        assert world.run([{"op": "pid"}] * 2, generation=generation) == first
        # a run pinned to the generation never recycles, even past the count
        assert world.run([{"op": "pid"}] * 2, generation=generation) == first
        seen.update(first)
        second = world.run([{"op": "pid"}] * 2)  # unpinned: recycled first
        seen.update(second)
        assert set(second).isdisjoint(first) and world.generation != generation
        assert not _wait_gone(first)
        with pytest.raises(WorldReplaced):
            world.call(0, {"op": "pid"}, generation=generation)
        assert p.stats()[2]["recycles"] == 1
    finally:
        seen.update(p.pids())
        p.close()
        _reap(_wait_gone(seen, 5.0))


def test_unpinned_calls_count_towards_recycling():
    """An adapter that builds on one rank with ``call`` (SGLang's) is recycled too."""
    p = RankPool(ENGINE, preload=PRELOAD, timeout=30, start_timeout=120, recycle_after=2)
    seen: set[int] = set()
    try:
        world = p.world(2)
        first = world.call(0, {"op": "pid"})
        generation = world.generation
        assert world.call(0, {"op": "pid"}, generation=generation) == first  # pinned: not counted
        assert world.call(0, {"op": "pid"}) == first
        seen.add(first)
        again = world.call(0, {"op": "pid"})  # the third unpinned call: recycled first
        seen.add(again)
        assert again != first and world.generation != generation
        assert p.stats()[2]["recycles"] == 1
    finally:
        seen.update(p.pids())
        p.close()
        _reap(_wait_gone(seen, 5.0))


# --- failures -------------------------------------------------------------------------------


def test_an_engine_error_is_that_ranks_result_and_the_world_stays(pool):
    pids = _run(pool, 3, {"op": "pid"})
    out = _run(pool, 3, {"op": "raise", "ranks": [1]})
    assert out[0] == out[2] == "fine"
    err = out[1]
    assert isinstance(err, RankFailed) and err.rank == 1 and err.world_size == 3
    assert isinstance(err.original, ValueError) and str(err.original) == "boom on rank 1"
    assert "boom on rank 1" in err.remote_traceback and "test_pool.py" in err.remote_traceback
    assert err.exception() is err.original
    assert _run(pool, 3, {"op": "pid"}) == pids


def test_a_dead_rank_is_reported_and_its_world_replaced(pool):
    pids = _run(pool, 2, {"op": "pid"})
    with pytest.raises(WorldDied, match="rank 1 of a world of 2 died") as err:
        _run(pool, 2, {"op": "exit", "ranks": [1]})
    assert err.value.rank == 1 and err.value.exitcode == 3
    assert not _wait_gone(pids)
    again = _run(pool, 2, {"op": "pid"})
    assert set(again).isdisjoint(pids)


def test_a_hung_rank_is_named_and_its_world_replaced(pool):
    world = pool.world(2)
    pids = _run(pool, 2, {"op": "pid"})
    segments = _run(pool, 2, {"op": "shm"})
    assert all(os.path.exists(s) for s in segments)
    started = time.monotonic()
    with pytest.raises(WorldTimeout) as err:
        world.run([{"op": "hang", "ranks": [1]}] * 2, timeout=2)
    assert time.monotonic() - started < 15
    text = str(err.value)
    assert err.value.hung == [1] and err.value.pending == [0, 1]
    assert "rank 1 hung" in text and "test_pool.py" in text
    assert "rank 0: waiting in the torch.distributed collective all_reduce()" in text
    assert not _wait_gone(pids)
    assert not any(os.path.exists(s) for s in segments), "the killed world's shared memory is left"
    assert _run(pool, 2, {"op": "all_reduce"})[0].item() == 3.0  # a fresh world
    assert set(world.pids).isdisjoint(pids)


def test_a_collective_a_rank_never_joined_is_named(pool):
    world = pool.world(3)
    _run(pool, 3, {"op": "pid"})
    with pytest.raises(WorldTimeout) as err:
        world.run([{"op": "skip", "ranks": [2]}] * 3, timeout=2)
    text = str(err.value)
    assert err.value.pending == [0, 1] and err.value.hung == [0, 1]
    assert "ranks 0, 1 waited in a collective that rank 2 never joined" in text
    assert "all_reduce()" in text
    assert _run(pool, 3, {"op": "all_reduce"})[0].item() == 6.0


def test_a_single_rank_call_times_out(pool):
    world = pool.world(2)
    _run(pool, 2, {"op": "pid"})
    with pytest.raises(WorldTimeout, match="rank 1: hung at .*test_pool.py"):
        world.call(1, {"op": "sleep", "seconds": 60}, timeout=1)


# --- shutdown -------------------------------------------------------------------------------


def test_close_leaves_no_process_segment_port_or_directory():
    p = RankPool(ENGINE, preload=PRELOAD, timeout=30, start_timeout=120)
    pids: list[int] = []
    try:
        world = p.world(3)
        pids = world.run([{"op": "pid"}] * 3)
        segments = world.run([{"op": "shm"}] * 3)
        scratch = world.scratch
        sockets = _listening_sockets(pids)
        assert sockets, "rank 0 serves the world's store on a port"
        p.close()
        assert not _wait_gone(pids, 5.0)
        assert not any(os.path.exists(s) for s in segments)
        assert not os.path.exists(scratch)
        assert not sockets & _listening(), "a listening socket of the world is left"
        p.close()  # idempotent
    finally:
        p.close()
        _reap(pids)


_SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from weightcheck.adapters.pool import RankPool
pool = RankPool({engine!r}, preload={preload!r}, timeout=120, start_timeout=120)
world = pool.world(2)
pids = world.run([{{"op": "pid"}}] * 2)
segments = world.run([{{"op": "shm"}}] * 2)
print(json.dumps({{"pids": pids, "segments": segments, "scratch": world.scratch}}), flush=True)
{then}
"""


def _script(then: str) -> subprocess.Popen:
    code = _SCRIPT.format(repo=str(REPO), engine=ENGINE, preload=PRELOAD, then=then)
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _first_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"the script failed: {proc.stderr.read()}")
    return json.loads(line)


@pytest.mark.parametrize("how", ["sigint_during_a_run", "sigint_while_idle", "sigkill"])
def test_the_pools_process_stopping_leaves_nothing(how):
    """Ctrl-C (SIGINT to the test process, during a world run or between runs) or a kill of
    the pool's process: no rank process, no /dev/shm segment, no port, no directory remains."""
    then = 'world.run([{"op": "sleep", "seconds": 120}] * 2)' if how == "sigint_during_a_run" else "time.sleep(120)"
    proc = _script(then)
    info = {"pids": []}
    try:
        info = _first_line(proc)
        sockets = _listening_sockets(info["pids"])
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGINT)
        proc.wait(30)
        if how != "sigkill":
            assert "KeyboardInterrupt" in proc.stderr.read()
        assert not _wait_gone(info["pids"], 10.0), "rank processes outlived the pool's process"
        assert sockets

        def left() -> list[str]:
            return (
                [s for s in info["segments"] if os.path.exists(s)]
                + ([info["scratch"]] if os.path.exists(info["scratch"]) else [])
                + [f"listening socket {s}" for s in sockets & _listening()]
            )

        # After a kill, the cleanup is asynchronous (Python's resource tracker, the forkserver's
        # exit): it must be complete within seconds, never leave anything.
        deadline = time.monotonic() + 10
        while left() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left()
    finally:
        proc.kill()
        proc.wait(10)
        _reap(info["pids"])


def test_an_xdist_worker_exiting_leaves_nothing(pytester):
    """A pool left open in an xdist worker: the worker's exit stops it."""
    pytest.importorskip("xdist")
    record = pytester.path / "record.json"
    pytester.makepyfile(
        test_inner=textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(REPO)!r})
            from weightcheck.adapters.pool import RankPool
            POOL = RankPool({ENGINE!r}, preload={PRELOAD!r}, timeout=120, start_timeout=120)

            def test_uses_the_pool():
                world = POOL.world(2)
                pids = world.run([{{"op": "pid"}}] * 2)
                segments = world.run([{{"op": "shm"}}] * 2)
                with open({str(record)!r}, "w") as f:
                    json.dump({{"pids": pids, "segments": segments, "scratch": world.scratch}}, f)
            """
        )
    )
    info = {"pids": []}
    try:
        result = pytester.runpytest_subprocess("-n", "1", "-p", "xdist", "-p", "no:cacheprovider", timeout=240)
        result.assert_outcomes(passed=1)
        info = json.loads(record.read_text())
        assert not _wait_gone(info["pids"], 10.0)
        assert not any(os.path.exists(s) for s in info["segments"])
        assert not os.path.exists(info["scratch"])
    finally:
        _reap(info["pids"])
