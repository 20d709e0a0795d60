"""The server's adapters directory, mirrored into its adapter bank while it serves.

Every subdirectory of `serve.adapters_dir` is an adapter named after it (dot-named ones, which is
where a writer should build a new adapter before renaming it into place, are skipped). The catalog
rescans the directory every `rescan_s` seconds (a background thread of the server) and a single
subdirectory whenever a request names an adapter it does not hold, so an adapter copied in is
served at once. What a request for an adapter gets, directory by directory:

- complete and loadable: served; a directory whose files change is reloaded as a new version
  (`nola.adapters.bank.BankedAdapter`), and a search that began with the old version ends with it;
- being written (files missing, truncated, or not the weights the config names, changed less than
  `WRITE_SETTLE_S` ago): 503 with Retry-After while nothing of it was served before; a replacement
  caught half-way leaves the previous version served until the new one is whole, so old and new
  factors never mix and clients see no gap;
- broken (such files not changed for `WRITE_SETTLE_S`, or a config for another base, a wrong
  shape, non-finite values): 500 naming the file and the reason, and a previous version is withdrawn;
- removed: 404; a request queued for it before the removal is answered 410 when its turn comes
  (`withdrawal`), one already decoding finishes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nola.adapters.bank import AdapterBank, BankedAdapter
from nola.adapters.checkpoint import IncompleteAdapter, adapter_files_signature
from nola.errors import NolaError

BASE_NAME = "base"  # the name that asks for the base model alone
WRITE_SETTLE_S = 2.0  # incomplete files unchanged this long are taken as broken, not as being written
log = logging.getLogger("nola.serve")


@dataclass(frozen=True)
class LoadFailure:
    """Why a directory's current files could not be loaded, and when they last changed."""

    reason: str
    signature: tuple | None  # `adapter_files_signature` of the files that failed
    incomplete: bool  # the files may be mid-write (`IncompleteAdapter`)
    changed_at: float  # time.time() of the newest file's modification

    def being_written(self, now: float | None = None) -> bool:
        """True while the failure may be a write in progress: incomplete files changed recently."""
        return self.incomplete and (time.time() if now is None else now) - self.changed_at < WRITE_SETTLE_S


class AdapterCatalog:
    """See the module docstring. `directory` None: the base only."""

    def __init__(self, bank: AdapterBank, directory: str | Path | None, rescan_s: float) -> None:
        self.bank, self.rescan_s = bank, rescan_s
        self.directory = Path(directory) if directory is not None else None
        self.failures: dict[str, LoadFailure] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return [BASE_NAME, *sorted(self.bank.adapters)]

    def path_of(self, name: str) -> Path | None:
        """The directory adapter `name` lives in; None for a name no directory can have."""
        if self.directory is None or not name or name.startswith(".") or name == BASE_NAME or Path(name).name != name:
            return None
        return self.directory / name

    def refresh(self, only: str | None = None) -> None:
        """Mirror the directory (or only the subdirectory `only`) into the bank."""
        if self.directory is None:
            return
        with self._lock:
            if only is not None:
                path = self.path_of(only)
                if path is not None:
                    self._sync(only, path if path.is_dir() else None)
                return
            found = {path.name: path for path in sorted(self.directory.iterdir())
                     if path.is_dir() and self.path_of(path.name) is not None} if self.directory.is_dir() else {}
            for name in (set(self.bank.adapters) | set(self.failures)) - set(found):
                self._sync(name, None)
            for name, path in found.items():
                self._sync(name, path)

    def _sync(self, name: str, path: Path | None) -> None:
        signature = adapter_files_signature(path) if path is not None else None
        if signature is None:  # removed (or an empty directory: nothing written yet)
            if name in self.bank.adapters:
                log.info("adapter %s removed", name)
            self.bank.remove(name)
            self.failures.pop(name, None)
            return
        loaded, failure = self.bank.adapters.get(name), self.failures.get(name)
        if loaded is not None and loaded.signature == signature:
            self.failures.pop(name, None)
            return
        if failure is None or failure.signature != signature:
            try:
                version = self.bank.add(name, path)
            except NolaError as err:
                failure = LoadFailure(str(err), signature, isinstance(err, IncompleteAdapter), _changed_at(signature))
                self.failures[name] = failure
                log.warning("adapter %s not loaded: %s", name, err)
            else:
                self.failures.pop(name, None)
                log.info("loaded adapter %s (version %s) from %s", name, version.digest, path)
                return
        if loaded is not None and not failure.being_written():
            log.warning("adapter %s withdrawn: %s", name, failure.reason)
            self.bank.remove(name)

    def watch(self, stop: threading.Event) -> None:
        """Refresh every `rescan_s` seconds until `stop` is set (the server's background thread)."""
        while not stop.wait(self.rescan_s or 1.0):
            try:
                self.refresh()
            except OSError as err:  # an unreadable directory is reported, and looked at again next time
                log.warning("cannot scan %s: %s", self.directory, err)

    def withdrawal(self, adapter: BankedAdapter | None) -> str | None:
        """Why a request pinned to `adapter` cannot start any more (None: it can). A replaced
        adapter's old version still can; a removed or withdrawn one cannot."""
        if adapter is None or adapter.name in self.bank.adapters:
            return None
        failure = self.failures.get(adapter.name)
        return f"adapter {adapter.name!r} was withdrawn while the request was queued: " + (
            failure.reason if failure is not None else "its directory was removed")


def _changed_at(signature: tuple) -> float:
    return max(entry[1] for entry in signature if entry is not None) / 1e9
