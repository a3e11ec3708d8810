"""``portable-ep doctor``: what this machine can run, and why not.

Each unusable provider's reason is sorted into what would fix it: a missing
package (install), a missing device (other hardware, or pass it into the container),
or a driver (the device is on the PCI bus but no kernel driver is bound).
"""
from __future__ import annotations

from typing import List

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from portable_ep.backends.base import ProviderUnavailable
from portable_ep.backends.cpu_features import detect_cpu_features
from portable_ep.backends.hardware import Accelerator, probe_accelerators, vendor_tool_names
from portable_ep.backends.registry import default_registry

PREFERENCE = ["cuda", "rocm", "npu", "openvino", "cpu"]
# Which accelerator kind each hardware provider needs, and the driver that makes it usable.
NEEDS = {"cuda": ("nvidia-gpu", "the NVIDIA driver (nvidia kernel module)"),
         "rocm": ("amd-gpu", "the amdgpu kernel driver with ROCm (/dev/kfd)"),
         "npu": ("npu", "the NPU driver (intel_vpu or amdxdna) and OpenVINO's NPU plugin")}


def reason_kind(reason: str) -> str:
    if not reason:
        return ""
    lowered = reason.lower()
    if lowered.startswith("package missing") or "is not installed" in lowered or "could not be imported" in lowered:
        return "package"
    if lowered.startswith("no device"):
        return "device"
    if lowered.startswith("driver"):
        return "driver"
    return "other"


def _driverless(name: str, reason: str, accelerators: List[Accelerator]) -> str:
    """A 'no device' reason becomes 'driver' when the device is on the bus without its driver."""
    need = NEEDS.get(name)
    if need is None or reason_kind(reason) != "device":
        return reason
    stranded = [a for a in accelerators if a.kind == need[0] and not a.usable]
    if not stranded:
        return reason
    where = ", ".join(a.location for a in stranded)
    return f"driver: {stranded[0].name} on the PCI bus at {where} has no kernel driver bound; install {need[1]}"


def _bf16_via(cpu) -> str:
    if cpu.amx_bf16:
        return "AMX"
    if cpu.avx512_bf16:
        return "AVX-512 BF16"
    return ""


def doctor_report(accelerators: List[Accelerator] = None) -> dict:
    cpu = detect_cpu_features()
    if accelerators is None:
        accelerators = probe_accelerators(gpu_names=vendor_tool_names)
    registry = default_registry()
    providers = []
    for name in registry.names():
        try:
            availability = registry.get(name).probe()
            entry = {"name": name, "ok": availability.ok, "reason": availability.reason,
                     "devices": list(availability.devices), "capabilities": list(availability.capabilities)}
        except ProviderUnavailable as exc:
            entry = {"name": name, "ok": False, "reason": str(exc), "devices": [], "capabilities": []}
        if not entry["ok"]:
            entry["reason"] = _driverless(name, entry["reason"], accelerators)
        entry["reason_kind"] = reason_kind(entry["reason"]) if not entry["ok"] else ""
        entry["emulated"] = "emulated" in entry["devices"]
        entry["summary"] = registry.describe(name)
        if entry["ok"]:
            # `precision: auto`'s order on this machine (openvino's depends on VNNI), with its reason.
            provider = registry.get(name)
            entry["auto_precision_order"] = list(provider.auto_precision_order({}))
            entry["auto_precision_note"] = provider.auto_precision_note({})
        providers.append(entry)
    # An emulated device (npu without an NPU) checks a contract; it is no reason to put it first.
    usable = [p["name"] for p in providers if p["ok"] and not p["emulated"]]
    chain = [n for n in PREFERENCE if n in usable] + sorted(n for n in usable if n not in PREFERENCE)
    return {
        "cpu": {
            "vendor": cpu.vendor,
            "model": cpu.model_name,
            "amx": cpu.amx_bf16 or cpu.amx_int8,
            "amx_bf16": cpu.amx_bf16,
            "amx_int8": cpu.amx_int8,
            "avx512_bf16": cpu.avx512_bf16,
            "avx512_vnni": cpu.avx512_vnni,
            "vnni": cpu.vnni,
            "native_bf16": cpu.native_bf16,
            "bf16_via": _bf16_via(cpu),
        },
        "accelerators": [a.to_json() for a in accelerators],
        "providers": providers,
        "recommended_chain": ",".join(chain),
    }


def print_doctor_report(report: dict, console: Console) -> None:
    cpu = report["cpu"]
    flags = ", ".join(k for k in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni") if cpu[k]) or "none of AMX / AVX-512 BF16 / VNNI"
    bf16 = f"yes, via {cpu['bf16_via']}" if cpu["native_bf16"] else "no (openvino bf16 unavailable)"
    console.print(f"CPU: {cpu['vendor']} {cpu['model']} -- {flags}; AMX: {'yes' if cpu['amx'] else 'no'}; native bf16: {bf16}")
    accelerators = report["accelerators"]
    if accelerators:
        table = Table(title="accelerators")
        for column in ("kind", "name", "where", "driver"):
            table.add_column(column)
        for a in accelerators:
            table.add_row(a["kind"], escape(a["name"]), escape(a["location"]), escape(a["driver"] or "none bound"))
        console.print(table)
    else:
        console.print("accelerators: no NVIDIA or AMD GPU and no NPU seen (PCI bus, /dev/accel, nvidia-smi, rocm-smi)")
    table = Table(title="providers")
    for column in ("provider", "usable", "devices", "why not / what it is"):
        table.add_column(column)
    for p in report["providers"]:
        usable = ("yes (emulated)" if p["emulated"] else "yes") if p["ok"] else f"no: {p['reason_kind']}"
        table.add_row(p["name"], usable, escape(", ".join(p["devices"])), escape(p["reason"] or p["summary"]))
    console.print(table)
    console.print(f"recommended chain: {report['recommended_chain'] or '(none usable)'}")
    orders = [f"{p['name']} {','.join(p['auto_precision_order'])}" for p in report["providers"] if p.get("auto_precision_order")]
    if orders:
        console.print(f"precision auto, fastest first on this machine: {'; '.join(orders)}")
    for p in report["providers"]:
        if p.get("auto_precision_note"):
            console.print(f"  {p['name']}: {escape(p['auto_precision_note'])}")
    if "routes" in report:
        table = Table(title="routes of the repository's models (what the export measured; see docs/bundle.md)")
        for column in ("model", "provider", "precision", "file", "route", "at load"):
            table.add_column(column)
        for r in report["routes"]:
            table.add_row(r["model"], r["provider"], r.get("precision", ""), escape(r["file"]), r["status"], escape(r["detail"]))
        console.print(table)
