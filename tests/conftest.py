import os
import shutil

import pytest

# Hub look-ups retry for tens of seconds before failing offline; nothing here downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_failed_modules: set[str] = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.failed:
        _failed_modules.add(item.nodeid.split("::")[0])
    return rep


@pytest.fixture(scope="module", autouse=True)
def _free_disk_after_module(request, tmp_path_factory):
    """Run directories hold checkpoints of ~90 MB each: kept to the end, the suite's temporary files reached
    4.5 GB and filled a CI machine's disk (stop 19). A module's directories go when the module ends, unless
    one of its tests failed, so that a failure can still be inspected."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.node.nodeid.split("::")[0] not in _failed_modules:
        for p in set(base.iterdir()) - before:
            shutil.rmtree(p, ignore_errors=True)
