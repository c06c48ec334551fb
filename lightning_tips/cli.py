"""The ``lightning-tips`` command: ``lightning-tips codes``, ``lightning-tips tips`` and
``lightning-tips explain CODE_OR_TIP``. It imports only the registries (pure data): no Lightning, no torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_tips.findings import CODES, explain
from lightning_tips.tips import TIPS, tip, tips_markdown

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
    tips = sub.add_parser("tips", help="list every tip id with its one-line advice")
    tips.add_argument("--markdown", action="store_true", help="as the markdown table of the README")
    ex = sub.add_parser("explain", help="print a code's full entry (meaning, thresholds, advice, tip ids) "
                        "or a tip's (advice, codes, callbacks)")
    ex.add_argument("code", metavar="CODE_OR_TIP", help="a finding code (init-loss) or a tip id (R2.4)")
    args = parser.parse_args(argv)
    if args.command == "codes" and args.markdown:
        print(codes_markdown())
        return 0
    if args.command == "tips":
        if args.markdown:
            print(tips_markdown())
        else:
            for t in TIPS:
                print(f"{t.id:<6} {t.advice}")
        return 0
    if args.command == "codes":
        width = max(len(c) for c in CODES)
        for info in CODES.values():
            print(f"{info.code:<{width}}  {info.kind:<5}  {info.title}  [{' '.join(info.tips)}]")
        return 0
    if args.code not in CODES:
        try:
            print(tip(args.code).render())
            return 0
        except ValueError:
            pass
    try:
        print(explain(args.code))
    except ValueError as err:
        print(f"lightning-tips: {err} Or a tip id: {', '.join(t.id for t in TIPS)}.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
