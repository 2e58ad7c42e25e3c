"""Errors a user can cause and fix: the CLI prints them as one clear message, not a traceback."""


class UserError(Exception):
    """A mistake in data, configuration or input that the message tells the user how to fix."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset folder or file is missing."""


def listing(items, limit: int = 10) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are: for messages."""
    items = [str(i) for i in items]
    return ', '.join(items[:limit]) + (f' and {len(items) - limit} more' if len(items) > limit else '')


def check_choice(option: str, value, choices) -> None:
    """A ValueError naming the option and its choices when ``value`` is not one of them (for Python
    callers of the models and heads; the CLI checks its ``Literal`` options before anything is built)."""
    if value not in choices:
        raise ValueError(f"unknown {option} {value!r}; choose one of {tuple(choices)}")


def find_user_error(error: BaseException):
    """The UserError behind ``error``, also when a library wrapped it (jsonargparse, DataLoader workers),
    or Lightning's own word for a configuration mistake (MisconfigurationException)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (UserError, MisconfigurationException)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def user_message(error: BaseException) -> str:
    """The readable part of a UserError, also when a DataLoader worker re-raised it with its traceback."""
    text = str(error)
    marker = f'{type(error).__name__}: '
    if 'Original Traceback' in text and marker in text:
        text = text.rsplit(marker, 1)[-1]
    return text.strip()


def worker_death(error: BaseException):
    """A message for a DataLoader worker process that died (PyTorch notices and raises; nothing hangs),
    or None when ``error`` is something else."""
    while error is not None:
        text = str(error)
        if 'DataLoader worker' in text and ('killed by signal' in text or 'exited unexpectedly' in text):
            return (f"{text.strip().splitlines()[0]} A loader process was killed, most often by the system for "
                    f"lack of memory: lower --data.num_workers or --data.batch_size, then resume with --ckpt_path last")
        error = error.__cause__ or error.__context__
    return None
