"""Is a lastRecord query exactly one read statement? A lexer of PostgreSQL's token boundaries.

The plan refuses a query that is not one SELECT (or WITH / VALUES / TABLE) statement, with a
reason a person can act on, before any session runs it. It only has to find where statements
end, so it knows what can hide a semicolon: string constants ('...' with '' inside, E'...' with
backslash escapes), quoted identifiers ("..."), dollar-quoted strings ($tag$...$tag$), line
comments (--) and nested block comments (/* /* */ */). Whatever it lets through, the adapter
still sends over the extended protocol, where the server itself refuses more than one statement.
"""

from __future__ import annotations

import re

READ_STATEMENTS = ("select", "with", "values", "table")
"""First keywords of the statements a query may be."""

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")
_IDENTIFIER_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\uffff]")
_WORD = re.compile(r"[A-Za-z_]+")


def statement_problem(query: str) -> str | None:
    """Why query is not exactly one read statement, or None when it is."""
    if "\x00" in query:
        return "it contains a NUL character"
    words: list[str] = []
    ended_at: int | None = None  # index of a top-level semicolon
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch in " \t\r\n\f\v":
            i += 1
            continue
        if query.startswith("--", i):
            end = query.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if query.startswith("/*", i):
            closed = _block_comment_end(query, i)
            if closed is None:
                return "a /* comment is never closed"
            i = closed
            continue
        if ended_at is not None:
            return (
                f"it holds more than one statement (a semicolon at character {ended_at + 1} "
                "is followed by more); give exactly one SELECT"
            )
        if ch == ";":
            ended_at = i
            i += 1
            continue
        if ch == "'":
            escapes = i > 0 and query[i - 1] in "eE" and not _glued(query, i - 1)
            closed = _quoted_end(query, i, "'", backslash=escapes)
            if closed is None:
                return "a string constant (') is never closed"
            i = closed
            continue
        if ch == '"':
            closed = _quoted_end(query, i, '"', backslash=False)
            if closed is None:
                return 'a quoted identifier (") is never closed'
            i = closed
            continue
        if ch == "$" and not _glued(query, i):
            tag = _DOLLAR_TAG.match(query, i)
            if tag is not None:
                close = query.find(tag.group(0), tag.end())
                if close < 0:
                    return f"a dollar-quoted string ({tag.group(0)}) is never closed"
                i = close + len(tag.group(0))
                continue
        word = _WORD.match(query, i)
        if word is not None:
            words.append(word.group(0).lower())
            i = word.end()
            continue
        i += 1
    if not words:
        return "it is empty"
    first = words[0]
    if first not in READ_STATEMENTS:
        return (
            f"it is a {first.upper()} statement; give exactly one SELECT (or WITH, VALUES, TABLE) "
            "returning the newest record time"
        )
    return None


def _glued(text: str, i: int) -> bool:
    """The character at i continues an identifier (so E' is not an escape-string prefix and $
    is not a dollar quote: ``name$1$`` is one identifier)."""
    return i > 0 and _IDENTIFIER_CHAR.match(text[i - 1]) is not None


def _block_comment_end(text: str, i: int) -> int | None:
    """Index just after the block comment opening at i (they nest), or None when unclosed."""
    depth, j = 0, i
    while j < len(text):
        if text.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif text.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    return None


def _quoted_end(text: str, i: int, quote: str, *, backslash: bool) -> int | None:
    """Index just after the quoted token opening at i (doubled quotes inside), or None."""
    j = i + 1
    while j < len(text):
        ch = text[j]
        if backslash and ch == "\\":
            j += 2
        elif ch == quote:
            if text.startswith(quote, j + 1):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return None
