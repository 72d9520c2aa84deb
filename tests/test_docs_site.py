"""The documentation site: it builds strictly, its generated references match the code, and in a real browser
its equations are typeset, its figures load, nothing comes from the network, and at 1300 px every table and code
block fits or scrolls inside its box.

The build (``mkdocs build --strict``, which fails on a broken link, anchor or cross-reference) runs once per
session into a temporary directory. The browser checks open the built pages in Debian's headless Chromium
through chromedriver (selenium), served from a local HTTP server on 127.0.0.1, and read what a reader sees:
``document.body.innerText`` (hidden nodes, such as KaTeX's MathML copy of the TeX, are not part of it), the
KaTeX elements, each image's ``naturalWidth`` and the page's resource timings. A full-page screenshot of the
Diffusion models page is written to docs/_screenshots/ (ignored by git) for a person to look at.

Without the docs tools (``pip install -c constraints.txt -e ".[dev]"``) or Chromium (Debian's ``chromium``
and ``chromium-driver``) the tests skip with the reason; under CI (``CI=true``) they fail instead, so that CI can
never pass without building the site.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "docs" / "_screenshots"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
MATH_PAGES = (
    "index.html",
    "diffusion-models/index.html",
    "samplers/index.html",
    "downscaling/index.html",
    "climate-workloads/index.html",
    "calibration/index.html",
    "benchmarks/index.html",
)
"""Pages with equations (each must have typeset math and no raw TeX left in its visible text)."""
FIGURE_PAGES = ("index.html", "diffusion-models/index.html", "downscaling/index.html")
"""Pages with figures (each must show at least one image, all loaded)."""
RAW_TEX = re.compile(r"\\[A-Za-z]+|\$\$|\\\(|\\\[|\\\)|\\\]|\^\{|_\{")
"""What raw TeX leaves in visible text: a control word (\\frac, \\sigma), $$, \\( \\[ delimiters, ^{ or _{."""


def _missing(reason: str) -> None:
    """Skip, or fail under CI, where the site must be built and checked."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the documentation checks must run)")
    pytest.skip(reason)


def _require_docs_tools() -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        try:
            importlib.import_module(module)
        except ImportError:
            _missing(f"{module} is not installed: pip install -c constraints.txt -e '.[dev]'")


@pytest.fixture(scope="session")
def site() -> Iterator[Path]:
    """The site, built from this checkout by ``mkdocs build --strict`` into a temporary directory."""
    _require_docs_tools()
    with tempfile.TemporaryDirectory(prefix="diffscale-site-") as directory:
        site_dir = Path(directory) / "site"
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
        result = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
        yield site_dir


def _page(site: Path, path: str) -> str:
    return (site / path).read_text(encoding="utf-8")


class _TextAndRefs(HTMLParser):
    """The visible text of an HTML page (without scripts and styles) and its script/stylesheet/image URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.refs: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        if tag in ("script", "img") and values.get("src"):
            self.refs.append(values["src"])
        if tag == "link" and values.get("href") and values.get("rel") in ("stylesheet", "preload", "icon"):
            self.refs.append(values["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def _parse(html: str) -> _TextAndRefs:
    parser = _TextAndRefs()
    parser.feed(html)
    return parser


# -- the build --------------------------------------------------------------------------------------------------
def test_every_page_of_the_nav_is_built(site: Path) -> None:
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # mkdocs' !ENV-style tags, if any
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)

    def pages(nav: object) -> Iterator[str]:
        if isinstance(nav, str):
            yield nav
        elif isinstance(nav, dict):
            for value in nav.values():
                yield from pages(value)
        elif isinstance(nav, list):
            for item in nav:
                yield from pages(item)

    sources = list(pages(config["nav"]))
    assert "diffusion-models.md" in sources and "reference/configuration.md" in sources
    for source in sources:
        built = (
            "index.html" if source == "index.md" else source.removesuffix(".md").removesuffix("/index") + "/index.html"
        )
        assert (site / built).is_file(), f"{source} was not built ({built})"


def test_no_asset_comes_from_the_network(site: Path) -> None:
    """Scripts, stylesheets, icons and images are files of the site; the KaTeX fonts are bundled."""
    for page in site.rglob("*.html"):
        for ref in _parse(page.read_text(encoding="utf-8")).refs:
            assert not re.match(r"^(https?:)?//", ref), f"{page.relative_to(site)} loads {ref} from the network"
    css = (site / "assets" / "katex" / "katex.min.css").read_text()
    fonts = set(re.findall(r"url\((fonts/[^)]+\.woff2)\)", css))
    assert len(fonts) >= 19
    for font in fonts:
        assert (site / "assets" / "katex" / font).is_file(), font


def _reference_sections(html: str) -> dict[str, set[str]]:
    """Heading text -> the keys (first cells) of the table under it, from the built configuration page."""
    sections: dict[str, set[str]] = {}
    for chunk in re.split(r"<h[23] ", html)[1:]:
        title = re.sub(r"<[^>]+>", "", chunk.split("</h", 1)[0].split(">", 1)[1]).replace("&para;", "").strip()
        sections[title] = set(re.findall(r"<tr>\s*<td><code>([^<]+)</code></td>", chunk))
    return sections


def test_configuration_reference_lists_every_key_with_its_choices(site: Path) -> None:
    from diffscale.config.reference import reference_rows
    from diffscale.sampling import SOLVERS

    html = _page(site, "reference/configuration/index.html")
    sections = _reference_sections(html)
    for section, key, _, _ in reference_rows():  # "diffusion (type: VE)" is the heading "diffusion: {type: VE}"
        title = re.sub(r"^(\w+) \((\w+): (\w+)\)$", r"\1: {\2: \3}", section)
        title = title if "{" in title else f"{title}:"
        assert key in sections.get(title, ()), f"{section}: {key} missing from the configuration reference"
    text = " ".join("".join(_parse(html).text).split())
    for solver in SOLVERS:  # sampling.sampler's allowed values, listed from the Literal
        assert solver in text
    assert "one of fp32, bf16, fp16" in text  # training.precision's choices
    assert "channels.hour" in sections["data: {kind: climate}"]  # nested keys, dotted
    assert "> 0, < 1" in text  # VP's epsilon_s bounds


def test_cli_reference_lists_every_command_and_option(site: Path) -> None:
    from diffscale.cli.main import build_parser

    text = " ".join("".join(_parse(_page(site, "reference/cli/index.html")).text).split())
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) >= {"train", "sample", "likelihood", "downscale", "evaluate", "demo"}
    for name, subparser in commands.items():
        assert f"diffscale {name}" in text
        for action in subparser._actions:
            for option in action.option_strings:
                assert option in text, f"diffscale {name} {option} missing from the CLI reference"


def test_api_reference_renders_the_listed_modules(site: Path) -> None:
    index = _page(site, "reference/api/index.html")
    for module in ("diffscale", "diffscale.formulations", "diffscale.sampling", "diffscale.downscaling"):
        page = site / "reference" / "api" / module / "index.html"
        assert page.is_file(), module
        assert f'href="{module}/"' in index
    sampling = _page(site, "reference/api/diffscale.sampling/index.html")
    assert 'id="diffscale.sampling.sample"' in sampling
    assert "Draw samples by solving the reverse-time ODE" in sampling  # the docstring's summary


# -- in the browser ---------------------------------------------------------------------------------------------
def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser(site: Path) -> Iterator[tuple[object, str]]:
    """(a headless Chromium driven by chromedriver, the base URL of the site served on 127.0.0.1)."""
    try:
        importlib.import_module("selenium.webdriver")
    except ImportError:
        _missing("selenium is not installed: pip install -c constraints.txt -e '.[dev]'")
    chromium = _binary("chromium", "chromium-browser")
    driver_path = _binary("chromedriver")
    if chromium is None or driver_path is None:
        _missing("Chromium or chromedriver not found: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    profile = tempfile.mkdtemp(prefix="diffscale-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)  # no driver download
    driver.set_page_load_timeout(60)
    try:
        yield driver, f"http://127.0.0.1:{server.server_port}/"
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
        shutil.rmtree(profile, ignore_errors=True)


def _open(browser: tuple[object, str], path: str) -> dict:
    """Load a page, wait until its math is typeset and its images are decoded, and report what it shows."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    driver, base = browser
    driver.get(base + path)
    loaded = "return document.readyState === 'complete' && [...document.images].every(img => img.complete)"
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(loaded))
    typeset = (
        "return document.querySelectorAll('.arithmatex').length"
        " === document.querySelectorAll('.arithmatex .katex, .arithmatex .katex-error').length"
    )
    # KaTeX runs on page load; what is still raw after a few seconds stays raw (the tests then say what)
    with contextlib.suppress(TimeoutException):
        WebDriverWait(driver, 10).until(lambda d: d.execute_script(typeset))
    return driver.execute_script(
        """
        const article = document.querySelector('article');
        return {
          text: article.innerText,
          arithmatex: document.querySelectorAll('.arithmatex').length,
          katex: article.querySelectorAll('.katex').length,
          displays: article.querySelectorAll('.katex-display').length,
          errors: article.querySelectorAll('.katex-error').length,
          images: [...article.querySelectorAll('img')].map(img => [img.src, img.naturalWidth]),
          resources: performance.getEntriesByType('resource').map(entry => entry.name),
          katexFont: document.fonts.check('16px KaTeX_Main'),
        };
        """
    )


@pytest.mark.parametrize("path", MATH_PAGES)
def test_equations_are_typeset(browser: tuple[object, str], path: str) -> None:
    shown = _open(browser, path)
    assert shown["katex"] > 0, "no typeset equation"
    assert shown["katex"] + shown["errors"] == shown["arithmatex"], "some formulas were not typeset"
    assert shown["errors"] == 0, "KaTeX could not parse an equation"
    leftovers = sorted(set(RAW_TEX.findall(shown["text"])))
    assert not leftovers, f"raw TeX left in the visible text of {path}: {leftovers}"
    assert shown["katexFont"], "KaTeX's fonts did not load"


@pytest.mark.parametrize("path", FIGURE_PAGES)
def test_figures_load(browser: tuple[object, str], path: str) -> None:
    shown = _open(browser, path)
    assert shown["images"], f"{path} shows no figure"
    for source, width in shown["images"]:
        assert width > 0, f"{source} did not load"


def test_pages_load_nothing_from_the_network(browser: tuple[object, str]) -> None:
    _, base = browser
    for path in (*MATH_PAGES, "reference/api/diffscale/index.html"):
        for url in _open(browser, path)["resources"]:
            assert url.startswith(base), f"{path} requested {url}"


def test_diffusion_models_page_renders_and_is_captured(browser: tuple[object, str]) -> None:
    """Every formula of the theory page is typeset (the display ones as displays); a screenshot is kept."""
    driver, _ = browser
    shown = _open(browser, "diffusion-models/index.html")
    source = (ROOT / "docs" / "diffusion-models.md").read_text()
    inline = len(re.findall(r"(?<![$\\])\$(?!\$)[^$\n]+?(?<!\\)\$", source))
    display = source.count("$$") // 2
    assert shown["arithmatex"] == inline + display, "a formula of the source was not recognised as math"
    assert shown["displays"] == display
    assert shown["katex"] == inline + display
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    import base64

    SCREENSHOTS.mkdir(exist_ok=True)
    target = SCREENSHOTS / "diffusion-models.png"
    target.write_bytes(base64.b64decode(shot["data"]))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- tables and code at 1300 px -----------------------------------------------------------------------------------
WIDTH_PAGES = (
    "index.html",
    "overview/index.html",
    "diffusion-models/index.html",
    "samplers/index.html",
    "downscaling/index.html",
    "climate-workloads/index.html",
    "foreign-input/index.html",
    "calibration/index.html",
    "training/index.html",
    "benchmarks/index.html",
    "reference/configuration/index.html",
    "reference/cli/index.html",
)
"""The pages whose tables and code blocks are checked at 1300 px."""
BOXES = """
const column = document.querySelector('.md-content').getBoundingClientRect();
return [...document.querySelectorAll('article table, article pre')].map(found => {
  // a code block's content is its code element; the box is the nearest element from there (from a table's parent)
  // that scrolls sideways (Material's table wrapper, the code element), else the text column
  const element = found.tagName === 'PRE' ? found.querySelector('code') || found : found;
  let box = element.tagName === 'TABLE' ? element.parentElement : element;
  while (box && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX)) box = box.parentElement;
  const boxRect = (box || document.querySelector('.md-content')).getBoundingClientRect();
  return {
    kind: found.tagName,
    text: found.innerText.slice(0, 60),
    width: element.scrollWidth,
    fits: element.getBoundingClientRect().right <= boxRect.right + 1 && element.scrollWidth <= boxRect.width + 1,
    scrolls: box !== null && box.scrollWidth > box.clientWidth,
    boxInside: boxRect.left >= column.left - 1 && boxRect.right <= column.right + 1,
  };
});
"""


@contextlib.contextmanager
def _viewport(driver: object, width: int, height: int = 1000) -> Iterator[None]:
    """The page laid out for a window of ``width`` x ``height`` CSS pixels (Chromium's device metrics override)."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        yield
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_tables_and_code_fit_or_scroll_inside_their_box_at_1300_px(browser: tuple[object, str]) -> None:
    """At 1300 px (both sidebars shown) every table and code block either fits its box or its box scrolls sideways,
    and the box stays inside the text column; the widest table of the site is one of them, and the formulations
    table (five columns of formulas) fits whole, its EDM column visible."""
    driver, _ = browser
    widest: dict | None = None
    with _viewport(driver, 1300):
        assert driver.execute_script("return window.innerWidth") == 1300
        for path in WIDTH_PAGES:
            _open(browser, path)
            for box in driver.execute_script(BOXES):
                where = f"{path}: {box['kind']} '{box['text']}'"
                assert box["boxInside"], f"{where} lies outside the text column"
                assert box["fits"] or box["scrolls"], f"{where} ({box['width']} px) neither fits nor scrolls"
                if box["kind"] == "TABLE" and (widest is None or box["width"] > widest["width"]):
                    widest = {**box, "page": path}
            if path == "diffusion-models/index.html":
                formulations = next(b for b in driver.execute_script(BOXES) if "iDDPM\tEDM" in b["text"])
                assert formulations["fits"], f"the formulations table ({formulations['width']} px) does not fit"
    assert widest is not None and (widest["fits"] or widest["scrolls"]), widest
