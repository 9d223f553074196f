"""mkdocs hooks (`hooks:` in mkdocs.yml): the world's model cards, as shipped with the models, become pages of the
site when it builds (world/model-card.md, world/preference-card.md, world/flow-card.md)."""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

import texforce
from texforce.world import MODEL_DIR, PREFERENCE_DIR, WORLD_FLOW_DIR

CARDS = {
    "world/model-card.md": MODEL_DIR / "README.md",
    "world/preference-card.md": PREFERENCE_DIR / "README.md",
    "world/flow-card.md": WORLD_FLOW_DIR / "README.md",
}


def card(path: Path) -> str:
    """A shipped model card, with where it lives."""
    where = path.relative_to(Path(texforce.__file__).parents[1])
    # its links into docs/ are relative to the card's folder in the repository; on the site it sits in world/
    text = path.read_text().replace("](../../../../../docs/", "](../")
    return f"_The card shipped with the model, `{where}`; shown here with its links to the docs._\n\n{text}"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for uri, path in CARDS.items():
        files.append(File.generated(config, uri, content=card(path)))
    return files
