"""The mutation check: `sudo scripts/dev.sh mutate` or `sudo .venv/bin/python -m tests.mutation`.

Puts each deliberate bug of tests/mutants.py into a copy of the repository, one at a
time, and runs the packet tests (`-m "root and not netns and not slow"`: tests/
test_packets.py, tests/test_health_packets.py and any other test-run test) against it,
the program compiled once per mutant. Prints one line per mutant (killed or survived,
and the first test that failed) and exits 1 if any survived or could not be built, 2 if
a pattern no longer applies. The unmutated copy runs first: it must pass.

    python -m tests.mutation                 # every mutant
    python -m tests.mutation -k wrr          # mutants whose name contains "wrr"
    python -m tests.mutation --list          # the list, and whether each applies
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mutants import MUTANTS, Mutant, MutantDoesNotApply, check_all

ROOT = Path(__file__).resolve().parent.parent
MARK = "root and not netns and not slow"
SKIPPED = (".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "build",
           "dist", ".coverage*")
# A mutant that makes a test loop for ever (say, a pause that never ends) is killed by
# this: the unmutated run takes about 90 s here.
TIMEOUT_S = 900
FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def copy_tree(dest: Path, source: Path = ROOT) -> None:
    """The repository as it is on disk (what pytest collects imports vagrant/, ...)."""
    shutil.copytree(source, dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(*SKIPPED))


def run_tests(tree: Path, extra: list[str]) -> tuple[int | None, str]:
    """pytest in `tree`, stopping at the first failure; (exit code, or None if it ran
    over TIMEOUT_S, and output)."""
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider",
            "-m", MARK, *extra, "tests"]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("COV_CORE_SOURCE", None)   # no coverage of a mutant's copy
    try:
        r = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        return None, out
    return r.returncode, r.stdout + r.stderr


def judge(mutant: Mutant | None, extra: list[str], source: Path) -> tuple[str, str, float]:
    """(verdict, detail, seconds): killed/survived/stillborn, and the killing test."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="drlb-mutant-") as tmp:
        tree = Path(tmp)
        copy_tree(tree, source)
        if mutant:
            path = tree / "bpf" / mutant.file
            path.write_text(mutant.apply(path.read_text()))
        code, out = run_tests(tree, extra)
    took = time.monotonic() - start
    if code is None:
        return "killed", f"(the tests ran over {TIMEOUT_S} s)", took
    if code == 0:
        return "survived", "", took
    if "did not compile or load" in out:
        why = next((ln for ln in out.splitlines() if "did not compile or load" in ln), "")
        return "stillborn", why.strip()[:160], took
    m = FAILED.search(out)
    if code == 1 and m:
        return "killed", m.group(2), took
    tail = "\n".join(out.strip().splitlines()[-15:])
    return "error", f"pytest exited {code}:\n{tail}", took


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", dest="pattern", default="", help="only mutants whose name has this (a,b: either)")
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the run of the unmutated copy")
    ap.add_argument("--reverse", action="store_true",
                    help="from the last mutant to the first (a second run from the other "
                         "end halves the wait)")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = ap.parse_args(argv)

    # SIGTERM ends the run as Ctrl-C does: subprocess.run kills its pytest and the
    # temporary copies are removed.
    signal.signal(signal.SIGTERM, _interrupt)
    problems = check_all()
    patterns = args.pattern.split(",")   # -k a,b: either
    chosen = [m for m in MUTANTS if any(p in m.name for p in patterns)]
    if args.reverse:
        chosen.reverse()
    if args.list:
        bad = {p.split(":")[0].removeprefix("mutant ") for p in problems}
        for m in chosen:
            print(f"{m.name:48} {'DOES NOT APPLY' if m.name in bad else 'applies':14} "
                  f"{', '.join(m.covers)}")
        return 2 if problems else 0
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("mutation: the packet tests need root (sudo)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="drlb-mutation-src-") as snapshot:
        # One snapshot of the repository for the whole run: edits made meanwhile don't
        # mix into it.
        copy_tree(Path(snapshot))
        return run_all(args, chosen, Path(snapshot))


def run_all(args, chosen: list[Mutant], source: Path) -> int:
    if not args.no_baseline:
        verdict, detail, took = judge(None, args.pytest_args, source)
        if verdict != "survived":
            print(f"mutation: the unmutated program fails its tests ({verdict}): {detail}",
                  file=sys.stderr)
            return 2
        print(f"{'(unmutated)':48} {'passes':9} {took:5.0f}s")

    results = []
    for m in chosen:
        try:
            verdict, detail, took = judge(m, args.pytest_args, source)
        except MutantDoesNotApply as e:   # the sources changed while we ran
            verdict, detail, took = "error", str(e), 0.0
        results.append((m, verdict))
        print(f"{m.name:48} {verdict:9} {took:5.0f}s  {detail}", flush=True)

    by = {v: sum(1 for _, x in results if x == v) for v in ("killed", "survived",
                                                             "stillborn", "error")}
    print(f"\n{by['killed']} of {len(results)} mutants killed, {by['survived']} survived"
          + (f", {by['stillborn']} did not compile or load" if by["stillborn"] else "")
          + (f", {by['error']} errors" if by["error"] else ""))
    return 0 if by["killed"] == len(results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("mutation: interrupted", file=sys.stderr)
        sys.exit(130)
