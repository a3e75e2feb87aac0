"""The mutant list (tests/mutants.py) against today's bpf/: every pattern still applies,
and every documented behaviour and every counter has a mutant. Pure and fast, so a
change to the C that breaks a mutant's pattern fails here at once, naming the mutant;
`python -m tests.mutation` (root, slow) then checks that the packet tests kill them."""
from __future__ import annotations

import re
from pathlib import Path

from lb import abi
from tests import mutation
from tests.mutants import BEHAVIOURS, COUNTERS, MUTANTS, Mutant, MutantDoesNotApply, check_all

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_mutant_applies_exactly_once():
    assert check_all() == []


def test_a_pattern_that_no_longer_matches_fails_loudly_with_the_mutant_name():
    m = Mutant("gone", "no such text in the program", "x", ("stats",))
    with pytest.raises(MutantDoesNotApply, match="mutant gone: its pattern occurs 0 times"):
        m.apply("int main(void) {}")
    twice = Mutant("twice", "x;", "y;", ("stats",))
    with pytest.raises(MutantDoesNotApply, match="occurs 2 times"):
        twice.apply("x; x;")


def test_every_mutant_changes_the_program_and_has_a_unique_name():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))
    assert all(m.find != m.replace for m in MUTANTS)


def test_every_counter_and_behaviour_has_a_mutant():
    assert set(COUNTERS) == set(abi.COUNTERS), "tests/mutants.py COUNTERS is out of date"
    covered = {tag for m in MUTANTS for tag in m.covers}
    unknown = covered - set(BEHAVIOURS) - {f"counter:{c}" for c in COUNTERS}
    assert not unknown, f"tags that are neither a behaviour nor a counter: {unknown}"
    missing = (set(BEHAVIOURS) | {f"counter:{c}" for c in COUNTERS}) - covered
    assert not missing, f"no mutant for: {sorted(missing)}"


def test_readme_data_plane_section_has_a_tag_per_bullet():
    """Each bullet of "Data plane, in short" is split into tagged claims in BEHAVIOURS;
    a new bullet needs its tags (and mutants)."""
    text = README.read_text()
    section = text.split("## Data plane, in short", 1)[1].split("\n## ", 1)[0]
    bullets = re.findall(r"^- ", section, re.M)
    assert len(bullets) == 10, \
        "README's data plane section changed: update BEHAVIOURS and MUTANTS in tests/mutants.py"


def test_mutation_runner_reads_the_killing_test_from_pytest_output():
    out = "....F\n=== short test summary info ===\nFAILED tests/test_packets.py::test_x - assert\n"
    assert mutation.FAILED.search(out).group(2) == "tests/test_packets.py::test_x"
