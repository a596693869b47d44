"""Claims: one printed line per statement a lesson makes, PASS / FAIL / SKIP, with the numbers behind it.

Two kinds, told apart by ``must_hold``:

* **invariants** (``must_hold=True``): math that the code must satisfy at every scale (merge ≡ unmerged,
  closed-form gradient ≡ autograd, Eckart–Young). A FAIL raises :class:`ClaimFailed` (an AssertionError),
  so ``pytest --nbmake`` stops on a broken library.
* **empirical claims** (default): what a paper reports and we measure ("LoRA reaches ≥ 95 % of full
  fine-tuning accuracy"). A FAIL prints the numbers and does not raise: a measured non-reproduction is a
  result. Give them ``min_scale="cpu"`` when the smoke budget is too small to say anything; below that
  scale they print SKIP (and a callable is not even run).

A claim about a trained real model is never PASS or FAIL from a lesson's own short run. It is recorded with
:func:`study`, which prints what the committed multi-seed studies concluded (reproduced / contradicted / equivalent /
inconclusive / no verdict, Holm-adjusted, the README's verdict), and the lesson's own run, if it shows one, is an
:func:`illustration` (printed, never judged).

A lesson ends with :func:`summary`, which prints every recorded claim as a table and counts each kind by its own
vocabulary: invariants and toy checks by PASS / FAIL / SKIP, study claims by outcome.
"""

from __future__ import annotations

from .runtime import SCALES, get_scale

STATUSES = ("PASS", "FAIL", "SKIP")
OUTCOMES = ("reproduced", "contradicted", "equivalent", "inconclusive", "no verdict")  # study claims (lowrank_lab.stats)
ILLUSTRATION = "illustration"

_RECORDS: list[dict] = []


class ClaimFailed(AssertionError):
    """An invariant (``must_hold=True``) claim failed."""


class ClaimRecord(dict):
    """A recorded claim (a plain dict). :func:`check` already printed its line, so a notebook cell that ends
    with ``claims.check(...)`` does not echo the dict a second time."""

    def _ipython_display_(self) -> None:
        pass


def _check_scale(field: str, value: str) -> str:
    if value not in SCALES:
        raise ValueError(f"{field} must be one of {SCALES}, got {value!r}")
    return value


def _as_bool(value, name: str) -> bool:
    """The condition of a claim as a bool. Only a bool-like value counts: ``True``/``False``, a numpy bool, or a
    one-element bool array or tensor (what a comparison such as ``err < 1e-12`` gives). Anything else (a NaN, a
    number, the string "False", ``[False]``: all truthy) is a TypeError naming it, never a PASS."""
    import numpy as np
    import torch

    if value is None:
        raise TypeError(f"claim {name!r}: the condition is None; pass a bool (or a callable returning one)")
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.ndarray) and value.dtype == np.bool_ and value.size == 1:
        return bool(value.item())
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.numel() == 1:
        return bool(value.item())
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise TypeError(f"claim {name!r}: the condition must be a single bool (or a numpy bool, or a one-element bool "
                    f"array or tensor), got {type(value).__name__} {shown}; compare a number with its bound "
                    "(a NaN compares False) instead of passing it")


def format_line(record: dict) -> str:
    detail = f"  ({record['detail']})" if record["detail"] else ""
    return f"{record['status']:<4}  {record['name']}{detail}"


def _record(record: "ClaimRecord") -> "ClaimRecord":
    for i, old in enumerate(_RECORDS):
        if old["name"] == record["name"]:
            _RECORDS[i] = record
            break
    else:
        _RECORDS.append(record)
    print(format_line(record))
    return record


def study(row: dict | None, source: str, name: str | None = None, *, study: str | None = None) -> dict:
    """Record what the committed studies say of a claim about a trained model (a row of
    ``lowrank_lab.compare.study_claim``): its Holm-adjusted outcome as the status, the outcome alone, the interval
    and the study in the detail. ``row`` None: "no verdict", with ``source`` saying why. ``study``: the folder name
    under results/ that judged it (default: the row's ``study``, which ``study_claim`` sets), so :func:`summary`
    can name each cited study's report command once."""
    study = study or (row or {}).get("study")
    if row is None:
        record = ClaimRecord(name=name or "claim about a trained model", status="no verdict", detail=source,
                             min_scale="smoke", scale=get_scale(), must_hold=False, kind="study", study=study)
        return _record(record)
    if row.get("verdict_holm") not in OUTCOMES:
        raise ValueError(f"study row of {row.get('claim')!r} has no outcome of {OUTCOMES}: {row.get('verdict_holm')!r}")
    detail = f"alone: {row['verdict']}"
    if row.get("reason"):
        detail += f"; {row['reason']}"
    elif row.get("difference") is not None and row.get("ci95"):
        detail += f"; difference {row['difference']:+.4f}, 95% CI [{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}]"
    record = ClaimRecord(name=name or f"{row['claim']} ({row['paper']})", status=row["verdict_holm"],
                         detail=f"{detail}; {source}", min_scale="smoke", scale=get_scale(), must_hold=False,
                         kind="study", study=study)
    return _record(record)


def illustration(name: str, detail: str = "") -> dict:
    """Record a lesson's own short run that shows a claim's direction: printed with its numbers, never judged (one
    seed and a few steps are not evidence; :func:`study` gives the studies' outcome)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"illustration name must be a non-empty string, got {name!r}")
    record = ClaimRecord(name=name, status=ILLUSTRATION, detail=detail, min_scale="smoke", scale=get_scale(),
                         must_hold=False, kind="illustration")
    return _record(record)


def check(name: str, passed_or_callable, *, detail: str = "", min_scale: str = "smoke", scale: str | None = None,
          must_hold: bool = False) -> dict:
    """Record and print one claim; return its record (``name``, ``status``, ``detail``, ...).

    ``passed_or_callable`` is a bool, or a callable taking no arguments and returning a bool or a
    ``(bool, detail)`` pair; a callable is only run when the claim is not skipped, and an AssertionError
    it raises counts as FAIL with the error message as detail. ``scale`` defaults to the active scale
    (:func:`lowrank_lab.get_scale`). Claiming the same ``name`` again replaces the earlier record (re-running
    a notebook cell does not duplicate it).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"claim name must be a non-empty string, got {name!r}")
    _check_scale("min_scale", min_scale)
    scale = _check_scale("scale", get_scale(scale))
    record = ClaimRecord(name=name, status="SKIP", detail=detail, min_scale=min_scale, scale=scale,
                         must_hold=bool(must_hold))
    if SCALES.index(scale) < SCALES.index(min_scale):
        record["detail"] = f"needs scale >= {min_scale}; running {scale}"
    else:
        if callable(passed_or_callable):
            try:
                result = passed_or_callable()
            except AssertionError as err:
                result = (False, str(err))
            if isinstance(result, tuple):
                if len(result) != 2:
                    raise TypeError(f"claim {name!r}: a callable must return a bool or (bool, detail), got {result!r}")
                result, extra = result
                record["detail"] = "; ".join(d for d in (detail, str(extra)) if d)
        else:
            result = passed_or_callable
        record["status"] = "PASS" if _as_bool(result, name) else "FAIL"

    for i, old in enumerate(_RECORDS):
        if old["name"] == name:
            _RECORDS[i] = record
            break
    else:
        _RECORDS.append(record)
    print(format_line(record))
    if record["status"] == "FAIL" and must_hold:
        raise ClaimFailed(f"invariant failed: {format_line(record)}")
    return record


def records() -> list[dict]:
    """Copies of the recorded claims, in the order they were first made."""
    return [dict(r) for r in _RECORDS]


def reset() -> None:
    """Forget every recorded claim (a lesson starts with a clean slate)."""
    _RECORDS.clear()


def counts() -> dict[str, int]:
    """PASS / FAIL / SKIP of the invariants and toy checks (study outcomes and illustrations: :func:`outcome_counts`)."""
    return {status: sum(r["status"] == status for r in _RECORDS) for status in STATUSES}


def outcome_counts() -> dict[str, int]:
    """How many study claims have each outcome, and how many illustrations were shown."""
    found = {o: sum(r["status"] == o for r in _RECORDS) for o in (*OUTCOMES, ILLUSTRATION)}
    return {o: n for o, n in found.items() if n}


def table() -> str:
    """All recorded claims as an aligned text table: status, kind, min scale, claim, numbers."""
    header = ("status", "kind", "min scale", "claim", "numbers")
    rows = [(r["status"], r.get("kind") or ("invariant" if r["must_hold"] else "empirical"), r["min_scale"], r["name"],
             r["detail"]) for r in _RECORDS]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header[:-1])]
    lines = []
    for row in [header, tuple("-" * w for w in widths) + ("-" * 7,), *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1])
    return "\n".join(line.rstrip() for line in lines)


def summary() -> dict[str, int]:
    """Print the claims table and a one-line count; return ``{"PASS": n, "FAIL": n, "SKIP": n}``."""
    print(table())
    n = counts()
    scale = _RECORDS[-1]["scale"] if _RECORDS else get_scale()
    print(f"\nchecks: {n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped (scale: {scale})")
    outcomes = outcome_counts()
    if outcomes:
        judged = [f"{count} {outcome}" for outcome, count in outcomes.items() if outcome != ILLUSTRATION]
        print("claims about trained models (the committed studies' outcomes, Holm-adjusted): "
              + (", ".join(judged) if judged else "none in this notebook")
              + (f"; {outcomes[ILLUSTRATION]} illustration(s) from this notebook's own short runs"
                 if ILLUSTRATION in outcomes else ""))
    studies = sorted({r["study"] for r in _RECORDS if r.get("study")})
    if studies:  # one line instead of the command in every row
        print("the studies' full tables: " + ", ".join(f"`python -m lowrank_lab report results/{s}`" for s in studies))
    return n
