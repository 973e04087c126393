"""Which exceptions are the user's (a wrong path, name, config value or machine) and which are bugs.

``sharezoo`` prints a user error as its message alone (exit status 2); anything else keeps its traceback. A user
error is one of :func:`user_error_types`: a missing file (``FileNotFoundError``, which every datamodule's
``DatasetLayoutError`` and a missing ``--ckpt_path`` are), an unavailable weight, a Lightning misconfiguration (a
GPU config on a machine without a GPU, ...), or a :class:`ConfigError` — a ``ValueError`` raised while the model,
data and trainer are built from the command line and config (an unknown model name, a value a constructor
rejects), or a ``ValueError`` of the zoo's name lookup (``zoo.create_model('fusionreid_nope')`` inside a task's
``setup``). Any other ``ValueError`` raised while a run computes is treated as a bug.
"""
from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator


class ConfigError(ValueError):
    """A value from the command line or a config was rejected while the run was being built."""


@contextlib.contextmanager
def building(what: str) -> Iterator[None]:
    """Re-raise a ``ValueError`` (or a ``TypeError`` for an unexpected keyword) raised inside as a
    :class:`ConfigError` naming ``what`` was being built; the original stays the ``__cause__``."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{e}\n(while building {what})") from e
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ConfigError(f"{e}\n(while building {what})") from e


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types ``sharezoo`` reports without a traceback."""
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    import zoo

    return ConfigError, FileNotFoundError, zoo.PretrainedWeightsError, MisconfigurationException


def is_user_error(e: BaseException) -> bool:
    """True for :func:`user_error_types` and for a ``ValueError`` raised by the zoo's registry (unknown model name,
    unknown weight tag), wherever the lookup happened."""
    if isinstance(e, user_error_types()):
        return True
    if isinstance(e, ValueError) and e.__traceback__ is not None:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        return frame.filename.replace("\\", "/").endswith("zoo/_registry.py")
    return False
