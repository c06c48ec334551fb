"""Verdict quality over the galleries: per-code precision and recall, caught %, root cause first %,
mean extra warnings (issue #11; definitions in ``tests/helpers/gallery_core.py``).

    python -m tests.benchmarks.verdicts                 # healthy + faulty (plain torch), summary + per case
    python -m tests.benchmarks.verdicts --zoo           # also the real architectures (the `zoo` extra)
    python -m tests.benchmarks.verdicts --markdown      # only the README table
    python -m tests.benchmarks.verdicts -k lstm --cases # a subset, per-case table with the messages
    python -m tests.benchmarks.verdicts --done-when     # exit 1 unless issue #11's "Done when" figures hold

Each case is a small real ``Trainer.fit`` with ``lt.Recipe()`` at defaults, 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tests.helpers.gallery_tvops import ensure_torchvision_importable

ensure_torchvision_importable()  # before lightning (torchmetrics imports torchvision when installed)

import torch  # noqa: E402

from tests.helpers.gallery_core import (  # noqa: E402
    Case,
    CaseResult,
    done_when,
    markdown_table,
    results_table,
    run_case,
    score,
)


def gallery(zoo: bool = False, only_zoo: bool = False) -> list[Case]:
    """The cases: healthy then faulty, plain torch (unless ``only_zoo``), then the zoo ones (``zoo``)."""
    cases: list[Case] = []
    if not only_zoo:
        from tests.helpers.gallery_cases import FAULTY, HEALTHY

        cases += HEALTHY + FAULTY
    if zoo or only_zoo:
        from tests.helpers.gallery_zoo import ZOO_FAULTY, ZOO_HEALTHY

        cases += ZOO_HEALTHY + ZOO_FAULTY
    return cases


def run_all(cases: list[Case], verbose: bool = True) -> list[CaseResult]:
    results = []
    for c in cases:
        r = run_case(c)
        results.append(r)
        if verbose:
            tag = "ok " if r.ok else "BAD"
            print(f"[{tag}] {c.name:34s} {r.seconds:5.1f}s  expected={c.expected_code or '-':20s} "
                  f"warnings={[f.code for f in r.warnings]}{' CRASH ' + r.crash if r.crash else ''}",
                  file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", action="store_true", help="include torchvision/timm/transformers cases")
    p.add_argument("--only-zoo", action="store_true", help="only the zoo cases")
    p.add_argument("-k", default=None, help="only cases whose name contains this")
    p.add_argument("--markdown", action="store_true", help="print only the README table")
    p.add_argument("--cases", action="store_true", help="also print the per-case table")
    p.add_argument("--json", default=None, help="write per-case results to this file")
    p.add_argument("--done-when", action="store_true", help="check issue #11's targets; exit 1 if one is missed")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cases = gallery(args.zoo, args.only_zoo)
    if args.k:
        cases = [c for c in cases if args.k in c.name]
    start = time.perf_counter()
    results = run_all(cases, verbose=not args.markdown)
    elapsed = time.perf_counter() - start
    s = score(results)
    print(markdown_table(s))
    if args.markdown:
        return 0
    criteria = done_when(s)
    if args.done_when:
        print()
        for text, met in criteria:
            print(f"[{'met' if met else 'MISSED'}] {text}")
    print(f"\n{len(results)} runs in {elapsed:.0f} s ({s.crashes} crashed)")
    if args.cases:
        print()
        print(results_table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{"case": r.case.name, "expected": r.case.expected_code, "ok": r.ok, "caught": r.caught,
                        "first": r.root_cause_first, "seconds": round(r.seconds, 2), "crash": r.crash,
                        "steps": r.global_step,
                        "findings": [{"code": f.code, "severity": f.severity.value, "message": f.message,
                                      "module": f.module, "step": f.step} for f in r.findings]}
                       for r in results], fh, indent=1)
    return 0 if not args.done_when or all(met for _, met in criteria) else 1


if __name__ == "__main__":
    raise SystemExit(main())
