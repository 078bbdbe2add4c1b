"""What to send one worker with one job: the parts of the job's cargo that worker lacks.

The kernel mirrors what each worker holds (callables by token, large values by
digest, the environment by token) on its :class:`~nbbg._engine.slots.Slot`.
Packing a job for a slot sends only what the mirror says is missing, and
updates the mirror as the worker will update its caches. A value the worker
lacks goes as a shared-memory parcel: the copy taken at submit, or one taken
now if the object has not changed since (else the job cannot see its
submit-time value, and fails with ``ObjectChangedError``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

from .._errors import NbbgError, ObjectChangedError, ShippingError
from .jobs import JobFailure
from .shipping import Cargo, ObjectRef
from .slots import Slot
from .worker import JobSpec, WorkerOutcome

LOGGER = logging.getLogger("nbbg")

RESENDS = 2
"""How often a job is sent again to a worker that lacked what its mirror said it held."""


def pack(
    slot: Slot, spec: JobSpec, cargo: Cargo, queued: Iterable[JobSpec]
) -> JobSpec | JobFailure:
    """``spec`` with what ``slot``'s worker lacks, or why the job cannot run."""
    parcels = {}
    for digest, _size in spec.objects:
        if digest in slot.objects:
            continue
        label = next(ref.label for ref in cargo.function.objects if ref.digest == digest)
        error: NbbgError | None = None
        try:
            parcel = cargo.snapshot(digest)
        except OSError as exc:  # e.g. no room in /dev/shm
            parcel, error = None, ShippingError(spec.name, label, exc)
        if parcel is None:
            return JobFailure(str(error or ObjectChangedError(spec.name, label)))
        parcels[digest] = parcel.ref
    drops = _superseded(slot, spec, cargo, queued)
    for digest in drops:
        slot.objects.discard(digest)
    slot.objects.use((digest, size, None) for digest, size in spec.objects)
    environ = None
    if spec.kernel is not None and slot.environ_token != spec.kernel.environ_token:
        environ = cargo.environ
        slot.environ_token = spec.kernel.environ_token
    payload = None if slot.remember_shipped(spec.token) else cargo.function.payload
    return replace(spec, payload=payload, parcels=parcels or None, environ=environ, drops=drops)


def lacked_by(slots: list[Slot], digest: bytes) -> bool:
    """Whether any of ``slots`` (or, with none yet, a worker to come) lacks the value."""
    return not slots or any(digest not in slot.objects for slot in slots)


def copy_at_submit(cargo: Cargo, missing: Iterable[ObjectRef]) -> None:
    """Copy to shared memory, now, the large values the job's worker may lack.

    That copy is what the job gets if the object changes before it starts.
    Only what the job's likely worker lacks is copied (checking every worker
    would copy a 100 MB array at every call while an idle second worker lacks
    it). If the worker that takes the job lacks a value after all, :func:`pack`
    copies the object at start when it is unchanged, else the job fails with
    ``ObjectChangedError``.
    """
    try:
        for ref in missing:
            try:
                cargo.snapshot(ref.digest)
            except OSError:  # no room now: tried again, with a clear error, at start
                LOGGER.warning("nbbg: could not copy %s to shared memory", ref.label)
    except BaseException:
        cargo.release()
        raise
    finally:
        cargo.forget_streams()  # its buffer views must not outlive the submit


def forget_missing(slot: Slot, spec: JobSpec, outcome: WorkerOutcome) -> None:
    """The worker lacked what its mirror said it held: correct the mirror."""
    for digest in outcome.missing:
        slot.objects.discard(digest)
    if outcome.missing_function:
        slot.shipped_tokens.pop(spec.token, None)
    if outcome.missing_environ:
        slot.environ_token = 0


def _superseded(
    slot: Slot, spec: JobSpec, cargo: Cargo, queued: Iterable[JobSpec]
) -> tuple[bytes, ...]:
    """Old versions of this callback's values the worker may drop: none a queued job needs."""
    candidates = [digest for digest in cargo.function.replaces if digest in slot.objects]
    if not candidates:
        return ()
    needed = {digest for digest, _ in spec.objects}
    for queued_spec in queued:
        needed.update(digest for digest, _ in queued_spec.objects)
    return tuple(digest for digest in candidates if digest not in needed)
