"""Reading a user's input file: whatever is wrong with it (missing, a folder, empty, binary, truncated)
is a one-line :class:`UserError` naming the file and what was expected, never a parser's traceback."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError


def check_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a readable file; else a one-line error (``what``: e.g. '--triplets', 'data file')."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file")
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file")
    return path


def read_text(path: str | Path, what: str, expected: str) -> str:
    """The text of a UTF-8 file; a folder, a missing file or one that is not text (binary) is a one-line
    error saying ``expected`` (e.g. 'a JSON document')."""
    path = check_file(path, what)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{what} {path} line {line}: not UTF-8 text (a binary file?); expected {expected}") from None
    except OSError as e:
        raise UserError(f"{what} {path}: cannot be read ({e.strerror})") from None


@contextmanager
def parsing(path: str | Path, what: str, expected: str) -> Iterator[None]:
    """Turn an error raised while a binary format (npy, npz, IDX, image) is read from ``path`` into one
    line: the file is truncated, empty or of another format."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # parsers raise anything: ValueError, EOFError, BadZipFile, IndexError, OSError ...
        detail = (str(e).splitlines() or [""])[0][:120]
        raise UserError(f"{what} {path}: not {expected} (empty, truncated or another format: "
                        f"{type(e).__name__}{': ' + detail if detail else ''})") from None
