"""Reading the annotation files that benchmark data sets ship: split lists, caption pickles, JSON.

Shared by the MSR-VTT, LSMDC, MSVD and DiDeMo readers. A needed file that is absent raises
FileNotFoundError, one that cannot be read raises `AnnotationFileError` (a ValueError); both name the file,
what is wrong and what to do, and make-shards turns them into exit 2 before anything is written. A pickle
is loaded without running code from it: only plain containers and numpy scalars may be built.
"""

import json
import pickle
from pathlib import Path


class AnnotationFileError(ValueError):
    """An annotation file that exists but cannot be read as what it should be."""

    def __init__(self, path, problem: str, advice: str):
        self.path = Path(path)
        super().__init__(f"{path}: {problem}; {advice}")


class RefusedPickleError(AnnotationFileError, pickle.UnpicklingError):
    """A pickle naming a function or class outside the allowed set: building it could run code."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Caption files and caption indexes are dicts and lists of strings and numbers; allow those, the numpy
    scalars some writers leave in them, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def __init__(self, file, path: Path, advice: str):
        super().__init__(file)
        self.path, self.advice = path, advice

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise RefusedPickleError(
            self.path,
            f"refusing to load {module}.{name} from it (an annotation pickle holds only containers, text and "
            f"numbers; any other global could run code)",
            self.advice,
        )


def require_file(path: Path, advice: str) -> Path:
    """`path` if it is a file, else FileNotFoundError naming it and `advice`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {advice}")
    return path


def load_pickle(path: Path, advice: str):
    """The object in the pickle at `path`, built by the restricted unpickler."""
    try:
        with open(require_file(path, advice), "rb") as f:
            return _RestrictedUnpickler(f, path, advice).load()
    except RefusedPickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise AnnotationFileError(path, f"not a readable pickle ({type(e).__name__}: {e})", advice) from e


def load_json(path: Path, advice: str):
    """The JSON value in `path` (UTF-8)."""
    try:
        with open(require_file(path, advice), encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise AnnotationFileError(path, f"not UTF-8 text (byte {e.start})", advice) from e
    except json.JSONDecodeError as e:
        raise AnnotationFileError(path, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}", advice) from e


def read_lines(path: Path, advice: str) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line, surrounding whitespace dropped. Bytes that are not UTF-8
    are kept as surrogates, so a caption holding them fails its row as `caption_not_utf8`."""
    text = require_file(path, advice).read_bytes().decode("utf-8", "surrogateescape")
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
