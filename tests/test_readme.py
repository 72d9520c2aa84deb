"""The README stays true: it is a front page of at most 250 lines whose links reach files of the repository, its
first two commands are the set-up commands that CI runs, its Python blocks run as pasted, and every command it
shows parses."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CI_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "run"


def test_readme_is_a_front_page_whose_links_resolve() -> None:
    """At most 250 lines; every relative link names a file of the repository (and a heading of it, for a docs
    page's anchor); every page of the documentation site's nav is listed."""
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#([^)]+))?\)", text)
    assert links
    for path, anchor in links:
        target = README.parent / path
        assert target.exists(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)
            slugs = {re.sub(r"[^\w\s-]", "", heading.lower()).strip().replace(" ", "-") for heading in headings}
            assert anchor in slugs, f"{path}#{anchor}"
    for page in re.findall(r"^  - [^:]+: (\S+\.md)$", (README.parent / "mkdocs.yml").read_text(), flags=re.M):
        assert f"](docs/{page})" in text, f"the README does not list docs/{page}"


def test_first_two_commands_are_demo_and_tests() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = [line for line in blocks[0].splitlines() if line.strip()]
    assert commands[0].endswith("diffscale demo")
    assert "pytest" in commands[1]
    install, test = commands[1].split(" && ")
    ci = CI_SCRIPT.read_text()
    assert install.replace("pip install", "").strip() in ci and test.strip() in ci


# -- every code block runs as pasted -------------------------------------------------------------------------
SHARED = README.parents[1] / "shared"
CONFIGS = README.parent / "configs"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=environment)


def test_python_blocks_without_data_run_as_pasted(tmp_path: Path) -> None:
    blocks = [block for block in _blocks("python") if "load_run" not in block]
    assert blocks, "the README has Python blocks"
    for block in blocks:
        result = _run_python(block, tmp_path)
        assert result.returncode == 0, f"{block}\n{result.stderr[-2000:]}"


def _shared_with_two_variables(shared: Path) -> None:
    """A ../shared whose UK file holds u10 [m s-1] beside t2m (the wind made from the temperature anomaly: any field
    of plausible values serves), the other files linked to the real ones."""
    import xarray as xr

    data = shared / "data"
    data.mkdir(parents=True)
    for path in (SHARED / "data").iterdir():
        if path.name != "era5_t2m_uk_2019-03.nc":
            (data / path.name).symlink_to(path)
    with xr.open_dataset(SHARED / "data" / "era5_t2m_uk_2019-03.nc") as uk:
        uk = uk.load()
    u10 = (0.8 * (uk["t2m"] - uk["t2m"].mean())).astype("float32")
    uk.assign(u10=u10.assign_attrs(units="m s-1", long_name="10 metre U wind component")).to_netcdf(
        data / "era5_t2m_uk_2019-03.nc"
    )


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="real data directory ../shared/data is absent")
@pytest.mark.parametrize("variables", ["[t2m]", "[t2m, u10]"])
def test_python_blocks_with_a_trained_run_run_as_pasted(variables: str, tmp_path: Path) -> None:
    """In a checkout-like folder (../shared beside it): train configs/era5_uk.yaml briefly, then run each block; also
    on a run of two variables (t2m and u10), where every figure must be asked for one of them."""
    repo = tmp_path / "repo"
    repo.mkdir()
    if variables == "[t2m]":
        (tmp_path / "shared").symlink_to(SHARED)
    else:
        _shared_with_two_variables(tmp_path / "shared")
    train = [sys.executable, "-m", "diffscale", "train", str(CONFIGS / "era5_uk.yaml"), "--out", "runs/era5_uk"]
    train += ["--set", "training.steps=2", "--set", "training.sample_every=0", "--no-progress"]
    train += ["--set", f"data.variables={variables}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    trained = subprocess.run(train, cwd=repo, capture_output=True, text=True, env=environment)
    assert trained.returncode == 0, trained.stderr[-2000:]
    blocks = [block for block in _blocks("python") if "load_run" in block]
    assert blocks
    for block in blocks:
        result = _run_python(block, repo)
        assert result.returncode == 0, f"{block}\n{result.stderr[-2000:]}"


def _command_lines() -> list[list[str]]:
    """Every ``diffscale`` command of the bash blocks (continued lines joined, comments dropped), as argv."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "diffscale" in words:
                commands.append(words[words.index("diffscale") + 1 :])
    return commands


def test_every_command_in_the_readme_parses_and_names_files_that_exist() -> None:
    """Each command's options are the command's (parsed by the real parser), and the configurations and
    ../shared files it names exist; the commands run for real in the tests of each command."""
    from diffscale.cli.main import build_parser

    commands = _command_lines()
    assert len(commands) > 15
    parser = build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"'diffscale {' '.join(argv)}' does not parse")
        for word in argv:
            if word.startswith("configs/"):
                assert (README.parent / word).is_file(), word
            if word.startswith("../shared/") and SHARED.is_dir():
                assert (README.parent / word).exists(), word
