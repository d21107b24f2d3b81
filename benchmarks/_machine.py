"""What machine a benchmark ran on (shared by the scripts in this folder)."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> str:
    try:
        return " ".join(f"{load:.2f}" for load in os.getloadavg())
    except OSError:
        return "n/a"


def describe_machine(device: torch.device) -> str:
    """One line: CPU, threads, torch and Python versions, device and load average."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}, python {platform.python_version()}, device {device} ({name}), "
        f"load average {load_average()}"
    )
