"""``portable-ep doctor``: what this machine can run, and why not."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from portable_ep.backends.base import ProviderUnavailable
from portable_ep.backends.cpu_features import detect_cpu_features
from portable_ep.backends.registry import default_registry


def doctor_report() -> dict:
    cpu = detect_cpu_features()
    registry = default_registry()
    providers = []
    for name in registry.names():
        try:
            availability = registry.get(name).probe()
            entry = {"name": name, "ok": availability.ok, "reason": availability.reason,
                     "devices": list(availability.devices), "capabilities": list(availability.capabilities)}
        except ProviderUnavailable as exc:
            entry = {"name": name, "ok": False, "reason": str(exc), "devices": [], "capabilities": []}
        entry["summary"] = registry.describe(name)
        providers.append(entry)
    # An emulated device (npu without an NPU) checks a contract; it is no reason to put it first.
    usable = [p["name"] for p in providers if p["ok"] and "emulated" not in p["devices"]]
    preference = ["cuda", "rocm", "npu", "openvino", "cpu"]
    chain = [n for n in preference if n in usable] + sorted(n for n in usable if n not in preference)
    return {
        "cpu": {
            "vendor": cpu.vendor,
            "model": cpu.model_name,
            "amx_bf16": cpu.amx_bf16,
            "amx_int8": cpu.amx_int8,
            "avx512_bf16": cpu.avx512_bf16,
            "avx512_vnni": cpu.avx512_vnni,
            "native_bf16": cpu.native_bf16,
        },
        "providers": providers,
        "recommended_chain": ",".join(chain),
    }


def print_doctor_report(report: dict, console: Console) -> None:
    cpu = report["cpu"]
    flags = ", ".join(k for k in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni") if cpu[k]) or "none of AMX / AVX-512 BF16 / VNNI"
    console.print(f"CPU: {cpu['vendor']} {cpu['model']} -- {flags}; native bf16: {'yes' if cpu['native_bf16'] else 'no'}")
    table = Table(title="providers")
    for column in ("provider", "usable", "devices", "why not / what it is"):
        table.add_column(column)
    for p in report["providers"]:
        table.add_row(p["name"], "yes" if p["ok"] else "no", escape(", ".join(p["devices"])), escape(p["reason"] or p["summary"]))
    console.print(table)
    console.print(f"recommended chain: {report['recommended_chain'] or '(none usable)'}")
