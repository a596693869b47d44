"""The course's one notation table (lessons/NOTATION.md, copied into lesson 00's notation section): no symbol is listed
twice, the two copies agree, and every letter a lesson writes in its markdown math is listed for that lesson, so a
symbol reused for something new (a seed called s, a QR factor called R) fails here until the table says so.

What is checked mechanically: the Latin letters, the Greek letters (and \\ell), and \\mathbb / \\mathcal letters of
every $...$ and $$...$$ in the lessons' markdown cells, inline code and code blocks excepted. A letter in base
position must be listed with that letter as a row's base symbol for that lesson; a letter inside a subscript or
superscript must occur in some row's symbols for that lesson (so $L_s$ covers the s of L_s, but a new $d_s$ still needs
a d row for it). Text inside \\text{}, \\mathrm{}, \\operatorname{} is a name, not a symbol. Printed outputs are not
parsed (the table's last column lists how they spell each symbol)."""

import collections
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS_DIR = ROOT / "lessons"
NOTATION = LESSONS_DIR / "NOTATION.md"
TABLE_HEADER = "| symbol | meaning | where (lessons) | in code / printed as |"

GREEK = set("""alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi pi varpi rho
varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega
ell""".split())
MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$", re.S)
NAMES = re.compile(r"\\(?:text|mathrm|operatorname|textbf|textit|mathbf|mbox)\s*\{[^{}]*\}")
STYLED = re.compile(r"\\(mathcal|mathbb)\s*(?:\{\s*([A-Za-z])\s*\}|([A-Za-z]))")
COMMAND = re.compile(r"\\([A-Za-z]+)")


def lessons():
    return sorted(LESSONS_DIR.glob("[0-9][0-9]_*.ipynb"))


def lesson_id(path):
    return path.name[:2]


def without_table(text):
    """Text without the rows of the notation table: lesson 00 shows the table, and its rows are not uses."""
    if TABLE_HEADER not in text:
        return text
    return "\n".join(line for line in text.split("\n") if not line.startswith("|"))


def markdown_math(text):
    """The math expressions of a markdown text: code blocks, inline code and escaped dollars are not math."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    text = text.replace("\\$", "")
    return [m.group(1) or m.group(2) for m in MATH.finditer(text)]


def tokens(expr):
    """(symbol, in_script) for every letter of a LaTeX math expression: a Latin letter, a Greek command (as
    "\\alpha"), a \\mathcal or \\mathbb letter (as "\\mathcal{V}"); in_script when it sits in a sub- or superscript."""
    text = NAMES.sub("{}", expr)
    out, stack, pending, i = [], [], False, 0
    while i < len(text):
        ch = text[i]
        if ch in "_^":
            pending, i = True, i + 1
            continue
        if ch == "{":
            stack.append(pending)
            pending, i = False, i + 1
            continue
        if ch == "}":
            if stack:
                stack.pop()
            i += 1
            continue
        in_script = pending or any(stack)
        styled = STYLED.match(text, i)
        if styled:
            out.append((f"\\{styled.group(1)}{{{styled.group(2) or styled.group(3)}}}", in_script))
            pending, i = False, styled.end()
            continue
        command = COMMAND.match(text, i)
        if command:
            if command.group(1) in GREEK:
                out.append(("\\" + command.group(1), in_script))
            pending, i = False, command.end()
            continue
        if ch.isalpha():
            out.append((ch, in_script))
            pending = False
        elif not ch.isspace() and ch != "\\":
            pending = False
        i += 1
    return out


def parse_table(text):
    """The notation table of a markdown text: one dict per row (symbols, their normalised forms, meaning, lessons)."""
    lines = text.split("\n")
    start = lines.index(TABLE_HEADER)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"a notation row needs 4 cells (a literal | must not appear in a cell): {line}"
        symbol, meaning, where, code = cells
        symbols = [m.group(1) for m in re.finditer(r"\$(.+?)\$", symbol)]
        rows.append({"line": line, "symbols": symbols, "keys": [re.sub(r"\s+", "", s) for s in symbols],
                     "meaning": meaning, "where": set(re.findall(r"\b\d\d\b", where)), "code": code})
    return rows


def lesson_uses(paths):
    """letter -> lesson -> {"base", "script"}, over the markdown math of the lessons."""
    uses = collections.defaultdict(lambda: collections.defaultdict(set))
    for path in paths:
        notebook = json.loads(path.read_text())
        for cell in notebook["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            for expr in markdown_math(without_table("".join(cell["source"]))):
                for token, in_script in tokens(expr):
                    uses[token][lesson_id(path)].add("script" if in_script else "base")
    return uses


def uncovered(rows, uses):
    """(letter, lesson, position) for every use the table does not list for that lesson."""
    base_rows, any_rows = collections.defaultdict(set), collections.defaultdict(set)
    for row in rows:
        for symbol in row["symbols"]:
            toks = tokens(symbol)
            for token, in_script in toks:
                any_rows[token] |= row["where"]
            if toks and not toks[0][1]:
                base_rows[toks[0][0]] |= row["where"]
    missing = []
    for token, by_lesson in uses.items():
        for lesson, positions in by_lesson.items():
            if "base" in positions and lesson not in base_rows[token]:
                missing.append((token, lesson, "base"))
            elif "script" in positions and lesson not in any_rows[token] | base_rows[token]:
                missing.append((token, lesson, "script"))
    return sorted(missing)


@pytest.fixture(scope="module")
def table():
    return parse_table(NOTATION.read_text())


def test_the_parser_reads_letters_and_their_positions():
    assert tokens(r"W\in\mathbb{R}^{m\times n}") == [("W", False), ("\\mathbb{R}", False), ("m", True), ("n", True)]
    assert tokens(r"n_{\text{train}} + L_s") == [("n", False), ("L", False), ("s", True)]
    assert tokens(r"\tilde G_{\text{LoRA}} = s^2 G A^\top A") == [("G", False), ("s", False), ("G", False),
                                                                   ("A", False), ("A", False)]
    assert tokens(r"\mathrm{lb}_\ell = \max(d_\ell - d_{\ell-1}, 0)") == [
        ("\\ell", True), ("d", False), ("\\ell", True), ("d", False), ("\\ell", True)]
    assert tokens(r"\mathcal V = \{BM_1 + M_2A\}") == [("\\mathcal{V}", False), ("B", False), ("M", False),
                                                       ("M", False), ("A", False)]
    assert markdown_math("a `$HOME` b \\$5 and $x$ then $$y = Wx$$") == ["x", "y = Wx"]


def test_no_symbol_is_listed_twice(table):
    seen = {}
    for row in table:
        for key, symbol in zip(row["keys"], row["symbols"]):
            assert key not in seen, (f"${symbol}$ is listed twice: {seen[key]!r} and {row['meaning']!r}; a symbol has "
                                     "one meaning, so pick another letter for one of them")
            seen[key] = row["meaning"]


def test_every_row_is_complete(table):
    known = {lesson_id(p) for p in lessons()}
    for row in table:
        assert row["symbols"], f"a row without a $symbol$: {row['line']}"
        assert row["meaning"] and row["meaning"] != "—", f"{row['symbols']}: no meaning"
        assert row["where"] and row["where"] <= known, (
            f"{row['symbols']}: lessons {sorted(row['where'])} (known: {sorted(known)})")


def test_lesson_00_shows_the_same_table():
    path = next(p for p in lessons() if lesson_id(p) == "00")
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
    copy = next((cell for cell in cells if TABLE_HEADER in cell), None)
    assert copy is not None, "lesson 00's notation section must show the table of lessons/NOTATION.md"
    assert [r["line"] for r in parse_table(copy)] == [r["line"] for r in parse_table(NOTATION.read_text())], (
        "lesson 00's copy of the notation table differs from lessons/NOTATION.md: copy the file's table into it")


def test_every_letter_the_lessons_use_is_in_the_table(table):
    missing = uncovered(table, lesson_uses(lessons()))
    assert not missing, ("letters the lessons use that lessons/NOTATION.md does not list for that lesson (add the "
                         "lesson to the row with that meaning, or a row if the meaning is new; never a second meaning "
                         "for a listed symbol):\n"
                         + "\n".join(f"  {t!r} in lesson {lesson} ({pos})" for t, lesson, pos in missing))


def test_a_reused_letter_is_caught(table):
    # What the old lessons did: d_s for a paired difference of seed s, X = QR, a density lambda in lesson 05.
    for lesson, expr in (("04", r"d_s = a_A(s) - a_B(s)"), ("04", r"X = QR"), ("05", r"\mathbb{E}[e^{-\lambda v}]")):
        uses = collections.defaultdict(lambda: collections.defaultdict(set))
        for token, in_script in tokens(expr):
            uses[token][lesson].add("script" if in_script else "base")
        assert uncovered(table, uses), f"{expr} in lesson {lesson} should not pass"


def test_the_lessons_readme_points_to_the_table():
    readme = (LESSONS_DIR / "README.md").read_text()
    assert "(NOTATION.md)" in readme
    assert "κ = K" not in readme  # the lessons write kappa = T (one round of T steps is plain LoRA)
