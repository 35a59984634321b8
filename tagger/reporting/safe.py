"""Text from outside genretag, made safe to show: every renderer (terminal, JSON, CSV, HTML) goes through here.

File names, tags, model labels, label maps and the index are written by others: a tag can hold
``ESC [ 2 J`` (clear the screen), ``ESC ] 0 ; ... BEL`` (set the window title), an OSC 8 hyperlink, a
C1 ``CSI`` (U+009B, which some terminals read as ``ESC [``), rich markup such as ``[link=file:///...]``,
or a spreadsheet formula. Nothing here drops a character: what a terminal would act on is shown as its
Python escape (``\\x1b``, ``\\u202e``), so the name stays recognisable and can be searched for.

Stdlib only at import time: :mod:`tagger.labels` uses :func:`unsafe_characters` to refuse label maps.
"""
from __future__ import annotations

import json
import re

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""The characters never written raw to a terminal, CSV or HTML page:

- Unicode category Cc: C0 (``\\x00``-``\\x1f``: ESC, BEL, CR, newline), DEL and C1 (U+0080-U+009F; U+009B
  is CSI and U+009D OSC in terminals that honour 8-bit controls);
- the Bidi_Control characters (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069): overrides and
  isolates make a terminal, editor or browser show text in another order than it is stored
  ("Trojan Source", CVE-2021-42574), so a name could pose as another one or hide what follows it;
- the line and paragraph separators U+2028/U+2029, which some viewers break a line at: one name, one line;
- lone surrogates (a tag read with ``surrogateescape``), which no UTF-8 output can encode.

Other format characters stay: zero-width joiners and non-joiners are part of emoji and of Persian and
Indic spelling, and none of them moves the cursor or reorders text. A backslash is not escaped, so a
name holding the text ``\\x1b`` shows as one holding ESC does; the JSON output tells them apart.
"""

_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
""":data:`UNSAFE` but C0, which ``json`` escapes in strings itself: a raw newline is the indent's."""

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
"""A spreadsheet runs a cell starting with one of these as a formula (OWASP, "CSV Injection")."""
_QUOTE_OR_FORMULA = frozenset("'" + "".join(FORMULA_STARTS))
_NEUTRALISE = re.compile("'*[" + re.escape("".join(FORMULA_STARTS)) + "]")  # quotes kept: see csv_cell


def _python_escape(match: re.Match) -> str:
    return repr(match.group())[1:-1]  # "\x1b", "\x9b", "\u202e", "\n", "\t"


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """``text`` with every :data:`UNSAFE` character shown as its Python escape (``\\x1b[2J``), for a
    terminal, CSV cell or HTML text. ``keep_newlines`` leaves ``\\n`` alone, for text of several lines
    (a metrics table) built around names from outside."""
    if keep_newlines:
        return "\n".join(escape_controls(line) for line in text.split("\n"))
    if text.isprintable():  # every UNSAFE character is non-printable to Python: the common case, fast
        return text
    return UNSAFE.sub(_python_escape, text)


def shown(value) -> str:
    """Any value as text for the terminal or a page: ``None`` as empty, the rest escaped."""
    return "" if value is None else escape_controls(str(value))


def rich_text(value, style: str = ""):
    """A rich ``Text`` of ``value``, escaped: a Text is never parsed for markup (``[bold]``, ``[link=...]``)
    or emoji codes (``:smile:``), unlike a plain string given to ``Console.print`` or ``Table.add_row``."""
    from rich.text import Text

    return Text(shown(value), style=style)


def unsafe_characters(text: str) -> list[str]:
    """The :data:`UNSAFE` characters ``text`` holds, as their escapes, in order of appearance."""
    return list(dict.fromkeys(repr(c)[1:-1] for c in UNSAFE.findall(text)))


def dumps(data, *, ensure_ascii: bool = False, **kwargs) -> str:
    """``json.dumps`` whose text carries no :data:`UNSAFE` character raw: ``json`` escapes C0 itself but
    writes DEL, C1, bidi controls and U+2028 as they are (with ``ensure_ascii=False``). They only occur
    inside strings, where ``\\uXXXX`` stands for the same character: the data round-trips exactly."""
    text = json.dumps(data, ensure_ascii=ensure_ascii, **kwargs)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def csv_cell(value):
    """A CSV cell that no spreadsheet runs as a formula.

    Text is escaped (:func:`escape_controls`), and text starting with ``=``, ``+``, ``-``, ``@``, tab, CR
    or LF gets a leading single quote, as OWASP's "CSV Injection" page recommends ("-core" becomes
    "'-core"). Text already starting with quotes followed by one of those gets one more quote, so
    :func:`from_csv_cell` can undo this exactly. Numbers stay numbers (genretag writes no negative ones).
    OWASP also warns that a separator inside a cell could start a new one in a reader that splits on
    ``;``: :func:`tagger.reporting.render.report_csv` quotes every cell, so no separator inside one ever
    starts a cell.
    """
    if not isinstance(value, str):
        return value
    text = escape_controls(value)
    return "'" + text if text[:1] in _QUOTE_OR_FORMULA and _NEUTRALISE.match(text) else text


def from_csv_cell(cell: str) -> str:
    """The text a :func:`csv_cell` was made from (its control characters still escaped)."""
    return cell[1:] if cell.startswith("'") and _NEUTRALISE.match(cell, 1) else cell
