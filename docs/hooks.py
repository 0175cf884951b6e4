"""MkDocs hooks: the library's version on every page, and tutorials executed at build time.

Each tutorial, a ``docs/tutorials/NAME.py`` script beside its page ``NAME.md`` (underscores
in the script's name are hyphens in the page's; other scripts there are modules the tutorials
import), runs once per change (its source, the package's sources
and the size setting are hashed) with ``PYRO_VAE_TUTORIAL_OUT`` naming a fresh folder in the
cache (``.docs-cache/`` or ``$PYRO_VAE_DOCS_CACHE``). What it writes there is published under
``tutorials/generated/<script>/``, so every figure a page shows was produced by the code the
page prints. ``PYRO_VAE_DOCS_QUICK=1`` runs the scripts at their tiny test size.

In a page, ``<!-- source: NAME.py -->`` becomes the script's code and
``<!-- output: NAME/FILE.md -->`` the text the script wrote to that file.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

TUTORIALS = "tutorials"
FIGURE_SUFFIXES = (".png", ".svg")
MARKER = re.compile(r"<!-- (source|output): ([\w./-]+) -->")


def package_version(root: Path) -> str:
    """``__version__`` from ``pyro_vae/__init__.py``, read without importing the package."""
    tree = ast.parse((root / "pyro_vae" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise PluginError("pyro_vae/__init__.py has no __version__")


def cache_dir(root: Path) -> Path:
    return Path(os.environ.get("PYRO_VAE_DOCS_CACHE", root / ".docs-cache")).resolve()


def quick() -> bool:
    return os.environ.get("PYRO_VAE_DOCS_QUICK", "") == "1"


def fingerprint(script: Path, root: Path) -> str:
    digest = hashlib.sha256(f"quick={quick()}".encode())
    for path in [script, *sorted((root / "pyro_vae").rglob("*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_tutorial(script: Path, root: Path) -> Path:
    """Run ``script`` unless its outputs are current; -> the folder of its outputs."""
    out = cache_dir(root) / script.stem
    stamp = out / ".stamp"
    key = fingerprint(script, root)
    if stamp.is_file() and stamp.read_text() == key:
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = dict(os.environ, PYRO_VAE_TUTORIAL_OUT=str(out), PYTHONPATH=str(root))
    if quick():
        env["PYRO_VAE_TUTORIAL_QUICK"] = "1"
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=out, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise PluginError(f"tutorial {script.name} failed:\n{tail}")
    stamp.write_text(key)
    return out


def on_config(config):
    """Show the documented version in the header and the footer of every page."""
    root = Path(config.config_file_path).parent
    version = package_version(root)
    config.site_name = f"pyro-vae {version}"
    config.copyright = f"Documentation of pyro-vae {version}"
    config.extra["version"] = version
    return config


def tutorial_scripts(docs_dir: Path) -> list[Path]:
    """The scripts of ``docs/tutorials/`` that have a page of their own."""
    folder = docs_dir / TUTORIALS
    return [
        p
        for p in sorted(folder.glob("*.py"))
        if (folder / f"{p.stem.replace('_', '-')}.md").is_file()
    ]


def on_files(files, config):
    """Run the tutorials and publish their outputs next to their pages."""
    root = Path(config.config_file_path).parent
    for script in tutorial_scripts(Path(config.docs_dir)):
        out = run_tutorial(script, root)
        for path in sorted(out.rglob("*")):
            # figures are published; text is inlined by on_page_markdown; anything else a
            # tutorial writes (run directories, checkpoints) stays in the cache
            if path.is_file() and path.suffix in FIGURE_SUFFIXES:
                uri = f"{TUTORIALS}/generated/{script.stem}/{path.relative_to(out).as_posix()}"
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Replace source and output markers with the script and the text it wrote."""
    root = Path(config.config_file_path).parent

    def replace(match: re.Match) -> str:
        kind, name = match.groups()
        if kind == "source":
            path = Path(config.docs_dir) / TUTORIALS / name
            if not path.is_file():
                raise PluginError(f"{page.file.src_uri}: no tutorial script {name}")
            return f"```python\n{path.read_text().rstrip()}\n```"
        path = cache_dir(root) / name
        if not path.is_file():
            raise PluginError(f"{page.file.src_uri}: the tutorial wrote no {name}")
        return path.read_text().rstrip()

    return MARKER.sub(replace, markdown)
