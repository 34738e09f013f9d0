"""Every bench script has a smoke mode, and .ci/run runs the smoke mode of every one."""

import ast
import re

from tests.helpers import ROOT

BENCH = sorted((ROOT / "bench").glob("*.py"))


def _has_smoke_mode(path) -> bool:
    """`--smoke` is an argparse option of the script or compared with its argv."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value == "--smoke":
            return True
    return False


def test_every_bench_script_has_a_smoke_mode():
    assert len(BENCH) >= 8
    missing = [p.name for p in BENCH if not _has_smoke_mode(p)]
    assert missing == [], f"bench scripts without a --smoke mode: {missing}"


def test_ci_runs_the_smoke_mode_of_every_bench_script():
    ci = (ROOT / ".ci" / "run").read_text()
    # one loop over bench/*.py (so a new script is never forgotten) running --smoke,
    # failing CI when one fails
    loop = re.search(r'for (\w+) in bench/\*\.py; do\n(.*?)\ndone', ci, re.S)
    assert loop is not None
    body = loop.group(2)
    assert f'python "${loop.group(1)}" --smoke' in body and "exit 1" in body
    assert "set -euo pipefail" in ci
