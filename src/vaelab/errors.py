"""Errors that vaelab reports to the user as one line, without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class VaelabError(Exception):
    """A problem with the user's input (config, data, checkpoint) that they can fix."""


class ConfigError(VaelabError):
    """A config value is out of range or inconsistent with another one."""


class DataError(VaelabError):
    """A dataset is missing, truncated or corrupt."""


class TrainingStopped(VaelabError):
    """Training diverged (a loss far above its running median, or non-finite parameters or
    optimizer state) and was stopped before anything worse was saved."""


class DiskFullError(VaelabError):
    """A file could not be written for lack of space; the previous version of it is intact."""


def check_integer(key: str, value, minimum: int = 1) -> None:
    """Stop with one line unless the setting ``key`` is an integer >= ``minimum``."""
    if int(value) != value or value < minimum:
        raise ConfigError(f"{key}={value} is invalid: it must be an integer >= {minimum}")


def user_error(err: BaseException | None) -> VaelabError | None:
    """The VaelabError behind ``err``: itself, or the one it was raised from or while handling (Hydra's
    InstantiationException and OmegaConf's errors of a failed ``${vaelab.from_data:...}`` wrap them)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VaelabError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def exit_if_refused(check: Callable[..., Any], *args) -> Any:
    """Run ``check(*args)`` (a Hydra callback's, before any job runs): a VaelabError it raises is
    one line on stderr and exit status 2."""
    try:
        return check(*args)
    except VaelabError as err:
        print(f"vaelab: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def instantiate(config, *args, **kwargs):
    """``hydra.utils.instantiate`` that lets a VaelabError raised by the target come out as itself
    instead of wrapped in Hydra's InstantiationException, so the user gets its one clear line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as err:
        cause = user_error(err)
        if cause is not None:
            raise cause from None
        raise
