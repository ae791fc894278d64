"""A data-parallel fit that fails in one process: that process posts its error in the process
group's store and closes the fit's connections, so that the others stop at once, or within a
second when they compute, each naming the process that failed and its error."""
from contextvars import ContextVar
from datetime import timedelta
import gc
import os
import threading
from traceback import clear_frames

import torch
import torch.distributed as dist

# How often a process that computes between collectives looks for another's failure (the
# steps it computes check at every batch, solver iteration or diffusion step).
POLL_SECONDS = 1.0
# How long a process that lost contact with the others waits for the failing one's report;
# the report is posted before the connections close, so only a killed process sends none.
REPORT_SECONDS = 5.0
# How long the failing process waits for the others to stop before it raises: under torchrun
# its exit ends the others, which should have reported the failure by then.
STOP_SECONDS = 10.0
# Characters of an error kept in its report.
REPORT_CHARS = 4000
# Words of the errors a collective raises when another process closed its connections or
# died (gloo says "Connection closed by peer"; NCCL's errors are DistBackendError).
LOST_CONTACT_WORDS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                      "gloo/transport", "NCCL communicator was aborted")

_watch = ContextVar("skselflabel_failure_watch", default=None)


class ProcessFailedError(RuntimeError):
    """Another process of a data-parallel fit failed, and this one stopped with it.

    Attributes
    ----------
    rank : int or None
        The process that failed (None: it stopped without a report, e.g. killed).
    error : str
        Its error, ``"Type: message"``.
    """

    def __init__(self, rank, error, world, own_rank):
        self.rank, self.error = rank, error
        if rank is None:
            text = (f"Process {own_rank} of this data-parallel fit of {world} processes lost "
                    "contact with another, which stopped without reporting an error (it was "
                    "killed, or ended by the system, for instance out of memory under a "
                    "cgroup). See the logs of the other processes.")
        else:
            text = (f"Process {rank} of this data-parallel fit of {world} processes failed "
                    f"with {error}\nProcess {own_rank} stopped with it; process {rank}'s "
                    "log has the traceback.")
        super().__init__(text)


def check_other_processes():
    """Raise :class:`ProcessFailedError` if another process of the current data-parallel fit
    has failed (cheap: a watch thread looks for it in the store)."""
    watch = _watch.get()
    if watch is not None and watch.failure is not None:
        raise ProcessFailedError(*watch.failure, watch.team.world, watch.team.rank)


def _store():
    """The default process group's key-value store (torchrun's), or None."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private API: without it there are no reports
        return None


def lost_contact(exc):
    """Whether ``exc`` is a collective failing because another process stopped."""
    if isinstance(exc, ProcessFailedError) or isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc)
                                                 for word in LOST_CONTACT_WORDS)


class SharedFailures:
    """For the length of a ``with`` block of a data-parallel fit (every process enters it
    at the same point): an exception in one process stops every process, the failing one
    with its own error, the others with a :class:`ProcessFailedError` naming it. The team's
    process groups are closed when the block ends, whichever way.

    Parameters
    ----------
    team : skselflabel._runtime.processes.Team
        The processes of the fit; with one process nothing is done.
    """

    def __init__(self, team):
        self.team, self.store, self.prefix = team, None, ""
        self.failure, self._token, self._done, self._thread = None, None, None, None

    def __enter__(self):
        if self.team.world == 1:
            return self
        # A key of the fit, drawn by the leader: a store outlives fits (and torchrun's
        # restarts), and its earlier keys must not be read as this fit's.
        fit = self.team.broadcast_(torch.tensor([int.from_bytes(os.urandom(7), "little")]))
        self.prefix = f"skselflabel/fit/{int(fit[0])}/"
        self.store = _store()
        self._token = _watch.set(self)
        if self.store is not None:
            self._done = threading.Event()
            self._thread = threading.Thread(target=self._watch_store, daemon=True,
                                            name="skselflabel-failure-watch")
            self._thread.start()
        return self

    def _watch_store(self):
        key = self.prefix + "failed"
        while not self._done.wait(POLL_SECONDS):
            try:
                if not self.store.check([key]):
                    continue
                rank, error = self._read_failure()
            except Exception:  # noqa: BLE001 - the store is gone: collectives tell the rest
                return
            if rank != self.team.rank:
                self.failure = (rank, error)
                _abort_nccl(self.team)
                return

    def _read_failure(self):
        rank, _, error = self.store.get(self.prefix + "failed").decode().partition("\n")
        return int(rank), error

    def _post(self, key, value):
        if self.store is not None:
            try:
                self.store.set(self.prefix + key, value)
            except Exception:  # noqa: BLE001 - without a store the others learn less
                pass

    def __exit__(self, kind, exc, traceback):
        if self.team.world == 1:
            return False
        if self._done is not None:
            self._done.set()
        _watch.reset(self._token)
        rank = self.team.rank
        if exc is None or not isinstance(exc, (Exception, KeyboardInterrupt)):
            self._post(f"end/{rank}", "done")
            self.team.close()
            return False
        if lost_contact(exc):
            failure = self.failure or self._wait_for_report()
            self._post(f"end/{rank}", "stopped")
            self.team.close()
            raise ProcessFailedError(*failure, self.team.world, rank) from exc
        self._report(exc)
        # The group's connections close only once nothing holds it: the frames of the
        # traceback let go of DistributedDataParallel (in the trainer's). The traceback
        # still says where the error came from; only its frames' variables are cleared.
        _clear_frames(exc)
        gc.collect()
        self.team.close()
        self._wait_for_the_others()
        exc.add_note(f"(In process {rank} of a data-parallel fit of {self.team.world}: the "
                     "other processes stopped with this error.)")
        return False

    def _report(self, exc):
        """Post this process's error (the first failure of the fit is kept apart)."""
        error = f"{type(exc).__name__}: {exc}"[:REPORT_CHARS]
        self._post(f"error/{self.team.rank}", error)
        if self.store is not None:
            try:
                self.store.compare_set(self.prefix + "failed", "",
                                       f"{self.team.rank}\n{error}")
            except Exception:  # noqa: BLE001
                pass
        self._post(f"end/{self.team.rank}", "failed")

    def _wait_for_report(self):
        """The failure another process reported, waiting for it a little; (None, "") if
        none came."""
        if self.store is not None:
            try:
                self.store.wait([self.prefix + "failed"], timedelta(seconds=REPORT_SECONDS))
                return self._read_failure()
            except Exception:  # noqa: BLE001 - no report: the process was killed
                pass
        return None, ""

    def _wait_for_the_others(self):
        others = [f"{self.prefix}end/{r}" for r in range(self.team.world)
                  if r != self.team.rank]
        if self.store is not None:
            try:
                self.store.wait(others, timedelta(seconds=STOP_SECONDS))
            except Exception:  # noqa: BLE001 - they stop anyway when this process exits
                pass


def _clear_frames(exc):
    """Clear the variables of the finished frames in the tracebacks of ``exc`` and of the
    errors it came from."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def _abort_nccl(team):
    """Abort the team's NCCL communicators, whose collectives do not notice a process that
    closed its own (gloo's do): a collective waiting on the failed process then raises."""
    try:
        group = getattr(team, "group", None)
        if group is not None and dist.get_backend(group) == "nccl":
            dist.distributed_c10d._abort_process_group(group)
    except Exception:  # noqa: BLE001 - then the group's timeout ends the wait
        pass
