"""Finding the files of a checkpoint: a local directory as downloaded, or a Hugging Face repo id.

The official policy repositories (spec 2) hold `Cosmos-Policy-<SUITE>-Predict2-2B.pt`,
`<suite>_dataset_statistics.json` and `<suite>_t5_embeddings.pkl`; the VAE comes separately with
nvidia/Cosmos-Predict2-2B-Video2World (`tokenizer/tokenizer.pth`). A directory written by
`cosmos_policy.testing.write_tiny_checkpoint` adds `network_config.json` for its non-official network size.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptFileError
from ..model.layout import IMAGE_SIZE, LAYOUTS
from ..model.vae import OFFICIAL_VAE_SOURCE

NETWORK_CONFIG_FILE = "network_config.json"
VAE_CANDIDATES = ("tokenizer/tokenizer.pth", "tokenizer.pth", "vae", "vae.safetensors")


@dataclass(frozen=True)
class CheckpointFiles:
    directory: Path
    suite: str
    network: Path
    network_config: object  # DiTConfig
    t5_embeddings: Path
    statistics: Path
    vae: Path
    image_size: int = IMAGE_SIZE


def is_hub_repo_id(text: str) -> bool:
    """Whether `text` can name a Hugging Face repository ("org/name"; a path such as ./x or a/b/ is not one)."""
    parts = text.split("/")
    return len(text) <= 96 and len(parts) == 2 and all(
        re.fullmatch(r"[\w.-]+", part) and part[0] not in ".-" and part[-1] not in ".-"
        and "--" not in part and ".." not in part for part in parts)


def resolve_directory(path: str | os.PathLike) -> Path:
    """A local directory, or a Hugging Face repo id ("org/name") downloaded with `huggingface_hub`."""
    local = Path(path)
    if local.exists():
        if local.is_file():
            return local.parent
        return local / "model" if (local / "model").is_dir() else local
    text = os.fspath(path)
    if not is_hub_repo_id(text):
        hint = "" if "/" in text or os.sep in text else " (nor a Hugging Face repo id like org/name)"
        raise FileNotFoundError(f"{text}: no such checkpoint directory{hint}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{text}: not a directory, and huggingface_hub is not installed to fetch it from the Hugging Face Hub "
            "(pip install huggingface_hub, or download the repository and pass its directory)"
        ) from None
    try:
        local = Path(snapshot_download(repo_id=text))
    except Exception as err:  # offline, authentication or no such repo: one line naming the repo
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        detail = f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__
        raise FileNotFoundError(
            f"{text}: not a directory, and could not be fetched from the Hugging Face Hub ({detail})") from err
    return local / "model" if (local / "model").is_dir() else local


def _suite_of(name: str) -> str | None:
    lowered = name.lower()
    for suite in LAYOUTS:
        if lowered.startswith(suite + "_") or f"-{suite}-" in lowered:
            return suite
    return None


def find_checkpoint_files(path, *, suite: str | None = None, vae=None) -> CheckpointFiles:
    from ..model.config import DiTConfig

    directory = resolve_directory(path)
    if suite is not None and suite not in LAYOUTS:
        raise ValueError(f"suite: expected one of {sorted(LAYOUTS)}, got {suite!r}")
    names = sorted(p.name for p in directory.iterdir())
    if not any(n.endswith(".pt") for n in names):
        what = "is empty" if not names else f"holds no .pt network checkpoint (found {_listing(names)})"
        raise FileNotFoundError(f"{directory} {what}; expected an official checkpoint directory "
                                "(Cosmos-Policy-<SUITE>-Predict2-2B.pt, <suite>_dataset_statistics.json, "
                                "<suite>_t5_embeddings.pkl)")
    extra = {}
    config_path = directory / NETWORK_CONFIG_FILE
    if config_path.is_file():
        try:
            extra = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptFileError(f"{config_path}: corrupt network config, not valid JSON ({err})") from None
        if not isinstance(extra, dict):
            raise CorruptFileError(f"{config_path}: the network config must be a JSON object")
    found = sorted({s for s in map(_suite_of, names) if s is not None})
    if suite is None:
        suite = extra.get("suite")
    if suite is None:
        if len(found) != 1:
            raise ValueError(f"suite: cannot tell the suite from the files in {directory} (found {found or 'none'}); "
                             f"pass suite= one of {sorted(LAYOUTS)}")
        suite = found[0]

    def one(kind: str, pattern: str) -> Path:
        matches = [directory / n for n in names if re.fullmatch(pattern, n, flags=re.IGNORECASE)]
        if not matches:
            raise FileNotFoundError(f"{kind}: no file matching {pattern!r} in {directory}")
        return matches[0]

    pts = [n for n in names if n.endswith(".pt")]
    suite_pts = [n for n in pts if _suite_of(n) == suite]
    network = directory / (suite_pts or pts)[0]
    statistics = one("dataset statistics", rf"{suite}_dataset_statistics\.json")
    t5 = one("T5 embeddings", rf"{suite}_t5_embeddings\.pkl")

    if vae is None:
        for candidate in VAE_CANDIDATES:
            if (directory / candidate).exists():
                vae = directory / candidate
                break
        else:
            raise FileNotFoundError(
                f"vae: no VAE in {directory} (looked for {list(VAE_CANDIDATES)}). The policy checkpoints do not ship "
                f"it: the official Wan2.1 VAE comes with {OFFICIAL_VAE_SOURCE}; pass vae=<path to tokenizer.pth>"
            )
    vae = Path(vae)
    if not vae.exists():
        raise FileNotFoundError(f"vae: {vae} does not exist (the official one comes with {OFFICIAL_VAE_SOURCE})")
    config = DiTConfig.from_dict(extra["network"]) if "network" in extra else DiTConfig.cosmos_predict2_2b()
    image_size = int(extra.get("image_size", IMAGE_SIZE))
    if image_size <= 0 or image_size % 16:
        raise ValueError(f"{config_path}: image_size must be a positive multiple of 16, got {image_size}")
    return CheckpointFiles(directory, suite, network, config, t5, statistics, vae, image_size)


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
