"""The ``lightning-tips`` command: ``lightning-tips codes`` and ``lightning-tips explain CODE``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_tips.findings import CODES, explain

__all__ = ["main"]


def codes_markdown() -> str:
    """The finding codes as a markdown table: code, kind, meaning, thresholds, tips."""
    lines = ["| code | kind | meaning | fires when | tips |", "|---|---|---|---|---|"]
    for info in CODES.values():
        thresholds = info.thresholds.replace("|", "\\|")
        lines.append(f"| `{info.code}` | {info.kind} | {info.title} | {thresholds} | {', '.join(info.tips)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-tips`` console script; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="lightning-tips", description="The finding codes of lightning_tips and what they mean."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    codes = sub.add_parser("codes", help="list every finding code with a one-line meaning")
    codes.add_argument("--markdown", action="store_true", help="as the markdown table of the README")
    ex = sub.add_parser("explain", help="print a code's full entry: meaning, thresholds, advice, tip ids")
    ex.add_argument("code")
    args = parser.parse_args(argv)
    if args.command == "codes" and args.markdown:
        print(codes_markdown())
        return 0
    if args.command == "codes":
        width = max(len(c) for c in CODES)
        for info in CODES.values():
            print(f"{info.code:<{width}}  {info.kind:<5}  {info.title}  [{' '.join(info.tips)}]")
        return 0
    try:
        print(explain(args.code))
    except ValueError as err:
        print(f"lightning-tips: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
