"""Every error nbbg raises or reports, in one place.

Each message says what happened and what to do about it. Errors that end a
job are also shown to the user in the Dash app (as a background callback
error) and in the notebook panel, so they are written for that reader.
"""

from __future__ import annotations


class NbbgError(Exception):
    """Base class of all nbbg errors."""


class ShutdownError(NbbgError, RuntimeError):
    """The manager was shut down; it accepts no new jobs."""

    def __init__(self) -> None:
        super().__init__(
            "this nbbg manager was shut down and accepts no new jobs: "
            "create a new LokyManager (or run `%nbbg restart`)"
        )


class UnpicklableCallbackError(NbbgError, TypeError):
    """The callback, or something it uses, cannot be sent to a worker process."""

    def __init__(self, callback_name: str, culprit: str | None, cause: BaseException) -> None:
        self.callback_name = callback_name
        self.culprit = culprit
        if culprit is None:
            what = f"callback `{callback_name}` cannot be pickled ({type(cause).__name__}: {cause})"
        else:
            what = (
                f"callback `{callback_name}` uses {culprit}, which cannot be pickled "
                f"({type(cause).__name__}: {cause})"
            )
        super().__init__(
            f"{what}; background jobs run in another process, so everything the "
            "callback reads must be picklable: pass what it needs as an argument "
            "or create it inside the function"
        )


class ModuleImportError(NbbgError, ImportError):
    """A worker cannot import a module the job needs."""

    def __init__(
        self, callback_name: str, module: str | None, sys_path: list[str], cause: BaseException
    ) -> None:
        self.callback_name, self.module = callback_name, module
        what = f"module `{module}`" if module else "a module"
        super().__init__(
            f"`{callback_name}` needs {what}, which the worker process cannot import "
            f"({type(cause).__name__}: {cause}). The worker imports with the kernel's "
            f"sys.path and current directory as of the submit: {sys_path!r}; add the "
            "module's folder to sys.path in the kernel (or install the module), then run "
            "the job again"
        )

    def __str__(self) -> str:  # ImportError would show only the first argument
        return str(self.args[0])


class ObjectChangedError(NbbgError, RuntimeError):
    """A queued job's submit-time copy of an object is gone and the object changed."""

    def __init__(self, callback_name: str, label: str) -> None:
        super().__init__(
            f"`{callback_name}` was submitted while its {label} had one value, and that "
            "object changed before the job started on a worker that held no copy of it "
            "(that worker had been replaced, e.g. after a cancel, or had dropped its copy). "
            "The job did not run, so that it cannot compute on other data than at its "
            "submit: submit it again"
        )


class ShippingError(NbbgError, OSError):
    """A large value could not be copied to shared memory for a worker."""

    def __init__(self, callback_name: str, label: str, cause: BaseException) -> None:
        super().__init__(
            f"the kernel could not copy the {label} of `{callback_name}` to shared memory "
            f"for its worker ({type(cause).__name__}: {cause}): free space in /dev/shm "
            "(see `df -h /dev/shm`), or make the object smaller"
        )

    def __str__(self) -> str:  # OSError would show its arguments
        return str(self.args[0])


class UnpicklableArgumentsError(NbbgError, TypeError):
    """The arguments of a job cannot be sent to a worker process."""

    def __init__(self, callback_name: str, cause: BaseException) -> None:
        super().__init__(
            f"the arguments of `{callback_name}` cannot be pickled "
            f"({type(cause).__name__}: {cause}): pass plain data (numbers, strings, "
            "lists, dicts, arrays) to background jobs"
        )


class UnpicklableResultError(NbbgError, TypeError):
    """A job's return value cannot be stored."""

    def __init__(self, callback_name: str, cause: BaseException) -> None:
        super().__init__(
            f"the value returned by `{callback_name}` cannot be pickled "
            f"({type(cause).__name__}: {cause}): return plain data (numbers, strings, "
            "lists, dicts, figures)"
        )


class UnreadableResultError(NbbgError, TypeError):
    """A job's stored return value cannot be unpickled in the kernel."""

    def __init__(self, callback_name: str, cause: BaseException) -> None:
        super().__init__(
            f"the value returned by `{callback_name}` cannot be loaded back in the kernel "
            f"({type(cause).__name__}: {cause}): return plain data (numbers, strings, "
            "lists, dicts, figures), not objects that only the worker can rebuild"
        )


class BadProgressError(NbbgError, TypeError):
    """A progress or set_props value cannot be sent to the app."""

    def __init__(self, callback_name: str, detail: str) -> None:
        super().__init__(
            f"`{callback_name}` reported progress that cannot be sent to the app "
            f"({detail}): pass plain data (numbers, strings, lists, dicts, figures) "
            "to set_progress and set_props"
        )


class WorkerDiedError(NbbgError, RuntimeError):
    """The worker process running a job died before the job finished."""

    def __init__(self, callback_name: str, detail: str) -> None:
        super().__init__(
            f"the worker process running `{callback_name}` died before the job "
            f"finished ({detail}); a fresh worker has taken its place. This "
            "happens when the job crashes the interpreter (a segfault in a C "
            "extension, os._exit) or is killed from outside, e.g. for using too "
            "much memory"
        )


class MemoryLimitError(NbbgError, MemoryError):
    """A job's worker went over the manager's memory limit and was stopped."""

    def __init__(self, callback_name: str, used: str, limit: str) -> None:
        self.callback_name, self.used, self.limit = callback_name, used, limit
        super().__init__(
            f"`{callback_name}` stopped: used {used}, limit {limit}; raise memory_limit= "
            "(LokyManager(memory_limit=...) or `%nbbg memory <size>`) or use less memory"
        )


class StoreError(NbbgError, OSError):
    """The result store cannot be read or written."""

    def __init__(self, directory: str, cause: BaseException) -> None:
        super().__init__(
            f"the nbbg result store at {directory!r} cannot be used "
            f"({type(cause).__name__}: {cause}); check that the directory exists "
            "and is writable, or pass LokyManager(cache=<another directory>)"
        )


class WrongProcessError(NbbgError, RuntimeError):
    """A manager used in a process forked from the one that created it."""

    def __init__(self, what: str, owner_pid: int, pid: int) -> None:
        self.owner_pid, self.pid = owner_pid, pid
        super().__init__(
            f"this {what} was created in process {owner_pid} and is used in process {pid}, "
            "a fork of it (a server with several worker processes, gunicorn --preload, "
            f"or a multiprocessing fork): its jobs and workers live in process {owner_pid} "
            "only, so jobs would be lost here. Serve the app from one process with threads "
            "(gunicorn -w 1 --threads 8 app:server, without --preload), or use CeleryManager "
            "or RayManager to run jobs for several server processes"
        )


class TemporaryStoreWarning(UserWarning):
    """The default store directory cannot be created; a temporary store is used instead."""

    def __init__(self, directory: str, cause: BaseException, temporary: str) -> None:
        super().__init__(
            f"nbbg cannot create its result store in {directory} ({type(cause).__name__}: "
            f"{cause}), so it uses {temporary}: results and cache_by entries will not outlive "
            "this kernel; set XDG_CACHE_HOME to a writable directory, or pass "
            "LokyManager(cache=<directory>), to keep them"
        )


class JobFailedError(NbbgError, RuntimeError):
    """Raised by ``wait()`` for a job that ended with an error."""

    def __init__(self, job_id: str, message: str, traceback_text: str = "") -> None:
        self.job_id = job_id
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"job {job_id} failed: {message}")


class JobCancelledError(NbbgError, RuntimeError):
    """Raised by ``wait()`` for a job that was cancelled."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} was cancelled")


class UnknownJobError(NbbgError, KeyError):
    """A job id this manager does not know (or no longer remembers)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"no job {job_id!r} in this manager: job ids come from submit(), jobs() or "
            "the panel, and a finished job is forgotten once its result was collected "
            "and 1000 newer jobs finished"
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class PortInUseError(NbbgError, OSError):
    """``app.run()`` in a notebook on a port another program (or kernel) holds."""

    def __init__(self, host: str, port: int, free_port: int) -> None:
        self.host, self.port, self.free_port = host, port, free_port
        super().__init__(
            f"port {port} on {host} is already in use (by another program or another "
            f"kernel): run the app on a free port, e.g. app.run(port={free_port})"
        )

    def __str__(self) -> str:  # OSError would show its arguments
        return str(self.args[0])

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: the message is all there is to know."""
        return [f"{type(self).__name__}: {self}"]


class RayNotInstalledError(NbbgError, ImportError):
    """``RayManager`` needs the optional dependency Ray."""

    def __init__(self) -> None:
        super().__init__(
            "RayManager runs jobs on Ray, which is not installed here: "
            'pip install "nbbg[ray]" (or pip install "ray>=2.40"), then restart the kernel'
        )


class RayUnreachableError(NbbgError, ConnectionError):
    """The Ray cluster at the given address could not be reached."""

    def __init__(self, address: str | None, cause: BaseException | str) -> None:
        self.address = address
        where = "a local Ray instance" if address is None else f"the Ray cluster at {address!r}"
        super().__init__(
            f"could not connect to {where} ({cause}); check that it runs (`ray status "
            f"--address {address}`) and that the address is right. Nothing was changed"
            if address is not None
            else f"could not start {where} ({cause}). Nothing was changed"
        )


class RayVersionMismatchError(NbbgError, RuntimeError):
    """The cluster runs another Python or Ray than the kernel (its workers could not run jobs)."""

    def __init__(
        self,
        address: str,
        cluster: tuple[str, str],
        kernel: tuple[str, str],
    ) -> None:
        self.address = address
        self.cluster_python, self.cluster_ray = cluster
        self.kernel_python, self.kernel_ray = kernel
        pairs = (("Python", cluster[0], kernel[0]), ("Ray", cluster[1], kernel[1]))
        differ = " and ".join(name for name, theirs, ours in pairs if theirs != ours)
        super().__init__(
            f"the Ray cluster at {address!r} runs Python {cluster[0]} and Ray {cluster[1]}, "
            f"this kernel Python {kernel[0]} and Ray {kernel[1]}: their {differ or 'Python'} "
            "versions differ (Ray refuses to mix them, and a job pickled by one Python may "
            "not load in another). Install the cluster's Python and Ray versions in this "
            "kernel's environment, or start the cluster from this kernel's environment. "
            "Nothing was changed"
        )


class RayTaskLostError(NbbgError, RuntimeError):
    """The Ray task running a job ended without the job's outcome."""

    def __init__(self, callback_name: str, detail: str) -> None:
        super().__init__(
            f"Ray lost the task running `{callback_name}` before the job finished ({detail}): "
            "its worker process was killed, its node went away or the cluster stopped; "
            "the manager goes on with the next jobs"
        )


class ResultEvictedError(NbbgError, LookupError):
    """``record.result()`` of a past job whose result is no longer in the store."""

    def __init__(self, job_id: str, name: str) -> None:
        super().__init__(
            f"the result of job {job_id} (`{name}`) is no longer in the store: results "
            "are kept 24 h and the store drops the oldest beyond its size limit "
            "(or it was cleared); run the job again (record.rerun() for submit() jobs)"
        )


class NotRerunnableError(NbbgError, TypeError):
    """``record.rerun()`` of a job that cannot be submitted again from its record."""

    def __init__(self, job_id: str, name: str, reason: str) -> None:
        super().__init__(f"job {job_id} (`{name}`) cannot be re-run from its record: {reason}")


class ExtensionNotLoadedError(NbbgError, RuntimeError):
    """A function that needs the kernel's manager, called before ``%load_ext nbbg``."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} uses the manager of `%load_ext nbbg`, which is not loaded: run "
            "`%load_ext nbbg` first, or call it on your own LokyManager"
        )
