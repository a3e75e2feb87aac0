"""Findings: what a check found, why it matters and the command that fixes it.

Shared by the director's live check and the real-server check: both report a list of
Finding and print it as the same table or JSON.
"""
from __future__ import annotations

import json
import shutil
import textwrap
from dataclasses import asdict, dataclass

SEVERITIES = ("error", "warning", "info", "ok")


@dataclass(frozen=True)
class Finding:
    severity: str      # error, warning, info or ok
    code: str          # a stable name for the check, e.g. "vip-prefix"
    what: str
    why: str = ""
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Template:
    """A finding's texts with {placeholders}."""
    severity: str
    what: str
    why: str = ""
    fix: str = ""

    def make(self, code: str, **values) -> Finding:
        return Finding(self.severity, code, self.what.format(**values),
                       self.why.format(**values), self.fix.format(**values))


def count(findings: list[Finding], severity: str) -> int:
    return sum(1 for f in findings if f.severity == severity)


def has_errors(findings: list[Finding]) -> bool:
    return count(findings, "error") > 0


def summary(findings: list[Finding]) -> str:
    return (f"{count(findings, 'error')} error(s), {count(findings, 'warning')} "
            f"warning(s), {count(findings, 'ok')} check(s) passed")


def format_table(findings: list[Finding], width: int | None = None) -> str:
    """A table: SEVERITY, CHECK and WHAT in columns, WHY and FIX under each row.

    The fix is never wrapped, so that it can be copied as it is."""
    if width is None:
        width = max(60, min(shutil.get_terminal_size((120, 24)).columns, 140))
    code_w = max([18] + [len(f.code) for f in findings])
    indent = " " * (8 + 1 + code_w + 1)
    lines = [f"{'SEVERITY':<8} {'CHECK':<{code_w}} WHAT"]
    for f in findings:
        lines.append(f"{f.severity:<8} {f.code:<{code_w}} {f.what}")
        if f.why:
            lines += textwrap.wrap(f.why, width=width, initial_indent=indent + "why: ",
                                   subsequent_indent=indent + "     ",
                                   break_on_hyphens=False, break_long_words=False)
        if f.fix:
            lines.append(f"{indent}fix: {f.fix}")
    lines.append(summary(findings))
    return "\n".join(lines)


def format_json(findings: list[Finding]) -> str:
    return json.dumps({"findings": [f.to_dict() for f in findings],
                       "errors": count(findings, "error"),
                       "warnings": count(findings, "warning")}, indent=2)
