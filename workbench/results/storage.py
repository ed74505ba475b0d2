"""Optuna storages by URL, worker bookkeeping and the stale-trial rule.

- ``sqlite:///…``, ``postgresql://…`` (any SQLAlchemy URL): Optuna's RDBStorage with a
  heartbeat, so a trial whose worker was killed is failed after the grace period and retried
  (``RetryHeartbeatStaleTrialCallback``).
- ``journal:PATH``: Optuna's JournalFileBackend (with its file lock), for several worker
  processes on one machine. The journal has no heartbeat; the equivalent rule is that a RUNNING
  trial whose worker process (same host, recorded pid) is gone was interrupted.

Interrupted trials are FAIL without an ``error`` attribute and do not count towards
``n_trials``; their parameters are enqueued again.

Secrets: a URL's password never reaches a file, a log line, an error message or a command line.
What is written down is :func:`redact`-ed (``postgresql://user:***@host/db``); the full URL
comes from ``--storage`` or the ``WORKBENCH_STORAGE`` environment variable, which is also how
worker processes receive it. :func:`open_storage` given a redacted URL (from ``run.json``)
takes the full one from ``WORKBENCH_STORAGE``.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from workbench.core.cache import file_lock
from workbench.core.errors import ConfigError, first_line

HEARTBEAT_S = 10
GRACE_S = 40
MAX_RETRY = 2
ENV = "WORKBENCH_STORAGE"
HIDDEN = "***"


def _password(url: str) -> str | None:
    """The password in ``url`` (``scheme://user:PASSWORD@host`` or ``?password=``), if any."""
    m = re.match(r"^[A-Za-z0-9+.-]+://([^/?#]*)@", url)
    if m and ":" in m.group(1):
        return m.group(1).split(":", 1)[1] or None
    m = re.search(r"[?&]password=([^&#]*)", url)
    return m.group(1) or None if m else None


def redact(url: str | None) -> str | None:
    """``url`` with its password replaced by ``***``: what may be written down or shown."""
    if not url:
        return url
    secret = _password(url)
    if not secret or secret == HIDDEN:
        return url
    url = re.sub(r"^([A-Za-z0-9+.-]+://[^/?#:@]*:)[^/?#]*@", lambda m: m.group(1) + HIDDEN + "@", url)
    return re.sub(r"([?&]password=)[^&#]*", lambda m: m.group(1) + HIDDEN, url)


def redact_text(text: str, url: str | None) -> str:
    """``text`` (an error message) with the password of ``url`` hidden wherever it appears."""
    secret = _password(url or "")
    text = str(text)
    if secret and secret != HIDDEN:
        text = text.replace(secret, HIDDEN)
    return text.replace(url, redact(url)) if url else text


def resolve_url(url: str | None) -> str | None:
    """The full storage URL: ``url`` (``--storage``) or ``WORKBENCH_STORAGE``; a redacted URL
    (as recorded in ``run.json``) is replaced by ``WORKBENCH_STORAGE``, which must name the
    same storage."""
    env = os.environ.get(ENV) or None
    if not url:
        return env
    if _password(url) != HIDDEN:
        return url
    if env is None:
        raise ConfigError(f"storage {url}: its password is not recorded; set {ENV} to the full URL")
    if redact(env) != url:
        raise ConfigError(f"storage {url}: {ENV} names another storage ({redact(env)})")
    return env


def open_storage(url: str):
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    url = resolve_url(url)
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(f"storage {redact(url)!r}: expected sqlite:///PATH, postgresql://USER@HOST/DB "
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
    raise ConfigError(f"storage {redact(url)}: cannot open ({redact_text(first_line(last), url)})") from None


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

        url = resolve_url(url)
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
