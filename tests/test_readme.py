"""The README stays true: its configuration reference is the schema's, and its first two commands are the
set-up commands that CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from diffscale.config import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"
CI_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "run"


def test_configuration_reference_is_up_to_date() -> None:
    assert config_reference().strip() in README.read_text(), "regenerate the README table with config_reference()"


def test_first_two_commands_are_demo_and_tests() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = [line for line in blocks[0].splitlines() if line.strip()]
    assert commands[0].endswith("diffscale demo")
    assert "pytest" in commands[1]
    install, test = commands[1].split(" && ")
    ci = CI_SCRIPT.read_text()
    assert install.replace("pip install", "").strip() in ci and test.strip() in ci
