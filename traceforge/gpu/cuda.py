"""Device strings, CUDA availability checks and GPU facts (name, driver, free memory) via NVML.

NVML answers without creating a CUDA context, which matters in ``mps`` mode: the dispatcher must
not hold a context of its own outside the MPS server, and it must not hold GPU memory.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

from traceforge.errors import BadInput

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(device: str, *, key: str = "--device") -> tuple[str, int | None]:
    """``cpu`` | ``cuda`` | ``cuda:N`` → (type, index); index None for cpu."""
    m = _DEVICE_RE.match(device or "")
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        raise BadInput("not a device", key=key, value=device, allowed="cpu, cuda, cuda:N")
    if m.group(1) == "cpu":
        return "cpu", None
    return "cuda", int(m.group(2) or 0)


def require_cuda(device: str, *, key: str = "--device", why: str = "") -> int:
    """Raise BadInput unless CUDA and the indexed GPU exist here; returns the index."""
    kind, index = parse_device(device, key=key)
    if kind != "cuda":
        raise BadInput(f"{why} needs a CUDA device (--device cuda)".strip(), key=key,
                       value=device)
    try:
        import torch
    except ImportError as exc:
        raise BadInput("torch is not installed (pip install 'traceforge[resident]')",
                       key=key, value=device) from exc
    if not torch.cuda.is_available():
        build = torch.version.cuda or "a CPU-only build"
        raise BadInput(f"CUDA is not available on this machine (torch {torch.__version__}, "
                       f"{build}){' for ' + why if why else ''}", key=key, value=device)
    count = torch.cuda.device_count()
    if index >= count:
        raise BadInput(f"this machine has {count} CUDA device(s)", key=key, value=device)
    return index


def nvml_index(cuda_index: int) -> int:
    """The NVML index of CUDA device ``cuda_index`` (honours a numeric CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if cuda_index < len(ids) and ids[cuda_index].isdigit():
            return int(ids[cuda_index])
    return cuda_index


def nvml():
    """The pynvml module, initialised, or None when nvidia-ml-py or the driver is absent."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def gpu_info(cuda_index: int) -> dict[str, Any]:
    """Name, driver, memory and compute mode of one GPU, for run.json."""
    info: dict[str, Any] = {"cuda_index": cuda_index}
    nv = nvml()
    if nv is None:
        info["note"] = "nvidia-ml-py or the NVIDIA driver is not available: no NVML facts"
        try:
            import torch

            info["name"] = torch.cuda.get_device_name(cuda_index)
        except Exception:
            pass
        return info
    handle = nv.nvmlDeviceGetHandleByIndex(nvml_index(cuda_index))
    mem = nv.nvmlDeviceGetMemoryInfo(handle)
    info.update(
        nvml_index=nvml_index(cuda_index),
        name=_text(nv.nvmlDeviceGetName(handle)),
        driver=_text(nv.nvmlSystemGetDriverVersion()),
        memory_total_bytes=int(mem.total),
        memory_free_bytes=int(mem.free),
    )
    for key, call in (("compute_mode", nv.nvmlDeviceGetComputeMode),
                      ("sm_clock_max_mhz",
                       lambda h: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)),
                      ("power_limit_w", lambda h: nv.nvmlDeviceGetPowerManagementLimit(h) / 1e3)):
        try:
            info[key] = call(handle)
        except Exception:
            continue
    with contextlib.suppress(Exception):
        info["cuda_driver_version"] = nv.nvmlSystemGetCudaDriverVersion()
    return info


def free_memory_bytes(cuda_index: int) -> int | None:
    nv = nvml()
    if nv is not None:
        handle = nv.nvmlDeviceGetHandleByIndex(nvml_index(cuda_index))
        return int(nv.nvmlDeviceGetMemoryInfo(handle).free)
    return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
