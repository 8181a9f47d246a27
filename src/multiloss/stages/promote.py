"""Entry point ``promote``: point an alias (default ``champion``) at a version of a registered model.

The version is the best by a metric, or one named; what moved from where is printed, so a
promotion never passes unnoticed.
"""

from __future__ import annotations

import argparse

from multiloss.stages.cli import StageParser
from multiloss.tracking import ranking, registry, store


def parser() -> StageParser:
    stage = StageParser("promote", __doc__)
    stage.parameter("model", help="registered model name")
    stage.parameter("metric",
                    help="source-run metric or version tag to rank on (ece, brier, nll, loss rank low to high)")
    stage.parameter("alias")
    stage.parameter("version", help="a version number; empty: the best by --metric")
    return stage


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    store.configure()
    if not args.alias or args.alias.isdigit() or args.alias.lower() == "latest":
        raise SystemExit(f"promote: alias {args.alias!r} is not allowed (empty, a number or 'latest')")
    if args.version:
        target = str(registry.versions(args.model, only=[args.version])[0].version)
        reason = "as named"
    else:
        ranked = ranking.rank_versions(args.model, args.metric)
        if not ranked:
            raise SystemExit(f"promote: no version of {args.model} has a {args.metric!r} metric or tag")
        target, reason = str(ranked[0].version.version), f"best {args.metric} = {ranked[0].value:.6g}"
    before = registry.set_alias(args.model, args.alias, target)
    moved = "unchanged" if before == str(target) else f"was {before or 'unset'}"
    print(f"promote: {args.model}@{args.alias} -> version {target} ({reason}; {moved})")
    return str(target)


if __name__ == "__main__":
    main()
