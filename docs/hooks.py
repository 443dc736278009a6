"""MkDocs hooks: add the generated pages (``reference_pages.pages()``) to the site at build time,
so the command, config and model references always match the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.structure.files import File


def _generator():
    path = Path(__file__).with_name("reference_pages.py")
    spec = importlib.util.spec_from_file_location("upres_reference_pages", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files, config):
    for uri, text in _generator().pages().items():
        files.append(File.generated(config, uri, content=text))
    return files
