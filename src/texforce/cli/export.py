"""`texforce export`: an adapter converted to the kohya (UIs), diffusers or PEFT layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from texforce.errors import TexforceError

EPILOG = """examples:
  texforce export runs/A --format kohya -o A.safetensors          # ComfyUI / Forge / AUTOMATIC1111 loras/ folder
  texforce export A.safetensors --format diffusers -o A_diffusers  # pipe.load_lora_weights("A_diffusers")
  texforce export sd-turbo_texforce --format peft -o A_peft        # a PEFT folder per text encoder
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="convert an adapter (run, lora/, PEFT folder, diffusers or kohya file) to kohya, diffusers or peft",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SRC", help="a run, its lora/ folder, a PEFT folder or a LoRA file")
    parser.add_argument("--format", required=True, choices=("kohya", "diffusers", "peft"), help="the layout to write")
    parser.add_argument("-o", "--output", required=True, help="a .safetensors file (kohya) or a folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texforce.adapters.conversion import convert_adapter
    from texforce.observe.runlog import check_writable

    output = Path(args.output)
    if output.exists():
        raise TexforceError(f"output {output} already exists")
    check_writable(output, "--output")
    print(convert_adapter(args.source, args.format, output))
    return 0
