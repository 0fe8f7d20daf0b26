"""The app process stays within its memory budget: `python app.py` on both bundled models, measured from outside
by scripts/app_memory.py (VmRSS from /proc), right after start-up and after a /generate and a /compare call."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc/<pid>/status (Linux)")


@pytest.fixture(scope="module")
def app_memory():
    spec = importlib.util.spec_from_file_location("app_memory", ROOT / "scripts" / "app_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["app_memory"] = module
    spec.loader.exec_module(module)
    return module


def test_the_app_with_both_bundled_models_stays_under_600_mb_rss(app_memory, loopback):
    assert app_memory.BUDGET_MB == 600  # the project's target (README "Performance")
    r = app_memory.measure(max_tokens=40, seed=3)  # short stories: the test takes ~15 s, mostly start-up
    assert r["generate"]["tokens"] > 0 and r["compare"]["tokens"] > 0  # it served stories
    assert r["start"]["rss_mb"] <= 600, r
    assert r["after"]["rss_mb"] <= 600, r
    assert r["within_budget"]
