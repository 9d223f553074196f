"""`texforce diagnose snr`: the signal-to-noise ratio of a config's gradient estimate, before training with it."""

from __future__ import annotations

import argparse
import json

from texforce.errors import TexforceError

EPILOG = """examples:
  texforce diagnose snr                                   # the default run's gradient (direct backprop)
  texforce diagnose snr world_ddpo --batches 8            # DDPO's, 64 samples per batch
  texforce diagnose snr world_ddpo ddpo.window_size=0 ddpo.timestep_fraction=0.5   # the whole chain stochastic
Each batch's gradient is computed at the same (initial) policy from independent samples; the mean pairwise
cosine c gives the squared signal-to-noise ratio of one batch, c / (1 - c), and how many samples a batch needs
for SNR² = 1 (cosine ≈ 0.7 with the true gradient).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="measure a config's gradient signal-to-noise ratio (size batches before long runs)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=["snr"], help="snr: gradient agreement between independent batches")
    parser.add_argument("args", nargs="*", metavar="CONFIG|KEY=VALUE", help="a config (default: default), overrides")
    parser.add_argument("--batches", type=int, default=4, help="independent batches (>= 2; pairs compared: n(n-1)/2)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texforce.run.diagnose import gradient_snr
    from texforce.run.run_config import load_config

    if args.batches < 2:
        raise TexforceError(f"--batches must be >= 2, got {args.batches}")
    overrides = [a for a in args.args if "=" in a]
    configs = [a for a in args.args if "=" not in a]
    if len(configs) > 1:
        raise TexforceError(f"two configs given ({', '.join(configs)}); overrides look like key=value")
    config = load_config(configs[0] if configs else "default", overrides)
    figures = gradient_snr(config, args.batches)
    print(
        f"{figures['algorithm']} on {figures['reward']}: mean cosine {figures['mean_cosine']:.3f} "
        f"± {figures['mean_cosine_ci95']:.3f} between {figures['num_batches']} batches of "
        f"{figures['samples_per_batch']} samples; SNR² per batch {figures['snr2_per_batch']:.3g}, per sample "
        f"{figures['snr2_per_sample']:.3g}; SNR² = 1 needs ≈ {figures['samples_for_snr2_1']:.0f} samples per step"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return 0
