"""The syntax of /etc/sysconfig files: shell variable assignments, read without a shell.

A sysconfig file is meant to be sourced by a shell.  This module reads the
subset of shell syntax such files use and never executes anything:

* blank lines, and comments starting with ``#`` at the beginning of a word;
* ``NAME=value`` assignments, several per line or separated by ``;``,
  optionally preceded by ``export``;
* values made of unquoted text (``\\`` escapes the next character),
  ``'single quoted'`` text (literal, may span lines) and ``"double quoted"``
  text (``\\`` escapes only ``$``, `````, ``"``, ``\\`` and a newline), joined
  without spaces as the shell joins them;
* a backslash before a newline outside single quotes continues the line.

``$VAR``, ``$(...)``, backticks and a leading ``~`` are kept literally; each
:class:`Assignment` records whether a shell would have expanded something in
it, so callers can warn.  Anything else a shell would treat as a command
(``KEY = value``, ``KEY=a b``, ``|``, ``&&``, redirections) is reported as a
:class:`Problem` with its line number; parsing continues on the next line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_EXPORT = re.compile(r"export(?=[ \t])")
_BLANK = " \t"
_OPERATORS = "&|<>()"
#: after ``$``, these start an expansion in the shell
_EXPANSION_START = re.compile(r"[A-Za-z_0-9{(@*#?$!-]")
#: inside double quotes a backslash only escapes these
_DQUOTE_ESCAPABLE = '$`"\\'


@dataclass(frozen=True)
class Assignment:
    """``key=value`` found at ``line`` (the line where ``key`` starts)."""

    key: str
    value: str
    line: int
    expands: Tuple[str, ...] = ()   # what a shell would have expanded: "$(", "`", "$NAME", "~"


@dataclass(frozen=True)
class Problem:
    """A line that is not a plain assignment; ``message`` says why."""

    line: int
    message: str


@dataclass
class ParsedFile:
    """Everything found in a file, in file order."""

    assignments: List[Assignment] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    exported_names: List[Tuple[str, int]] = field(default_factory=list)  # ``export NAME`` without a value


class _SyntaxError(Exception):
    def __init__(self, line: int, message: str, to_end: bool = False) -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.to_end = to_end   # the rest of the text is unusable (unterminated quote)


class _Reader:
    """A cursor over the text that keeps track of the line number."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.text[i] if i < len(self.text) else ""

    def advance(self, count: int = 1) -> str:
        chunk = self.text[self.pos:self.pos + count]
        self.line += chunk.count("\n")
        self.pos += len(chunk)
        return chunk

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_blanks(self) -> None:
        while True:
            c = self.peek()
            if c and c in _BLANK:
                self.advance()
            elif c == "\\" and self.peek(1) == "\n":
                self.advance(2)
            else:
                return

    def skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.advance((len(self.text) if end < 0 else end) - self.pos)


def parse(text: str) -> ParsedFile:
    """Read every assignment of a sysconfig file's ``text``; never raises for bad syntax."""
    text = text.replace("\r\n", "\n")
    if text.startswith("\ufeff"):
        text = text[1:]
    result = ParsedFile()
    reader = _Reader(text)
    while not reader.at_end():
        try:
            _statement(reader, result)
        except _SyntaxError as exc:
            result.problems.append(Problem(exc.line, exc.message))
            if exc.to_end:
                break
            reader.skip_line()
    return result


def _statement(reader: _Reader, result: ParsedFile) -> None:
    """Read one statement: words up to a newline, ``;`` or a comment."""
    reader.skip_blanks()
    c = reader.peek()
    if c == "":
        return
    if c in "\n;":
        reader.advance()
        return
    if c == "#":
        reader.skip_line()
        return
    found: List[Assignment] = []
    exported: List[Tuple[str, int]] = []
    exporting = False
    if _EXPORT.match(reader.text, reader.pos):
        reader.advance(len("export"))
        exporting = True
    while True:
        reader.skip_blanks()
        c = reader.peek()
        if c in ("", "\n", ";", "#"):
            if c == "#":
                reader.skip_line()
            else:
                reader.advance(len(c))
            result.assignments.extend(found)
            result.exported_names.extend(exported)
            return
        line = reader.line
        match = _ASSIGNMENT.match(reader.text, reader.pos)
        if match:
            reader.advance(match.end() - reader.pos)
            value, expands = _word(reader)
            found.append(Assignment(match.group(1), value, line, expands))
            continue
        name = NAME.match(reader.text, reader.pos)
        if exporting and name and _ends_word(reader.text, name.end()):
            reader.advance(name.end() - reader.pos)
            exported.append((name.group(0), line))
            continue
        word, _ = _word(reader)
        if found and not exporting:
            key = found[-1].key
            raise _SyntaxError(
                line,
                f"the value of {key} continues after an unquoted space, and a shell would run the rest "
                f"as a command; put the whole value in quotes: {key}=\"...\"")
        if word == "=" or (reader.peek() in _BLANK and _next_word_starts_with_equals(reader)):
            raise _SyntaxError(line, f"'{_shorten(word)} =': no spaces are allowed around '=' (write KEY=\"value\")")
        raise _SyntaxError(
            line,
            f"'{_shorten(word)}' is not a KEY=value assignment; a shell would run it as a command "
            "(quote values that contain spaces: KEY=\"two words\"; no spaces around '=')")


def _ends_word(text: str, pos: int) -> bool:
    return pos >= len(text) or text[pos] in _BLANK + "\n;#"


def _next_word_starts_with_equals(reader: _Reader) -> bool:
    rest = reader.text[reader.pos:]
    stripped = rest.lstrip(_BLANK)
    return stripped.startswith("=")


def _shorten(word: str, limit: int = 40) -> str:
    word = word.replace("\n", "\\n")
    return word if len(word) <= limit else word[:limit] + "..."


def _word(reader: _Reader) -> Tuple[str, Tuple[str, ...]]:
    """Read one shell word at the cursor and return its value and what a shell would expand."""
    out: List[str] = []
    expands: List[str] = []
    start = reader.pos
    while True:
        c = reader.peek()
        if c == "" or c in _BLANK or c in "\n;":
            break
        if c in _OPERATORS:
            raise _SyntaxError(
                reader.line,
                f"unquoted {c!r}: shell operators are not allowed in a configuration file "
                "(put the value in quotes)")
        if c == "\\":
            nxt = reader.peek(1)
            if nxt == "\n":
                reader.advance(2)
            elif nxt == "":
                reader.advance()
                out.append("\\")
            else:
                reader.advance(2)
                out.append(nxt)
            continue
        if c == "'":
            out.append(_single_quoted(reader))
            continue
        if c == '"':
            out.append(_double_quoted(reader, expands))
            continue
        if c == "~" and reader.pos == start:
            _note(expands, "~")
        elif c in "$`":
            if _substitution(reader, out, expands):
                continue
        out.append(reader.advance())
    return "".join(out), tuple(expands)


def _single_quoted(reader: _Reader) -> str:
    line = reader.line
    reader.advance()
    end = reader.text.find("'", reader.pos)
    if end < 0:
        raise _SyntaxError(line, "a single quote (') opened here is never closed", to_end=True)
    value = reader.advance(end - reader.pos)
    reader.advance()
    return value


def _double_quoted(reader: _Reader, expands: List[str]) -> str:
    line = reader.line
    reader.advance()
    out: List[str] = []
    while True:
        c = reader.peek()
        if c == "":
            raise _SyntaxError(line, 'a double quote (") opened here is never closed', to_end=True)
        if c == '"':
            reader.advance()
            return "".join(out)
        if c == "\\":
            nxt = reader.peek(1)
            if nxt == "\n":
                reader.advance(2)
                continue
            if nxt and nxt in _DQUOTE_ESCAPABLE:
                reader.advance(2)
                out.append(nxt)
                continue
            out.append(reader.advance())
            continue
        if c in "$`":
            if _substitution(reader, out, expands):
                continue
        out.append(reader.advance())


def _substitution(reader: _Reader, out: List[str], expands: List[str]) -> bool:
    """At ``$`` or a backtick: note what a shell would expand.  A command
    substitution (``$(...)``, backticks) is copied literally as a whole, so
    its spaces and parentheses stay part of the value; returns True then."""
    c = reader.peek()
    nxt = reader.peek(1)
    line = reader.line
    if c == "`":
        _note(expands, "`")
        end = reader.pos + 1
        while True:
            end = reader.text.find("`", end)
            if end < 0:
                raise _SyntaxError(line, "a backtick (`) opened here is never closed", to_end=True)
            if reader.text[end - 1] != "\\":
                break
            end += 1
        out.append(reader.advance(end + 1 - reader.pos))
        return True
    if nxt == "(":
        _note(expands, "$(")
        depth = 0
        end = reader.pos + 1
        while end < len(reader.text):
            ch = reader.text[end]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    break
            end += 1
        else:
            raise _SyntaxError(line, "a '$(' opened here is never closed", to_end=True)
        out.append(reader.advance(end + 1 - reader.pos))
        return True
    if nxt and _EXPANSION_START.match(nxt):
        _note(expands, "${" if nxt == "{" else "$NAME")
    return False


def _note(expands: List[str], what: str) -> None:
    if what not in expands:
        expands.append(what)


def quote(value: str) -> str:
    """``value`` as one double-quoted shell word that :func:`parse` (and a shell) reads back unchanged."""
    escaped = "".join("\\" + c if c in _DQUOTE_ESCAPABLE else c for c in value)
    return f'"{escaped}"'


def find_assignment(parsed: ParsedFile, key: str) -> Optional[Assignment]:
    """The assignment of ``key`` that wins (the last one), or None."""
    for assignment in reversed(parsed.assignments):
        if assignment.key == key:
            return assignment
    return None
