"""Hugging Face hub repositories (models and data sets): the one-line failure when one is not in
the cache and the hub cannot be reached, instead of the libraries' retries and tracebacks."""

from __future__ import annotations

import os
from pathlib import Path

from refbench.errors import UserError


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}


def hub_home() -> str:
    return os.environ.get("HF_HOME", "~/.cache/huggingface")


def check_hub(repo: str, what: str, how: str, probe: str, repo_type: str = "model",
              fix: list[str] | None = None) -> None:
    """Fail at once, in one line, for a hub repository that is not in the cache (``probe`` is a
    file it always has) when the hub cannot be reached (HF_HUB_OFFLINE, or no answer within
    5 s). ``what`` names the thing ("backbone 'sd15'"), ``how`` says how to get it."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, probe, repo_type=repo_type), str):
        return  # cached: the loader reads it locally
    missing = f"{what} ({repo}) is not in the Hugging Face cache ({hub_home()})"
    if hub_offline():
        raise UserError(f"{missing} and HF_HUB_OFFLINE is set: {how}", fix_args=fix)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().repo_info(repo, repo_type=repo_type, timeout=5)
    except HfHubHTTPError:
        return  # the hub answered (a gated or missing repo): the loader says which
    except Exception as error:  # connection refused, DNS, timeout: the hub is unreachable
        raise UserError(f"{missing} and the hub cannot be reached ({type(error).__name__}): {how}",
                        fix_args=fix) from None


def dataset_snapshot(repo: str, what: str) -> Path:
    """The local folder of a hub data set (downloaded on first use when the hub is reachable)."""
    how = (f"download it where there is network (huggingface-cli download --repo-type dataset "
           f"{repo}) into {hub_home()}, or pass --data-root with a local copy of its files")
    check_hub(repo, what, how, probe="README.md", repo_type="dataset")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=hub_offline()))
    except Exception as error:  # a partial cache, a gated or missing repo
        raise UserError(f"{what} ({repo}) could not be fetched: {str(error).splitlines()[0][:160]}; "
                        f"{how}") from None
