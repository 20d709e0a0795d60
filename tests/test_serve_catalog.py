"""The adapters directory mirrored into the bank (`nola.serve.catalog`), without a server: what a
replacement that never completes, a path-like name and a removal do to what is served."""

from __future__ import annotations

import copy
import os
import shutil
import time

from bank_support import save_random_adapters, tiny_base

from nola.adapters.bank import AdapterBank
from nola.adapters.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from nola.model import base_fingerprint
from nola.serve.catalog import WRITE_SETTLE_S, AdapterCatalog

NOLA = dict(kind="nola", rank=2, alpha=2, num_basis_a=8, num_basis_b=8, base_seed=3)


def test_a_replacement_that_never_completes_is_withdrawn_once_settled(tmp_path):
    base = tiny_base()
    adapters = save_random_adapters(base, tmp_path / "adapters", {"one": NOLA, "two": NOLA})
    save_random_adapters(base, tmp_path / "new", {"one": NOLA}, seed=4)
    bank = AdapterBank(copy.deepcopy(base), base_fingerprint(base))
    catalog = AdapterCatalog(bank, adapters, rescan_s=1.0)
    catalog.refresh()
    first = bank.adapters["one"]
    shutil.copy(tmp_path / "new" / "one" / WEIGHTS_FILE, adapters / "one" / WEIGHTS_FILE)  # the config never follows
    catalog.refresh()
    assert bank.adapters["one"] is first and catalog.failures["one"].being_written()
    then = time.time() - 2 * WRITE_SETTLE_S
    for path in (adapters / "one").iterdir():
        os.utime(path, (then, then))
    catalog.refresh()  # the same files, now settled: broken, and the old version withdrawn
    assert "one" not in bank.adapters and not catalog.failures["one"].being_written()
    assert "weights_sha256 differs" in catalog.withdrawal(first) and catalog.withdrawal(bank.adapters["two"]) is None
    shutil.copy(tmp_path / "new" / "one" / CONFIG_FILE, adapters / "one" / CONFIG_FILE)
    catalog.refresh()
    assert bank.adapters["one"].version > first.version and "one" not in catalog.failures
    shutil.rmtree(adapters / "two")
    catalog.refresh()
    assert catalog.names() == ["base", "one"]


def test_names_that_are_not_plain_directory_names_are_never_looked_up(tmp_path):
    base = tiny_base()
    adapters = save_random_adapters(base, tmp_path / "adapters", {"one": NOLA})
    save_random_adapters(base, tmp_path, {"outside": NOLA})
    catalog = AdapterCatalog(AdapterBank(copy.deepcopy(base), base_fingerprint(base)), adapters, rescan_s=1.0)
    for name in ("../outside", "..", ".hidden", "base", "", "a/b"):
        assert catalog.path_of(name) is None
        catalog.refresh(only=name)
    assert catalog.bank.adapters == {} and catalog.failures == {}
    catalog.refresh(only="one")
    assert list(catalog.bank.adapters) == ["one"]


def test_a_basis_is_kept_while_a_loaded_adapter_uses_it(tmp_path):
    base = tiny_base()
    other = dict(NOLA, base_seed=4)
    adapters = save_random_adapters(base, tmp_path / "adapters", {"one": NOLA, "two": NOLA, "three": other})
    bank = AdapterBank(copy.deepcopy(base), base_fingerprint(base))
    for name in ("one", "two", "three"):
        bank.add(name, adapters / name)
    bank.factors(["one", "two", "three"])
    shared = bank.shared_bases
    assert shared > 0
    bank.remove("three")  # its own bases go
    assert 0 < bank.shared_bases < shared
    kept = bank.shared_bases
    bank.remove("one")  # "two" still uses the same bases
    assert bank.shared_bases == kept
    bank.add("two", adapters / "two")  # a new version of the same adapter keeps them too
    assert bank.shared_bases == kept
    bank.remove("two")
    assert bank.shared_bases == 0
