"""The README's Python snippet runs as printed against a real Triton, so the README cannot drift from the code.

The snippet addresses `tritune serve`'s default gRPC port; the test serves on a free port and substitutes it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT_GRPC = "127.0.0.1:8001"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_has_one_python_snippet_for_the_default_endpoint():
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 1 and DEFAULT_GRPC in blocks[0], blocks


def test_the_readme_snippet_runs_against_a_real_server(server, tmp_path):
    code = python_blocks(README.read_text())[0].replace(DEFAULT_GRPC, server.grpc_url)
    script = tmp_path / "readme_snippet.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "predicted" in proc.stdout
