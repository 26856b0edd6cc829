"""What every stage shares: telling the user, and checks of options several stages take."""

from __future__ import annotations

import logging

from tive.errors import TiveError

log = logging.getLogger("tive")


def say(message: str) -> None:
    """Tell the user (stdout) and the run's log."""
    print(message, flush=True)
    log.info(message)


def check_encoding_options(dtype: str, max_length: int | None) -> None:
    """Refuse a weight dtype or maximum length that no stage can use."""
    from tive.model.loading import DTYPES

    if dtype not in DTYPES:
        raise TiveError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if max_length is not None and max_length < 2:
        raise TiveError(f"--max-length {max_length}: must be at least 2 (a prompt token and an answer token)")
