"""Worker process main (``timeslice`` and ``mps`` modes): ``python -m ...worker --fd N``.

One process per model. The dispatcher hands over one end of a Unix socketpair (``--fd``) and
talks pickled tuples over it with :class:`multiprocessing.connection.Connection` framing:

    dispatcher → worker   ("init", cfg) · ("job", (request_id, model, batch, seq, new)) ·
                          ("ping", n) · ("stop",)
    worker → dispatcher   ("ready", info) · ("fail", message) · ("result", request_id, fields) ·
                          ("pong", n)

A reader thread feeds the executor's FIFO; the main thread runs the executor. EOF on the socket
means the dispatcher is gone: the worker exits at once (``os._exit``), even mid-request, so it
can never outlive its dispatcher.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection


def warm_up(model) -> None:
    """One small request per model, so CUDA/cuBLAS initialisation never lands in a timed one."""
    entry = model.entry
    seq = max(entry.min_side, 8) if entry.kind == "vision" else 8
    new = 2 if entry.kind == "decoder" else 0
    for _ in range(2):
        model.run(1, seq, new, label="warmup")


# Pre-warm progress (build_resident's ``status``): a line for a bucket that took at least
# PREWARM_SLOW_S (a CUDA graph capture takes < 2 s on the H200; an Inductor compile 15-80 s),
# else at most one every PREWARM_EVERY_S, so a long pre-warm never looks like a hang.
# TRACEFORGE_PREWARM_SLOW_S overrides the first (tests: 0 reports every bucket).
PREWARM_SLOW_S = float(os.environ.get("TRACEFORGE_PREWARM_SLOW_S", "5"))
PREWARM_EVERY_S = 15.0


def _prewarm_reporter(name: str, zoo: str, status):
    started = last = time.perf_counter()

    def on_bucket(i: int, n: int, label: str, seconds: float) -> None:
        nonlocal last
        now = time.perf_counter()
        if seconds >= PREWARM_SLOW_S or (now - last >= PREWARM_EVERY_S and i < n):
            last = now
            why = " (compiling)" if seconds >= PREWARM_SLOW_S else ""
            status(f"    {name} ({zoo}): pre-warm {i}/{n} buckets, {now - started:.0f} s; "
                   f"{label} took {seconds:.1f} s{why}")
    return on_bucket


class StartCancelled(Exception):
    """Loading stopped at a model or bucket boundary: the replay was interrupted meanwhile."""


def build_resident(models: dict[str, str], device: str, seed: int,
                   serving: dict | None = None, status=None,
                   cancel: threading.Event | None = None) -> tuple[dict, dict]:
    """Build, configure and warm ``{trace model: zoo entry}``; returns (loaded, info per model).

    ``status(line)``: progress lines while pre-warm is slow (an Inductor compile, many buckets).
    ``cancel``: once set, :class:`StartCancelled` is raised before the next model and after the
    bucket being warmed (one bucket -- an Inductor compile -- cannot be cut short).

    ``serving`` (all optional): ``compile`` (eager | graphs), ``seq_buckets`` {model: list or
    None}, ``batch_buckets`` (dynamic batching on), ``max_batch``, ``prewarm`` (bool) and
    ``shapes`` {model: [(batch, seq, new), ...]} — what the trace asks of each model. With
    ``prewarm``, every bucket those shapes can need runs once here (graphs: is captured), so no
    request pays a first-shape cost; without it, one small request per model (today's
    behaviour: CUDA/cuBLAS initialisation stays out of timed requests, shapes stay cold).
    """
    from traceforge.zoo import build_model

    serving = serving or {}
    loaded, info = {}, {}
    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise StartCancelled("interrupted while the models were loading")

    for i, (name, zoo) in enumerate(models.items()):
        check_cancel()
        started = time.perf_counter()
        model = build_model(zoo, device, seed=seed + i)
        model.configure(compile=serving.get("compile", "eager"),
                        seq_buckets=(serving.get("seq_buckets") or {}).get(name),
                        batch_buckets=bool(serving.get("batch_buckets")))
        entry_info = {"zoo": zoo, "params": model.entry.params, "dtype": model.dtype,
                      "build_s": round(model.build_s, 3), "compile": model.compile,
                      "seq_buckets": (None if model.policy.seq_buckets is None
                                      else list(model.policy.seq_buckets))}
        shapes = (serving.get("shapes") or {}).get(name) or []
        if serving.get("prewarm", True) and shapes:
            buckets, new_by_bucket = warm_plan(model, shapes, int(serving.get("max_batch", 1)))
            t = time.perf_counter()
            report = None if status is None else _prewarm_reporter(name, zoo, status)

            def on_bucket(*args, report=report) -> None:
                if report is not None:
                    report(*args)
                check_cancel()

            per_bucket = model.prewarm(buckets, new_by_bucket, on_bucket=on_bucket)
            entry_info["prewarm"] = {"buckets": list(per_bucket),
                                     "seconds": round(time.perf_counter() - t, 3),
                                     "per_bucket_s": per_bucket}
        else:
            warm_up(model)
            entry_info["prewarm"] = None
        loaded[name] = model
        entry_info["ready_s"] = round(time.perf_counter() - started, 3)
        info[name] = entry_info
    return loaded, info


def die_with_parent(parent_pid: int | None, sig: int = signal.SIGKILL) -> None:
    """Never outlive the dispatcher, even while still importing torch or building models (the
    socket reader that notices EOF only starts once the models are ready): the kernel sends
    ``sig`` when the parent dies (PR_SET_PDEATHSIG, Linux), and a parent already gone by the
    time this runs is caught by comparing getppid(). Also used by ``--workers`` replay
    processes (replay/workers.py, with SIGTERM: the shard stops as if interrupted)."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the EOF check below still applies later
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)


def warm_plan(model, shapes, max_batch: int) -> tuple[list, dict]:
    """The buckets to warm for ``shapes`` and, per bucket, the most new tokens asked of it."""
    buckets = model.policy.buckets_for(shapes, max_batch)
    most: dict = {}
    for b, s, n in shapes:
        try:
            k = model.bucket(b, s, n)
        except ValueError:
            continue
        most[k] = max(most.get(k, 0), n)
    new_by_bucket = {k: most.get(k, k.new_cap) for k in buckets}
    usable = []
    for k in buckets:
        try:  # a bucket the model cannot run (e.g. beyond its positions) is not warmed
            model.bucket(k.batch, k.seq, new_by_bucket[k])
        except ValueError:
            continue
        usable.append(k)
    return usable, new_by_bucket


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the dispatcher
    die_with_parent(int(argv[argv.index("--parent") + 1]) if "--parent" in argv else None)
    fd = int(argv[argv.index("--fd") + 1])
    conn = Connection(fd)
    send_lock = threading.Lock()

    def send(msg) -> None:
        with send_lock:
            conn.send(msg)

    try:
        kind, cfg = conn.recv()
    except (EOFError, OSError):
        return 0
    assert kind == "init", kind
    try:
        import torch

        from traceforge.backends.resident.executor import Executor, Job

        if cfg["device"] == "cpu":
            # CPU workers compete with the dispatcher for the same cores. At equal priority the
            # pacer waited for a core whenever the workers were busy: on the 2-core demo
            # machine send lag p99 rose from 8 ms (no worker busy) to 297 ms (3 busy)
            # (docs/replay.md, "CPU workers"). Lower priority lets the pacer in at once; the
            # contention then shows where it belongs, in the workers' service times.
            if cfg.get("cpu_nice"):
                os.nice(cfg["cpu_nice"])
            if cfg.get("cpu_sched_idle") and hasattr(os, "SCHED_IDLE"):
                # Nice alone still let a busy worker keep the core for ~ms after the pacer
                # woke (send lag p99 3.2 ms in the demo at load 1.0): SCHED_IDLE tasks are
                # preempted at once by any normal task. Threads torch starts later inherit it.
                with contextlib.suppress(OSError):
                    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            if cfg.get("cpu_threads"):
                torch.set_num_threads(cfg["cpu_threads"])
                # no idle inter-op pool per worker; RuntimeError: already set, keep going
                with contextlib.suppress(RuntimeError):
                    torch.set_num_interop_threads(1)
        loaded, info = build_resident(cfg["models"], cfg["device"], cfg["seed"],
                                      cfg.get("serving"),
                                      status=lambda line: send(("status", line)))
    except Exception as exc:
        send(("fail", f"{type(exc).__name__}: {exc}".replace("\n", " ")[:1000]))
        return 1

    executor = Executor(loaded, t0_ns=cfg["t0_ns"], worker=cfg["worker"],
                        on_result=lambda rid, fields: send(("result", rid, fields)),
                        batch_id_base=cfg["batch_id_base"], max_batch=cfg["max_batch"],
                        max_wait_ms=cfg["max_wait_ms"],
                        # time-sliced contexts: an idle stream's request can wait for its slice
                        idle_start_exact=cfg.get("mode") != "timeslice")

    def reader() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the dispatcher is gone: never outlive it
            tag = msg[0]
            if tag == "job":
                executor.put(Job(*msg[1]))
            elif tag == "ping":
                send(("pong", msg[1]))
            elif tag == "stop":
                executor.stop()
                return

    threading.Thread(target=reader, name="worker-reader", daemon=True).start()
    cuda_mem = None
    if cfg["device"].startswith("cuda"):
        cuda_mem = int(torch.cuda.memory_allocated())
    send(("ready", {"pid": os.getpid(), "models": info, "cuda_memory_allocated": cuda_mem}))
    executor.run_forever()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
