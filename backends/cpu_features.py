"""CPU instruction-set features that change which precisions run natively."""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from typing import FrozenSet


@dataclass(frozen=True)
class CpuFeatures:
    vendor: str
    model_name: str
    flags: FrozenSet[str]

    @property
    def amx_bf16(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def amx_int8(self) -> bool:
        return "amx_int8" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def avx512_vnni(self) -> bool:
        return "avx512_vnni" in self.flags or "avx512vnni" in self.flags

    @property
    def vnni(self) -> bool:
        """int8 dot products without saturation (VNNI or AMX); AVX2-only CPUs saturate u8*s8 sums."""
        return self.avx512_vnni or "avx_vnni" in self.flags or self.amx_int8

    @property
    def native_bf16(self) -> bool:
        """BF16 math in hardware (AMX or AVX-512 BF16), the condition for serving bf16 on CPU."""
        return self.amx_bf16 or self.avx512_bf16


def parse_cpuinfo(text: str) -> CpuFeatures:
    vendor = model = ""
    flags: FrozenSet[str] = frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return CpuFeatures(vendor or platform.machine(), model or platform.processor(), flags)


@functools.lru_cache(maxsize=1)
def detect_cpu_features() -> CpuFeatures:
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return CpuFeatures(platform.machine(), platform.processor(), frozenset())
