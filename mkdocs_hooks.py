"""mkdocs hooks (`hooks:` in mkdocs.yml): the pages generated from the code when the site builds, so that none
of them can drift: the configuration and command-line references, and the world's model cards as shipped."""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

import texforce
from texforce.reference import cli_reference, config_reference
from texforce.world import MODEL_DIR, PREFERENCE_DIR

CARDS = {"world/model-card.md": MODEL_DIR / "README.md", "world/preference-card.md": PREFERENCE_DIR / "README.md"}


def card(path: Path) -> str:
    """A shipped model card, with where it lives."""
    where = path.relative_to(Path(texforce.__file__).parents[1])
    return f"_The card shipped with the model, `{where}`; shown here as it is._\n\n{path.read_text()}"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    pages = {"reference/config.md": config_reference(), "reference/cli.md": cli_reference()}
    pages |= {uri: card(path) for uri, path in CARDS.items()}
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files
