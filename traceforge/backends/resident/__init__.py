"""The resident backend: zoo models kept loaded on one device, shared in one of four modes.

    exclusive   one process (the dispatcher's), one executor thread: one request at a time across
                all models — the no-sharing baseline
    streams     one process, one executor thread and one CUDA stream per model (threads share
                the GIL: the launch-bound throttling is measured in docs/resident.md)
    timeslice   one worker process per model, no MPS: the GPU time-slices between contexts
    mps         one worker process per model as clients of traceforge's own MPS daemon, with
                optional per-model CUDA_MPS_ACTIVE_THREAD_PERCENTAGE (--sm-percent)

Every mode uses :class:`~traceforge.backends.resident.executor.Executor` (FIFO + dynamic
batching + CUDA-event timing + NVTX ranges), so ``exclusive``/``streams``/``timeslice`` on
``--device cpu`` with tiny models exercise the GPU code path's logic in CI.

``from_options(opts)`` validates everything it can before a run directory exists (bad flags,
CUDA missing: BadInput, exit 2); ``start`` checks that the resident set fits in free GPU memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from traceforge.backends.resident.executor import Job
from traceforge.errors import BadInput
from traceforge.record.manifest import package_versions
from traceforge.replay.protocol import ModelInfo, Outcome, Request

MODES = ("exclusive", "timeslice", "mps", "streams")
MAX_BATCH = 1024  # --max-batch: requests per dynamic batch
PROCESS_MODES = ("timeslice", "mps")
# Per-process CUDA context + allocator slack + activations, counted against free memory on top
# of the weights (an H100 context with cuBLAS workspaces is ~0.5 GiB).
PER_PROCESS_OVERHEAD_BYTES = 1 << 30
WORKER_START_TIMEOUT_S = 600.0  # silence while a worker starts (its progress lines reset it)
PING_SAMPLES = 200
# CPU worker processes run at this niceness so the dispatcher's pacer gets a core the moment it
# needs one (worker.py explains the measurement; docs/replay.md "CPU workers").
CPU_WORKER_NICE = 10


def cpu_worker_priority() -> tuple[int, bool]:
    """(niceness, SCHED_IDLE) of CPU worker processes: CPU_WORKER_NICE and SCHED_IDLE unless
    ``TRACEFORGE_CPU_WORKER_NICE`` (0-19) / ``TRACEFORGE_CPU_SCHED_IDLE=0`` say otherwise. A
    machine busy with other work starves low-priority workers (the test suite's parallel
    phase turns both off: a 10 s resident test took 111 s behind the other test processes)."""
    text = os.environ.get("TRACEFORGE_CPU_WORKER_NICE")
    nice = CPU_WORKER_NICE
    if text is not None:
        try:
            nice = int(text)
        except ValueError:
            nice = -1
        if not 0 <= nice <= 19:
            raise BadInput("must be an integer from 0 to 19", key="TRACEFORGE_CPU_WORKER_NICE",
                           value=text)
    idle = os.environ.get("TRACEFORGE_CPU_SCHED_IDLE", "1")
    if idle not in ("0", "1"):
        raise BadInput("must be 0 or 1", key="TRACEFORGE_CPU_SCHED_IDLE", value=idle)
    return nice, idle == "1"


def from_options(opts: dict[str, Any]) -> ResidentBackend:
    """Validate the CLI options (see INTERFACES.md) and return an unstarted backend."""
    from traceforge.gpu.cuda import parse_device, require_cuda
    from traceforge.zoo import get_entry

    mode = opts.get("mode") or "exclusive"
    if mode not in MODES:
        raise BadInput("unknown mode", key="--mode", value=mode, allowed=", ".join(MODES))
    device = opts.get("device") or "cpu"
    kind, _ = parse_device(device)
    if kind == "cpu":
        cpu_worker_priority()  # a bad environment value: refused before anything starts
    max_batch = 1 if opts.get("max_batch") is None else opts["max_batch"]
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise BadInput("must be an integer >= 1", key="--max-batch", value=max_batch)
    if max_batch > MAX_BATCH:
        # pre-warm runs every batch bucket up to max_batch x the largest batch: 99999999999
        # warmed 114 buckets up to b524288 (16.6 GB on the CPU, still going after 10 minutes)
        raise BadInput(f"must be <= {MAX_BATCH} (vLLM's default max_num_seqs is 256)",
                       key="--max-batch", value=max_batch)
    max_wait_ms = opts.get("max_wait_ms") or 0.0
    if not isinstance(max_wait_ms, (int, float)) or not 0 <= max_wait_ms < float("inf"):
        raise BadInput("must be a number >= 0", key="--max-wait-ms", value=max_wait_ms)
    max_wait_ms = float(max_wait_ms)
    from traceforge.limits import check_seconds

    check_seconds(max_wait_ms, key="--max-wait-ms", seconds=max_wait_ms / 1e3)
    sm_percent = dict(opts.get("sm_percent") or {})
    for model, pct in sm_percent.items():
        if not isinstance(pct, int) or not 1 <= pct <= 100:
            raise BadInput("must be an integer percentage 1..100", key=f"--sm-percent {model}",
                           value=pct)
    if sm_percent and mode != "mps":
        raise BadInput("--sm-percent applies only to --mode mps", key="--sm-percent",
                       value=",".join(f"{m}={p}" for m, p in sm_percent.items()))
    zoo = dict(opts.get("zoo") or {})
    for model, entry in zoo.items():
        get_entry(entry, key=f"--zoo {model}")
    if mode == "mps":
        require_cuda(device if kind == "cuda" else "cpu", why="--mode mps")
        if shutil.which("nvidia-cuda-mps-control") is None:
            raise BadInput("nvidia-cuda-mps-control is not on PATH", key="--mode", value=mode)
    elif kind == "cuda":
        require_cuda(device)
    from traceforge.zoo import COMPILE_MODES
    from traceforge.zoo.buckets import parse_buckets

    compile_ = opts.get("compile") or ("graphs" if kind == "cuda" else "eager")
    if compile_ not in COMPILE_MODES:
        raise BadInput("unknown compile variant", key="--compile", value=compile_,
                       allowed=", ".join(COMPILE_MODES))
    if compile_ in ("graphs", "compiled") and kind != "cuda":
        raise BadInput("CUDA graphs need a CUDA device; on the CPU use --compile eager",
                       key="--compile", value=compile_)
    seq_buckets = parse_buckets(opts.get("seq_buckets"))
    return ResidentBackend(mode=mode, device=device, max_batch=max_batch,
                           max_wait_ms=max_wait_ms, sm_percent=sm_percent, zoo=zoo,
                           telemetry=bool(opts.get("telemetry", True)),
                           run_dir=opts.get("run_dir"), seed=int(opts.get("seed") or 0),
                           compile=compile_, seq_buckets=seq_buckets,
                           prewarm=bool(opts.get("prewarm", True)),
                           status=opts.get("status"), inline=bool(opts.get("inline", True)))


class ResidentBackend:
    name = "resident"

    def __init__(self, *, mode: str = "exclusive", device: str = "cpu", max_batch: int = 1,
                 max_wait_ms: float = 0.0, sm_percent: dict[str, int] | None = None,
                 zoo: dict[str, str] | None = None, telemetry: bool = True,
                 run_dir: str | os.PathLike | None = None, seed: int = 0,
                 compile: str | None = None, seq_buckets: list[int] | None = None,
                 prewarm: bool = True, status: Any = None, inline: bool = True) -> None:
        from traceforge.gpu.cuda import parse_device

        self.mode = mode
        kind, index = parse_device(device)
        self.is_cuda = kind == "cuda"
        self.cuda_index = index or 0
        # one spelling everywhere (torch.cuda.set_device needs "cuda:N")
        self.device = f"cuda:{self.cuda_index}" if self.is_cuda else "cpu"
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.sm_percent = sm_percent or {}
        self.zoo_overrides = zoo or {}
        self.telemetry_enabled = telemetry
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.compile = compile or ("graphs" if self.is_cuda else "eager")
        self.seq_buckets = seq_buckets  # --seq-buckets (None: each model's defaults)
        self.prewarm = prewarm
        self._start_cancel: threading.Event | None = None  # set: in-process loading stops
        # In-process modes: an idle executor's graph-captured request is launched and polled by
        # the event loop's thread itself (Executor.try_inline): no thread hand-off either way.
        # Eager forwards never launch without waiting (LoadedModel.can_launch): not enabled.
        self.inline = (inline and self.is_cuda and self.compile != "eager" and max_batch == 1
                       and mode not in PROCESS_MODES)
        self._serving: dict[str, Any] = {}
        # status(line): progress while models load (the CLI prints it to stderr), else silent
        self.status = status or (lambda line: None)
        self.models: dict[str, str] = {}  # trace model -> zoo entry
        self._executors: dict[str, Any] = {}  # trace model -> Executor (in-process modes)
        self._workers: dict[str, Any] = {}  # trace model -> WorkerProcess (process modes)
        self._pending: dict[int, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mps = None
        self._sampler = None
        self._info: dict[str, Any] = {}
        self._stopped = False

    # -- start -------------------------------------------------------------------------------
    async def start(self, models: list[ModelInfo], clock) -> None:
        from traceforge.zoo import get_entry, resident_bytes

        self._loop = asyncio.get_running_loop()
        self.clock = clock
        for info in models:
            entry = self.zoo_overrides.get(info.name) or info.zoo or info.name
            get_entry(entry, key=f"--zoo {info.name}")
            self.models[info.name] = entry
        self._serving = {
            "compile": self.compile, "prewarm": self.prewarm, "max_batch": self.max_batch,
            "batch_buckets": self.max_batch > 1,
            "seq_buckets": {i.name: (getattr(i, "seq_buckets", None) or self.seq_buckets)
                            for i in models},
            "shapes": {i.name: [tuple(x) for x in (getattr(i, "shapes", None) or [])]
                       for i in models}}
        for i in models:  # buckets too small for the trace: every such request would fail
            own = getattr(i, "seq_buckets", None)
            buckets = own or self.seq_buckets
            longest = max((s for _, s, _ in self._serving["shapes"][i.name]), default=0)
            if buckets and longest > max(buckets):
                raise BadInput(f"the trace asks {i.name} for seq_len up to {longest}, over the "
                               f"largest bucket {max(buckets)}: every such request would be an "
                               "error row", key=(f"models.{i.name}.seq_buckets" if own
                                                 else "--seq-buckets"),
                               value=",".join(map(str, buckets)))
        unknown = sorted(set(self.sm_percent) - set(self.models))
        if unknown:
            raise BadInput("not a model of this trace", key="--sm-percent", value=unknown[0],
                           allowed=", ".join(self.models))
        if self.is_cuda:
            self._check_fits(resident_bytes(list(self.models.values()), self.device))
        self._info["gpu"] = self._gpu_facts()
        _versions()  # read package metadata now, not when the dispatcher is about to send
        self._start_telemetry()
        self.status(f"loading {len(self.models)} model(s) on {self.device} ({self.mode}): "
                    + ", ".join(f"{n} = {z}" for n, z in self.models.items()))
        started = time.perf_counter()
        if self.mode in PROCESS_MODES:
            await self._start_workers()
        else:
            await self._start_in_process_cancellable()
            if self.inline:
                import torch

                # try_inline records events and launches from this (the loop's) thread: its
                # current device must be the models' one
                torch.cuda.set_device(self.cuda_index)
            self.status(f"    all models ready in {time.perf_counter() - started:.1f} s")
        self._record_prewarm()

    def _record_prewarm(self) -> None:
        """run.json: the buckets each model warmed, the time it took, and when start ended
        (on the run clock; the schedule begins after it)."""
        models = self._info.get("models") or {}
        warmed = {m: (i.get("prewarm") or {}).get("buckets") for m, i in models.items()}
        self._info["prewarm"] = {
            "enabled": self.prewarm, "compile": self.compile,
            "seconds": {m: (i.get("prewarm") or {}).get("seconds") for m, i in models.items()},
            "buckets": warmed, "ready_ns": self.clock.now()}

    def _check_fits(self, weights: int) -> None:
        from traceforge.gpu.cuda import free_memory_bytes

        processes = len(self.models) if self.mode in PROCESS_MODES else 1
        need = weights + processes * PER_PROCESS_OVERHEAD_BYTES
        free = free_memory_bytes(self.cuda_index)
        if free is None:
            import torch

            free = torch.cuda.mem_get_info(self.cuda_index)[0]
        self._info["memory_check"] = {"need_bytes": need, "free_bytes": free,
                                      "weights_bytes": weights, "processes": processes}
        if need > free:
            names = ", ".join(f"{m}={z}" for m, z in self.models.items())
            raise BadInput(
                f"resident set ({names}) needs {need / 2**30:.1f} GiB "
                f"({weights / 2**30:.1f} GiB weights + {processes} x 1 GiB per-process "
                f"overhead) but {self.device} has {free / 2**30:.1f} GiB free",
                key="--zoo", value=",".join(self.models.values()))

    def _gpu_facts(self) -> dict[str, Any]:
        if not self.is_cuda:
            return {}
        from traceforge.gpu.cuda import gpu_info

        return gpu_info(self.cuda_index)

    def _start_telemetry(self) -> None:
        if not self.is_cuda:
            return
        if not self.telemetry_enabled:
            self._live("telemetry", {"note": "disabled (--no-telemetry)"})
            return
        from traceforge.gpu.telemetry import TelemetrySampler

        self._sampler = TelemetrySampler(self.cuda_index, self.clock)
        self._sampler.start()
        self._live("telemetry", {"note": self._sampler.note or "sampling until stop()"})

    async def _start_in_process_cancellable(self) -> None:
        """Load and pre-warm in a thread of its own. Cancelled (Ctrl-C, SIGTERM: the replay's
        task), it asks the thread to stop after the bucket it is warming and waits for that,
        then re-raises. A daemon thread, not asyncio's executor: a second Ctrl-C leaves at once
        instead of the interpreter joining the executor until pre-warm ends."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        self._start_cancel = threading.Event()

        def settle(exc: BaseException | None) -> None:
            if not done.done():
                if exc is None:
                    done.set_result(None)
                else:
                    done.set_exception(exc)

        def body() -> None:
            try:
                self._start_in_process()
                outcome = None
            except BaseException as exc:  # handed to the loop
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, outcome)

        threading.Thread(target=body, name="resident-start", daemon=True).start()
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            self._start_cancel.set()
            self.status("    interrupted: loading stops after the bucket it is warming")
            with contextlib.suppress(Exception):
                await done
            raise

    def _start_in_process(self) -> None:
        import torch

        from traceforge.backends.resident.executor import Executor
        from traceforge.backends.resident.worker import build_resident

        if not self.is_cuda and self.mode == "streams":
            # One executor thread per model on a few cores: split torch's intra-op threads.
            torch.set_num_threads(max(1, torch.get_num_threads() // max(1, len(self.models))))
        from traceforge.errors import RunFailure
        from traceforge.zoo import BucketDoesNotFit

        try:
            loaded, info = build_resident(self.models, self.device, self.seed, self._serving,
                                          status=self.status,
                                          cancel=self._start_cancel)
        except BucketDoesNotFit as exc:
            raise RunFailure(str(exc)) from None
        self._info["models"] = info
        # live: stop() adds how many requests were served inline
        self._live("inline", {"enabled": self.inline})
        common = {"t0_ns": self.clock.t0_ns, "on_result": self._on_thread_result,
                  "max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms}
        if self.mode == "exclusive":
            executor = Executor(loaded, worker="exclusive", **common)
            self._executors = dict.fromkeys(loaded, executor)
            executor.start_thread()
            return
        for i, (name, model) in enumerate(loaded.items()):
            stream = torch.cuda.Stream(device=self.device) if self.is_cuda else None
            executor = Executor({name: model}, worker=f"stream-{name}",
                                batch_id_base=i << 40, stream=stream, **common)
            self._executors[name] = executor
            executor.start_thread()

    async def _start_workers(self) -> None:
        from traceforge.backends.resident.process import WorkerProcess
        from traceforge.gpu.mps import MpsDaemon, _child_env

        base_env = _child_env()
        for var in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY",
                    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"):
            base_env.pop(var, None)  # timeslice must not join anyone's MPS server
        if self.mode == "mps":
            self._mps = MpsDaemon()
            await asyncio.to_thread(self._mps.start)
            self._live("mps", self._mps.describe())
        cpu_threads = max(1, len(os.sched_getaffinity(0)) // max(1, len(self.models)))
        cpu_nice, cpu_sched_idle = cpu_worker_priority()
        for i, (name, zoo) in enumerate(self.models.items()):
            env = dict(base_env)
            if self._mps is not None:
                env = self._mps.apply_client_env(env, self.sm_percent.get(name))
            cfg = {"models": {name: zoo}, "device": self.device, "seed": self.seed + i,
                   "t0_ns": self.clock.t0_ns, "worker": f"{self.mode}-{name}",
                   "mode": self.mode,
                   "batch_id_base": i << 40, "max_batch": self.max_batch,
                   "max_wait_ms": self.max_wait_ms, "cpu_threads": cpu_threads,
                   "cpu_nice": cpu_nice, "cpu_sched_idle": cpu_sched_idle,
                   "serving": {**self._serving,
                               "seq_buckets": {name: self._serving["seq_buckets"].get(name)},
                               "shapes": {name: self._serving["shapes"].get(name)}}}
            self._workers[name] = WorkerProcess(name, cfg, env, status=self.status)
        self._info["workers"] = {}
        # Models load in parallel: each worker builds on the device concurrently.
        started = time.perf_counter()

        async def start(w) -> None:
            await w.start(WORKER_START_TIMEOUT_S)
            self.status(f"    {w.name} ({self.models[w.name]}) ready in "
                        f"{time.perf_counter() - started:.1f} s (worker pid {w.pid})")

        await asyncio.gather(*(start(w) for w in self._workers.values()))
        self._info["models"] = {n: {**w.info["models"][n], "pid": w.pid}
                                for n, w in self._workers.items()}
        self._live("workers", self._worker_states())
        if self._mps is not None:
            pids = {n: w.pid for n, w in self._workers.items()}
            self._info["mps_attach"] = await asyncio.to_thread(
                self._mps.verify_attached, pids, self.cuda_index)
        rtts: list[int] = []
        for worker in self._workers.values():
            rtts += await worker.ping_rtt_ns(PING_SAMPLES)
        self._info["transport"] = {
            "kind": "unix socketpair, multiprocessing Connection framing, pickled tuples",
            "ping_rtt_us": _percentiles_us(rtts)}

    # -- submit ------------------------------------------------------------------------------
    def _on_thread_result(self, request_id: int, fields: dict[str, Any]) -> None:
        # Executor thread → event loop: one thread-safe wake-up per result.
        self._loop.call_soon_threadsafe(self._resolve, request_id, fields)

    def _resolve(self, request_id: int, fields: dict[str, Any]) -> None:
        fut = self._pending.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(fields)

    async def submit(self, request: Request) -> Outcome:
        model = request.model
        if model not in self.models:
            return Outcome(status="error", error=f"model {model!r} is not resident")
        rid = request.request_id
        if self.mode in PROCESS_MODES:
            worker = self._workers[model]
            fut = worker.submit((rid, model, request.batch_size, request.seq_len,
                                 request.max_new_tokens))
            try:
                fields = await fut
            finally:
                worker.forget(rid)
        else:
            fut = self._loop.create_future()
            self._pending[rid] = fut
            executor = self._executors[model]
            job = Job(rid, model, request.batch_size, request.seq_len, request.max_new_tokens)
            if not (self.inline and executor.try_inline(job, self._loop, self._resolve)):
                executor.put(job)
            try:
                fields = await fut
            finally:
                self._pending.pop(rid, None)
        return Outcome(**fields)

    # -- stop --------------------------------------------------------------------------------
    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            await self._stop_executors()
            if self._workers:
                await asyncio.gather(*(w.stop() for w in self._workers.values()),
                                     return_exceptions=True)
                self._live("workers", self._worker_states())
                self._keep_worker_logs()
        finally:
            if self._mps is not None:
                await asyncio.to_thread(self._mps.quit)
                self._live("mps", self._mps.describe())
            self._finish_telemetry()
            for w in self._workers.values():
                w.close_log()

    async def _stop_executors(self) -> None:
        executors = {id(e): e for e in self._executors.values()}.values()
        stopped = {"status": "error", "error": "backend stopped before this request ran"}
        for executor in executors:
            for job in executor.stop():
                self._resolve(job.request_id, {**stopped, "worker": executor.worker})
        for executor in executors:
            if executor.thread is not None:
                await asyncio.to_thread(executor.thread.join, 60)
        # an inline request still on the device completes through the loop's polls
        deadline = time.monotonic() + 60
        while any(e.inline_in_flight for e in executors) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        if "inline" in self._info:
            self._live("inline", {"enabled": self.inline,
                                  "requests": sum(e.inline_count for e in executors)})
        for fut in self._pending.values():
            if not fut.done():
                fut.set_result(stopped)
        if self._executors and self.is_cuda:
            self._executors.clear()
            import torch

            torch.cuda.empty_cache()

    def _keep_worker_logs(self) -> None:
        if self.run_dir is None:
            return
        for i, w in enumerate(self._workers.values()):
            text = w.log_text()
            if text:
                with contextlib.suppress(OSError):
                    (self.run_dir / "workers").mkdir(parents=True, exist_ok=True)
                    (self.run_dir / "workers" / f"worker-{i}.log").write_text(text)

    def _finish_telemetry(self) -> None:
        if self._sampler is None:
            return
        self._sampler.stop()
        summary = self._sampler.summary()
        if self.run_dir is not None and self._sampler.available:
            self._sampler.write(self.run_dir / "telemetry.parquet")
            summary["path"] = "telemetry.parquet"
        elif self._sampler.available:
            summary["note"] = "no run directory bound: telemetry kept in memory only"
        self._live("telemetry", summary)

    def telemetry_table(self):
        return None if self._sampler is None else self._sampler.table()

    # -- describe ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Settings and environment for run.json.

        The "telemetry", "mps", "workers" and "inline" sub-dicts are *live*: created at start
        and updated in place by ``stop()``, so a manifest that stored this dict at start (a
        shallow copy) still writes the end-of-run facts (telemetry summary, daemon quit, worker
        exits, requests served inline).
        """
        out: dict[str, Any] = {
            "backend": self.name, "mode": self.mode, "device": self.device,
            "max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms,
            "compile": self.compile, "seq_buckets": self.seq_buckets,
            "zoo": dict(self.models), "versions": _versions(), **self._info,
        }
        if self.mode == "mps":
            out["sm_percent"] = {m: self.sm_percent.get(m, 100) for m in self.models}
        return out

    def _live(self, key: str, values: dict[str, Any]) -> None:
        live = self._info.setdefault(key, {})
        live.clear()
        live.update(values)

    def _worker_states(self) -> dict[str, Any]:
        return {n: {"pid": w.pid, "end": w.dead_reason} for n, w in self._workers.items()}

    def worker_pids(self) -> dict[str, int]:
        return {n: w.pid for n, w in self._workers.items() if w.pid is not None}


@functools.cache
def _versions() -> dict[str, str | None]:
    # importlib.metadata scans site-packages (~0.1 s in a large environment): once per process.
    versions: dict[str, str | None] = package_versions(("torch", "transformers", "nvidia-ml-py"))
    if "torch" in sys.modules:
        versions["torch_cuda"] = sys.modules["torch"].version.cuda
    return versions


def _percentiles_us(values_ns: list[int]) -> dict[str, float]:
    if not values_ns:
        return {}
    q = statistics.quantiles(values_ns, n=100, method="inclusive")
    return {"p50": round(q[49] / 1e3, 1), "p99": round(q[98] / 1e3, 1),
            "max": round(max(values_ns) / 1e3, 1), "n": len(values_ns)}

