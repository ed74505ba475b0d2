"""Optuna storages by URL, worker bookkeeping and the stale-trial rule.

- ``sqlite:///…``, ``postgresql://…`` (any SQLAlchemy URL): Optuna's RDBStorage with a
  heartbeat, so a trial whose worker was killed is failed after the grace period and retried
  (``RetryHeartbeatStaleTrialCallback``).
- ``journal:PATH``: Optuna's JournalFileBackend (with its file lock), for several worker
  processes on one machine. The journal has no heartbeat; the equivalent rule is that a RUNNING
  trial whose worker process (same host, recorded pid) is gone was interrupted.

Interrupted trials are FAIL without an ``error`` attribute and do not count towards
``n_trials``; their parameters are enqueued again.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from workbench.cache import file_lock
from workbench.errors import ConfigError, first_line

HEARTBEAT_S = 10
GRACE_S = 40
MAX_RETRY = 2


def open_storage(url: str):
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(f"storage {url!r}: expected sqlite:///PATH, postgresql://USER@HOST/DB "
                          "or journal:PATH")
    # Workers starting together on a fresh database race to create Optuna's tables; the loser
    # sees an integrity error, and the tables exist when it tries again.
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeat options are marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(MAX_RETRY),
                                  engine_kwargs={"pool_pre_ping": True})
        except Exception as err:  # noqa: BLE001 - reported as one line below
            last = err
            time.sleep(1.0 + attempt)
    first = first_line(last)
    raise ConfigError(f"storage {url}: cannot open ({first})") from None


def worker_id() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(study) -> list[int]:
    """Fail the trials whose worker is gone and enqueue their parameters again."""
    import optuna
    from optuna.trial import TrialState

    if isinstance(study._storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)  # heartbeat rule; the callback re-enqueues
    host = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if w and w.get("host") == host and w.get("pid") != os.getpid() and not _alive(w["pid"]):
            study._storage.set_trial_user_attr(t._trial_id, "interrupted",
                                               f"worker pid {w['pid']} on {host} is gone")
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params)
            recovered.append(t.number)
    return recovered


def counts_towards_budget(t) -> bool:
    """COMPLETE, real PRUNED and real FAIL trials count; RUNNING ones will; interrupted trials
    and skipped duplicates do not."""
    name = t.state.name
    if name in ("COMPLETE", "RUNNING"):
        return True
    if name == "PRUNED":
        return "duplicate_of" not in t.user_attrs
    if name == "FAIL":
        return "error" in t.user_attrs
    return False


@contextmanager
def ask_lock(url: str, run_dir: Path, study_name: str) -> Iterator[None]:
    """Serialise "count, then ask" between workers so the study gets exactly ``n_trials``.

    One machine: a file lock in the run directory. PostgreSQL (many machines): an advisory lock.
    """
    if url.startswith("postgresql"):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        engine.dispose()
    else:
        with file_lock(run_dir / ".ask.lock"):
            yield


@contextmanager
def heartbeat(study, trial) -> Iterator[None]:
    """Record the RDB heartbeat of ``trial`` while the block runs (ask-and-tell has no thread)."""
    import optuna

    storage = study._storage
    if not isinstance(storage, optuna.storages.RDBStorage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception:  # a transient database error must not kill the trial
                pass
            stop.wait(HEARTBEAT_S)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
