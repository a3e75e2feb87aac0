"""`dr-lb bench`: the benchmark (bench/measure.py) as a command."""
from __future__ import annotations

import json

import click

from lb.errors import UserError


def _ints(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "").replace(",", "")) for v in text.split()]
    except ValueError:
        raise UserError(f"{text!r}: expected numbers separated by spaces", 2) from None
    if not values or min(values) < 1:
        raise UserError(f"{text!r}: expected positive numbers", 2)
    return values


@click.command()
@click.option("--quick", is_flag=True,
              help="1 and 100,000 flows, 64 B, native, 3 rounds: under a minute.")
@click.option("--rounds", "-n", type=click.IntRange(1, 100),
              help="Rounds per figure (best and median of them).")
@click.option("--flows", help='Flow counts, e.g. "1 1000 100000 1000000".')
@click.option("--sizes", help='Frame sizes in bytes (64-1500), e.g. "64 512 1500".')
@click.option("--modes", help='XDP modes, e.g. "native generic".')
@click.option("--frames", type=click.IntRange(1000), help="Live frames per run.")
@click.option("--repeat", type=click.IntRange(100), help="Test-run repeats per figure.")
@click.option("--syn-frames", type=click.IntRange(1000), help="Live SYNs per run.")
@click.option("--min-seconds", type=click.FloatRange(0, 60),
              help="Send a timed live run's frames (pps, in-situ ns) again until it has "
                   "lasted this long (default 0.3; not SYNs, which fill the table): its end "
                   "is seen to a scheduler tick.")
@click.option("--status-entries", type=click.IntRange(0),
              help="Time `dr-lb status` with this many connections (0: skip).")
@click.option("--order", type=click.Choice(["shuffled", "insert"]),
              help="Flows' order within a pass: shuffled (default; unrelated to the order "
                   "their connections were made in, as real traffic) or insert (the same "
                   "order: the kernel's table is then read as a stream).")
@click.option("--cpu", type=click.IntRange(0),
              help="Pin the run to this CPU (default: the last one it may use), so that "
                   "every flow comes to one CPU, as a NIC's RSS gives it.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, writable=True),
              help="Write every figure, with each round, to this file.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, writable=True),
              help="Draw ns/packet and pps against flows into this PNG (matplotlib).")
@click.option("--lab-prefix", default="drlb-bn", show_default=True, hidden=True)
def bench(quick, rounds, flows, sizes, modes, frames, repeat, syn_frames, min_seconds,
          status_entries, order, cpu, json_file, plot_file, lab_prefix) -> None:
    """Measure dr-lb against a MAC-swap reflector and the kernel's own forwarding of the
    same frames, in one run: ns/packet in situ, pps, and test-run ns (reset method), over
    flows, frame sizes and XDP modes, and the new-connection rate."""
    from bench import measure, report
    from lb.director import instances
    s = measure.Settings.quick() if quick else measure.Settings.full()
    if rounds:
        s.rounds = rounds
    if flows:
        s.flows = _ints(flows)
    if sizes:
        s.sizes = _ints(sizes)
        bad = [v for v in s.sizes if not 64 <= v <= 1500]
        if bad:
            raise UserError(f"--sizes: {bad[0]} is outside 64-1500 bytes", 2)
    if modes:
        s.modes = modes.split()
        bad = [m for m in s.modes if m not in ("native", "generic")]
        if bad:
            raise UserError(f"--modes: {bad[0]!r}: use native and/or generic", 2)
    for name, value in (("frames", frames), ("repeat", repeat), ("syn_frames", syn_frames),
                        ("min_seconds", min_seconds), ("status_entries", status_entries),
                        ("order", order), ("cpu", cpu)):
        if value is not None:
            setattr(s, name, value)
    if plot_file:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--plot needs matplotlib: `sudo apt-get install "
                            "python3-matplotlib` (or `sudo scripts/setup.sh`)") from None
    instances.require_root()
    result = measure.run(s, prefix=lab_prefix)
    click.echo(report.table(result))
    if json_file:
        with open(json_file, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        click.echo(f"figures written to {json_file}")
    if plot_file:
        report.plot(result, plot_file)
        click.echo(f"plot written to {plot_file}")
