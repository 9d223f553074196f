"""texforce: reward fine-tuning of text-to-image diffusion models through their text encoder (TexForce: DDPO, or
direct reward backprop, on a LoRA of the text encoder while the U-Net stays frozen).

    import texforce
    config = texforce.load_config("default", ["train.num_epochs=5"])  # a shipped config + key=value overrides
    run_dir = texforce.train(config)                                    # adapters in run_dir / "lora"

The names load on first use, so that `import texforce` (and `texforce --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

EXPORTS = {
    "RunConfig": "texforce.run.run_config:RunConfig",
    "load_config": "texforce.run.run_config:load_config",
    "train": "texforce.run.train:train",
    "WORLD_MODEL_DIR": "texforce.world:MODEL_DIR",
}
__all__ = sorted(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'texforce' has no attribute {name!r}")
    module, _, attribute = EXPORTS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
