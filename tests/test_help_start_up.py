"""``--help`` of every console script and every tools/*.py answers without importing torch (the
arguments are parsed first, the package imported after), so it answers at once; a command then makes
the engine's imports with the garbage collector paused and freezes what they created
(softpool3d/startup.py)."""
import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one Python subprocess per command line

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted(path.name for path in (ROOT / "tools").glob("*.py"))

PROBE = """
import runpy, sys
sys.argv = [{target!r}, "--help"]
try:
    {call}
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
sys.stdout.write("\\ntorch imported: " + str("torch" in sys.modules))
"""


def console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip() for name, target in (line.split("=") for line in lines)}


def help_output(call: str, target: str) -> str:
    code = PROBE.format(target=target, call=call)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_help_does_not_import_torch(tool):
    output = help_output(f"runpy.run_path({str(ROOT / 'tools' / tool)!r}, run_name='__main__')", tool)
    assert "usage:" in output
    assert output.rstrip().endswith("torch imported: False")


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_console_script_help_does_not_import_torch(script):
    module, function = console_scripts()[script].split(":")
    output = help_output(f"from {module} import {function}; {function}()", script)
    assert "usage:" in output
    assert output.rstrip().endswith("torch imported: False")


def test_the_probe_sees_torch_when_a_script_imports_it(tmp_path):
    """The check can fail: a script importing torch before parsing is caught."""
    script = tmp_path / "eager.py"
    script.write_text("import argparse, torch\nargparse.ArgumentParser().parse_args()\n")
    output = help_output(f"runpy.run_path({str(script)!r}, run_name='__main__')", "eager.py")
    assert output.rstrip().endswith("torch imported: True")


GC_PROBE = """
import gc, json, sys
{call}
print(json.dumps({{"torch": "torch" in sys.modules, "full_collections": gc.get_stats()[2]["collections"],
                  "frozen": gc.get_freeze_count(), "enabled": gc.isenabled()}}))
"""


def gc_after(call: str) -> dict:
    done = subprocess.run([sys.executable, "-c", GC_PROBE.format(call=call)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_command_imports_the_engine_without_collecting_and_freezes_it(tmp_path):
    """``softpool3d-test`` on a missing checkpoint (a user error, exit 2, after the engine's imports):
    no full collection ran while torch and the engine were imported, everything they made is in the
    collector's permanent generation, and the collector is on again for the job."""
    call = (f"from softpool3d.engine.cli import test_main\n"
            f"assert test_main([{str(tmp_path / 'missing.pt')!r}]) == 2")
    state = gc_after(call)
    assert state["torch"] and state["enabled"]
    assert state["full_collections"] == 0
    assert state["frozen"] > 100_000


def test_the_gc_probe_sees_the_collections_of_imports_made_as_usual():
    """The check can fail: the same imports with the collector on run full collections and freeze nothing."""
    state = gc_after("from softpool3d.engine.cli import user_errors\nuser_errors()")
    assert state["torch"] and state["enabled"]
    assert state["full_collections"] > 0
    assert state["frozen"] == 0
