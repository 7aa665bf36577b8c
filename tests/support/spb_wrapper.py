"""The virtualenv holding ``mqtt-spb-wrapper`` (a Sparkplug B implementation the
project did not write), apart from the project's own: the package pins
paho-mqtt 1.6.1 and protobuf 3.20.3.  ``scripts/test.sh`` creates it before the
tests; :func:`spb_wrapper_python` creates it when it is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-spb"
REQUIREMENT = "mqtt-spb-wrapper==2.1.2"
NODE_SCRIPT = Path(__file__).with_name("spb_wrapper_node.py")


def spb_wrapper_python() -> Path:
    """The virtualenv's interpreter, with the package importable."""
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import mqtt_spb_wrapper"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", REQUIREMENT],
        check=True,
        timeout=600,
    )
    subprocess.run(check, check=True)
    return python
