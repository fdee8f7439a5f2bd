"""What the host CPU is, as far as kernels care: vendor, family/model/stepping, the ISA
extensions that select kernels, cache sizes, and the cores this process may use.

The marketing name is not enough: behind a hypervisor both Zen 3 (AVX2, MLAS blocks of 8
channels) and Zen 5 (AVX-512, blocks of 16) read "AMD EPYC". Family and model numbers and the
flags tell them apart.
"""
from __future__ import annotations

import os
import platform

import numpy as np

# Flags that change which kernels a runtime picks (MLAS, oneDNN, XNNPACK), in a fixed order so
# identities compare as lists. Kept short: flags that never select a kernel would only make
# tables from equivalent hosts look different.
KERNEL_FLAGS = ("avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "amx_tile", "amx_int8", "amx_bf16", "avx_vnni", "avx2", "fma", "avx", "sse4_2",
                "asimd", "asimddp", "sve", "sve2", "neon")


def _cpuinfo_fields(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def cache_sizes_bytes() -> dict[int, int]:
    """{cache level: size in bytes of one instance} for data/unified caches, from sysfs."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    sizes: dict[int, int] = {}
    try:
        entries = os.listdir(base)
    except OSError:
        return sizes
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "level")) as f:
                level = int(f.read().strip())
            with open(os.path.join(base, entry, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip().upper()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            sizes[level] = int(text.rstrip("KMG")) * mult
        except ValueError:
            continue
    return sizes


def last_level_cache_bytes(default: int = 32 << 20) -> int:
    """Size of the largest CPU cache, for sizing a cache-eviction buffer."""
    sizes = cache_sizes_bytes()
    return max(sizes.values()) if sizes else default


COLD_LEVELS = ("llc", "l2")
# A model whose weights (as the runtime holds them) take at most this share of the last-level
# cache keeps them there from one inference to the next (the rest of the cache is other
# tenants' and activations').
LLC_SHARE_FOR_WEIGHTS = 0.5


def cold_level_for(model_weight_bytes: int, llc_bytes: int | None = None) -> str:
    """Which cache a layer's weights come from inside the whole model, run back to back:
    "llc" (memory: the model's weights do not stay in the last-level cache) or "l2" (the
    last-level cache: they do, and only the core's own cache is refilled by other layers).
    Measured on an Intel Xeon (family 6 model 207, 260 MB L3): resnet18 at 64x64 (45 MB of
    weights) timed layer by layer from memory summed to 1.84x the whole model and its
    pruned copies measured up to 1.8x the table's prediction; on Zen 4 (32 MB L3) the same
    weights do not fit and every layer comes from memory."""
    llc = last_level_cache_bytes() if llc_bytes is None else llc_bytes
    return "l2" if model_weight_bytes <= LLC_SHARE_FOR_WEIGHTS * llc else "llc"


class CpuCacheEvictor:
    """Evicts a layer's weights from the CPU caches by reading a buffer twice the size of the
    cache level given ("llc": the last level, the weights come from memory; "l2": the core's
    private cache, they come from the last level), as they would inside a whole model."""

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def evict(self, level: str = "llc") -> None:
        if level not in COLD_LEVELS:
            raise ValueError(f"cache level must be one of {COLD_LEVELS}, not {level!r}")
        buf = self._buffers.get(level)
        if buf is None:
            size = last_level_cache_bytes() if level == "llc" else \
                cache_sizes_bytes().get(2, 1 << 20)
            buf = self._buffers[level] = np.ones(2 * size // 8, dtype=np.float64)
        float(buf.sum())

    def release(self) -> None:
        self._buffers.clear()


def available_memory_bytes(meminfo_path: str = "/proc/meminfo") -> int | None:
    """Memory the kernel could give this process now (MemAvailable), or None if unknown."""
    try:
        with open(meminfo_path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_identity(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """The CPU fields of a latency table's identity (``None`` where the OS does not say)."""
    info = _cpuinfo_fields(cpuinfo_path)
    flags = set(info.get("flags", info.get("Features", "")).split())
    arch = platform.machine()
    if "asimd" in flags:  # Arm's Advanced SIMD is NEON (only Arm cpuinfo says asimd)
        flags.add("neon")
    caches = cache_sizes_bytes()
    return {
        "cpu_model": info.get("model name") or platform.processor() or arch,
        "cpu_vendor": info.get("vendor_id") or info.get("CPU implementer"),
        "cpu_family": _int_or_none(info.get("cpu family") or info.get("CPU architecture")),
        "cpu_model_number": _int_or_none(info.get("model") or info.get("CPU part")),
        "cpu_stepping": _int_or_none(info.get("stepping") or info.get("CPU revision")),
        "isa": [f for f in KERNEL_FLAGS if f in flags],
        "cache_l2_bytes": caches.get(2),
        "cache_l3_bytes": caches.get(3),
        "cpus_available": cpus_available(),
        "machine": arch,
    }


def machine_class(ident: dict) -> str:
    """One line naming a machine class for figures and reports, e.g. "AMD EPYC (family 25
    model 17, avx512f, avx2)"."""
    isa = [f for f in ident.get("isa") or [] if f in ("avx512f", "avx512_vnni", "avx512_bf16",
                                                       "amx_tile", "avx2", "sve", "neon")]
    fam, mod = ident.get("cpu_family"), ident.get("cpu_model_number")
    where = f"family {fam} model {mod}" if fam is not None else "family unknown"
    return f"{ident.get('cpu_model', '?')} ({where}; {', '.join(isa) or 'no vector ISA'})"
