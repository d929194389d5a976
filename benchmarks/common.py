"""Shared by the benchmark scripts: the device record, the load average, writing reports."""
from __future__ import annotations

import json
import os
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import jax


def device_info() -> dict:
    """The device, backend, versions and host the numbers were measured on."""
    dev = jax.devices()[0]
    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    versions = {}
    for pkg in ("edgejax", "jax", "jaxlib", "optax"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"device_kind": dev.device_kind, "backend": jax.default_backend(), "device_count": jax.device_count(),
            "slug": re.sub(r"[^a-z0-9]+", "-", dev.device_kind.lower()).strip("-"), "host_cpu": cpu,
            "host_cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "versions": versions,
            "python": platform.python_version()}


def load_average() -> float | None:
    """The host's 1-minute load average (other processes competing for the cores skew timings)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def report_paths(name: str, report: dict, out_dir: Path, quick: bool) -> tuple[Path, Path]:
    """``out_dir / <name>-<device>[-quick].json`` and ``.md`` (where ``write_report`` writes)."""
    stem = f"{name}-{report['device']['slug']}" + ("-quick" if quick else "")
    return out_dir / f"{stem}.json", out_dir / f"{stem}.md"


def write_report(name: str, report: dict, markdown: Callable[[dict], str], out_dir: Path,
                 quick: bool) -> tuple[Path, Path]:
    """Write ``<name>-<device>[-quick].json`` and ``.md`` into ``out_dir`` (``report_paths``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = report_paths(name, report, out_dir, quick)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def report_header(title: str, report: dict, measured: str = "Measured") -> list[str]:
    """The Markdown title and the device / versions / load lines every report starts with
    (``measured``: the words before the run's date)."""
    dev, load = report["device"], report["load_average_1min"]
    loads = ", ".join("n/a" if load[k] is None else f"{load[k]:.1f}" for k in ("start", "end"))
    return [f"# edgejax {title}: {dev['device_kind']} ({dev['backend']})", "",
            f"Device: {dev['device_kind']} x{dev['device_count']} ({dev['backend']}); host CPU: {dev['host_cpu']}, "
            f"{dev['host_cpu_count']} cores. jax {dev['versions']['jax']}, jaxlib {dev['versions']['jaxlib']}, "
            f"edgejax {dev['versions']['edgejax']}. XLA_FLAGS={dev['xla_flags'] or '(none)'}. {measured} "
            f"{report['date']}; total wall time {report['total_wall_s'] / 60:.1f} min; host 1-min load average "
            f"{loads} (start, end).", "",
            f"Command: `{report['command']}`", ""]


def finish_report(name: str, report: dict, markdown: Callable[[dict], str], out_dir: Path, quick: bool,
                  start: float, load_start: float | None) -> dict:
    """Add the total wall time and the end load to ``report``, write it (``write_report``) and say where."""
    report["total_wall_s"] = time.perf_counter() - start
    report["load_average_1min"] = {"start": load_start, "end": load_average()}
    json_path, md_path = write_report(name, report, markdown, out_dir, quick)
    print(f"wrote {json_path} and {md_path} ({report['total_wall_s'] / 60:.1f} min)", flush=True)
    return report
