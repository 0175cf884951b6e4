"""The documentation site builds in strict mode (a broken link, reference or stale page fails),
every subpackage has an API page, and every page shows the documented version.

The build runs the tutorials in ``docs/tutorials/`` at their tiny size
(``PYRO_VAE_DOCS_QUICK=1``), so their code and figures cannot go stale.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def missing_docs_packages() -> list[str]:
    missing = []
    for name in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def test_every_subpackage_has_an_api_page():
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    subpackages = sorted({p.parent.name for p in (ROOT / "pyro_vae").glob("*/*.py")})
    assert subpackages
    for name in subpackages:
        assert f"::: pyro_vae.{name}" in pages, f"docs/api/ has no page for pyro_vae.{name}"


def tutorial_cache(request, tmp_path_factory):
    """pytest's cache folder for tutorial outputs, or a fresh one without the cache plugin."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("pyro-vae-docs-tutorials")
    return cache.mkdir("pyro-vae-docs-tutorials")


@pytest.fixture(scope="module")
def site(tmp_path_factory, request):
    missing = missing_docs_packages()
    if missing:
        pytest.skip(f"the docs extra is not installed (pip install -e '.[docs]'): {missing}")
    out = tmp_path_factory.mktemp("docs")
    env = dict(
        os.environ,
        PYRO_VAE_DOCS_QUICK="1",
        # tutorial outputs are reused while the scripts and the package are unchanged
        PYRO_VAE_DOCS_CACHE=str(tutorial_cache(request, tmp_path_factory)),
        NO_MKDOCS_2_WARNING="1",
    )
    # not -q: a quiet build drops the warnings that --strict turns into a failure
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    cmd += ["-f", str(ROOT / "mkdocs.yml"), "-d", str(out / "site")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "site"


def test_docs_build_strict(site):
    assert (site / "index.html").is_file()
    assert (site / "api" / "infer" / "index.html").is_file()
    assert (site / "search" / "search_index.json").is_file()


def test_every_page_shows_the_version(site):
    text = (ROOT / "pyro_vae" / "__init__.py").read_text()
    version = text.split('__version__ = "')[1].split('"')[0]
    pages = [p for p in site.rglob("*.html") if p.name != "404.html"]
    assert len(pages) > 10
    assert all(f"pyro-vae {version}" in p.read_text() for p in pages)


def test_tutorial_figures_are_produced_by_the_build(site):
    """Each tutorial page embeds only images its script wrote during this build."""
    for page in (ROOT / "docs" / "tutorials").glob("*.md"):
        images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text())
        for image in images:
            assert image.startswith("generated/"), f"{page.name}: {image} is not generated"
            built = site / "tutorials" / image
            assert built.is_file(), f"{page.name}: {image} was not produced"


#: A Sphinx role left in a docstring, as mkdocstrings prints it (``:class:<code>X</code>``).
RAW_ROLE = re.compile(r":(class|func|attr|meth|mod|data|exc|obj):(`|<code>)")
#: A cross-reference autorefs could not resolve, left as its Markdown source.
UNRESOLVED = re.compile(r"\]\[pyro_vae[\w.]*\]")
#: A row of an Args/Attributes table naming several entries ("num_steps, num_chains").
MERGED_ROW = re.compile(r'<tr class="doc-section-item">\s*<td>\s*<code>(<span[^>]*>)?[\w.]+,')


def test_api_pages_have_links_not_roles(site):
    """Docstrings cross-reference in the site's own syntax, ``[`Name`][pyro_vae.module.Name]``:
    no page shows a raw Sphinx role or an unresolved reference, and each documented parameter or
    attribute is a row of its own."""
    pages = [p for p in site.rglob("*.html") if p.name != "404.html"]
    problems = []
    for page in pages:
        text = page.read_text()
        for pattern in (RAW_ROLE, UNRESOLVED, MERGED_ROW):
            problems += [f"{page.relative_to(site)}: {m.group(0)}" for m in pattern.finditer(text)]
    assert not problems, problems[:20]
    links = sum(p.read_text().count("autorefs-internal") for p in pages)
    assert links > 100
