"""The kernel's Python and Ray against a cluster's, checked before the kernel joins it.

A Ray head stores the versions it was started with in its GCS key-value store
(the cluster metadata), and ``ray.init`` compares a joining driver's with them
(``ray._private.utils.check_version_info``): a mismatch there raises a bare
``RuntimeError`` from deep inside ``ray.init``, possibly after part of the
connection was set up. So nbbg reads the same metadata first, with a plain GCS
client, and applies Ray's own rule (patch level by default,
``RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL`` respected) before calling
``ray.init``: a mismatch becomes :class:`RayVersionMismatchError` naming both
sides, and nothing of the kernel changes. Ray's error is still caught and
rephrased where nbbg cannot read the metadata first (a ``ray://`` client
address, which Ray checks at the minor level).

Every Ray private name nbbg uses for this is in this module.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from types import ModuleType
from typing import Any

from .._errors import RayVersionMismatchError

LOGGER = logging.getLogger("nbbg")

_MISMATCH = re.compile(
    r"Version mismatch: The cluster was started with:\s*Ray: (?P<cluster_ray>\S+)\s*"
    r"Python: (?P<cluster_python>\S+)\s*This process .*? was started with:\s*"
    r"Ray: (?P<kernel_ray>\S+)\s*Python: (?P<kernel_python>\S+)",
    re.DOTALL,
)


def _private(ray: ModuleType, name: str) -> Any:
    """Ray's module ``ray.<name>`` (private: its names may move between Ray versions)."""
    return importlib.import_module(f"{ray.__name__}.{name}")


def kernel_versions(ray: ModuleType) -> tuple[str, str]:
    """This process's ``(python, ray)`` versions, as Ray writes them."""
    ray_version, python_version = _private(ray, "_private.utils").compute_version_info()
    return str(python_version), str(ray_version)


def cluster_versions(ray: ModuleType, address: str, timeout: float) -> tuple[str, str] | None:
    """The ``(python, ray)`` versions the cluster at ``address`` was started with.

    ``address`` is Ray's ``host:port`` or ``"auto"``; None when the metadata
    cannot be read this way (a ``ray://`` address, an older head, no answer):
    ``ray.init`` then checks, and :func:`rephrase` words its error.
    """
    if address.startswith("ray://"):
        return None
    try:
        gcs_address = address
        if address == "auto":  # the cluster `ray start` last started on this machine
            services = _private(ray, "_private.services")
            gcs_address = services.canonicalize_bootstrap_address_or_die(address)
        client = _private(ray, "_raylet").GcsClient(address=gcs_address)
        raw = client.internal_kv_get(
            _private(ray, "_common.usage.usage_constants").CLUSTER_METADATA_KEY,
            namespace=_private(ray, "_private.ray_constants").KV_NAMESPACE_CLUSTER,
            timeout=timeout,
        )
        metadata: dict[str, Any] = json.loads(raw)
        return str(metadata["python_version"]), str(metadata["ray_version"])
    except Exception:  # ray.init still checks, and says more
        LOGGER.debug("nbbg: could not read the cluster metadata of %s", address, exc_info=True)
        return None


def check(ray: ModuleType, address: str, timeout: float) -> None:
    """Raise :class:`RayVersionMismatchError` if Ray would refuse this kernel at ``address``."""
    cluster = cluster_versions(ray, address, timeout)
    if cluster is None:
        return
    metadata = {"python_version": cluster[0], "ray_version": cluster[1]}
    try:
        _private(ray, "_private.utils").check_version_info(metadata, "this kernel")
    except RuntimeError as exc:
        raise RayVersionMismatchError(address, cluster, kernel_versions(ray)) from exc


def rephrase(address: str, exc: BaseException) -> RayVersionMismatchError | None:
    """Ray's own version-mismatch error from ``ray.init`` as nbbg's, else None."""
    found = _MISMATCH.search(str(exc))
    if found is None:
        return None
    return RayVersionMismatchError(
        address,
        (found["cluster_python"], found["cluster_ray"]),
        (found["kernel_python"], found["kernel_ray"]),
    )
