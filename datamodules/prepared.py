"""Demo data written once into a folder: atomically, and recognised by a signature.

The folder's ``README.txt`` says what the data is; its last line is the signature of the generator
and parameters that wrote it (``generator: <name> v<version> ...``). The data is written into a
sibling ``.<name>.partial-<pid>`` folder and renamed into place, so a crash never leaves a folder
that looks complete, and two processes preparing the same folder at once both end with it.
"""
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

from vir_lightning.errors import UserError

README = 'README.txt'


def recorded_signature(root: Path) -> Optional[str]:
    """The last line of root's README, or None when it has none."""
    readme = Path(root) / README
    if not readme.is_file():
        return None
    lines = readme.read_text(errors='replace').strip().splitlines()
    return lines[-1] if lines else ''


def is_prepared(root: Path, signature: str) -> bool:
    """Whether root holds the finished data of exactly this signature."""
    return recorded_signature(root) == signature


def write_once(root: Path, signature: str, generator: str, description: str,
               write: Callable[[Path], str]) -> bool:
    """Unless root already holds data signed ``signature``, write it; True when it was written.

    ``write(folder)`` fills an empty folder and returns the README text (the signature is appended).
    Data of the same ``generator`` with another signature (other parameters) is replaced; a
    non-empty folder that the generator did not write raises, naming ``description`` (what a
    folder of this data is called) and the fix.
    """
    root = Path(root)
    if is_prepared(root, signature):
        return False
    recorded = recorded_signature(root)
    ours = recorded is not None and recorded.startswith(f'generator: {generator} ')
    if root.exists() and not ours and (not root.is_dir() or any(root.iterdir())):
        raise UserError(
            f"'{root}' exists and is not a {description} folder (it has no {README} written by {generator}); "
            f"choose another --data.root or delete the folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.parent / f'.{root.name}.partial-{os.getpid()}'
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir()
        readme = write(partial)
        (partial / README).write_text(f'{readme.rstrip()}\n\n{signature}\n')
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if root.exists():  # an older version of the data (other parameters), or an empty folder
        shutil.rmtree(root)
    try:
        partial.rename(root)
    except OSError:
        if not is_prepared(root, signature):  # otherwise another process finished first
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return True
