"""A device ID the kubelet reports → the GPU it is on, as NVML numbers it (`GpuInfo.index`, `GpuInfo.uuid`).

- `GPU-<uuid>`, and `GPU-<uuid>::<n>` (a replica of a shared GPU): the GPU with that UUID.
- `MIG-GPU-<uuid>/<gi>/<ci>` (MIG names before driver R470): the GPU with that UUID.
- `MIG-<uuid>` (a MIG slice): its parent GPU, which NVML tells (`NvmlDeviceLookup.mig_parents`).
- `nvidia<N>` (GKE's device plugin) and `gpu-<N>` / `gpu-<N>-mig-…` (NVIDIA's DRA driver): the GPU whose
  device file is /dev/nvidia<N>, i.e. whose minor number is N (`NvmlDeviceLookup.minor_numbers`); not
  always its NVML index.
- `<N>` (device plugins that number GPUs) and `<N>:<M>` (MIG slice M of GPU N): NVML index N.

The thread of the Kubernetes view asks NVML only about the MIG UUIDs and minor numbers it has not seen
before; the tick maps with what it was told (`DeviceMap`), never calling NVML itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

_REPLICA = re.compile(r"::\d+$")
_OLD_MIG = re.compile(r"MIG-(GPU-[0-9A-Za-z-]+)/\d+/\d+")
_MINOR = re.compile(r"(?:nvidia|gpu-)(\d{1,4})(?:-mig-.*)?")
_INDEX = re.compile(r"(\d{1,4})(?::\d{1,3})?")


def base_id(device_id: str) -> str:
    """The device without a shared replica's `::<n>` suffix."""
    return _REPLICA.sub("", device_id)


def needs_minor(device_id: str) -> int | None:
    """The minor number a device ID names (`nvidia3`, `gpu-3`, `gpu-3-mig-1g.10gb-0`), if it names one."""
    match = _MINOR.fullmatch(base_id(device_id))
    return int(match.group(1)) if match else None


def needs_mig_parent(device_id: str) -> str | None:
    """The MIG UUID whose parent only NVML knows, if the device ID is one."""
    device = base_id(device_id)
    return device if device.startswith("MIG-") and not _OLD_MIG.fullmatch(device) else None


@dataclass(frozen=True)
class DeviceMap:
    """What NVML told the view: MIG UUID → parent GPU UUID, minor number → GPU UUID."""

    mig_parents: Mapping[str, str] = field(default_factory=dict)
    minors: Mapping[int, str] = field(default_factory=dict)

    def gpu_uuid(self, device_id: str, index_uuids: Mapping[int, str]) -> str | None:
        """The UUID of the GPU `device_id` is on, or None if unknown; `index_uuids`: NVML index → UUID."""
        device = base_id(device_id)
        if device.startswith("GPU-"):
            return device
        old_mig = _OLD_MIG.fullmatch(device)
        if old_mig:
            return old_mig.group(1)
        if device.startswith("MIG-"):
            return self.mig_parents.get(device)
        minor = needs_minor(device)
        if minor is not None:
            return self.minors.get(minor)
        index = _INDEX.fullmatch(device)
        if index:
            return index_uuids.get(int(index.group(1)))
        return None

    def device_uuid(self, device_id: str, gpu_uuid: str) -> str:
        """The `uuid` label of an allocation: the MIG slice's own UUID, else its GPU's."""
        device = base_id(device_id)
        return device if device.startswith("MIG-") else gpu_uuid


class NvmlDeviceLookup:
    """Asks NVML (pynvml, or a fake with the same functions) what the kubelet's device IDs cannot say.

    Each use initialises NVML and shuts it down again: NVML counts these, so the NVML source's own
    initialisation in this process is left as it was.
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml

    def _module(self) -> Any:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def mig_parents(self, mig_uuids: Iterable[str]) -> dict[str, str]:
        """MIG UUID → its parent GPU's UUID, for those NVML knows."""
        nvml = self._module()
        found: dict[str, str] = {}
        wanted = sorted(set(mig_uuids))
        if not wanted:
            return found
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            log.debug("NVML unavailable for MIG parents: %s", exc)
            return found
        try:
            for mig in wanted:
                try:
                    handle = nvml.nvmlDeviceGetHandleByUUID(mig)
                    parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
                    found[mig] = _text(nvml.nvmlDeviceGetUUID(parent))
                except nvml.NVMLError as exc:
                    log.debug("no parent GPU for %s: %s", mig, exc)
        finally:
            nvml.nvmlShutdown()
        return found

    def minor_numbers(self) -> dict[int, str]:
        """Minor number (the N of /dev/nvidiaN) → GPU UUID, for every GPU NVML sees."""
        nvml = self._module()
        found: dict[int, str] = {}
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            log.debug("NVML unavailable for minor numbers: %s", exc)
            return found
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                try:
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    found[int(nvml.nvmlDeviceGetMinorNumber(handle))] = _text(nvml.nvmlDeviceGetUUID(handle))
                except nvml.NVMLError as exc:
                    log.debug("no minor number for GPU %d: %s", index, exc)
        except nvml.NVMLError as exc:
            log.debug("NVML could not count GPUs: %s", exc)
        finally:
            nvml.nvmlShutdown()
        return found


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
