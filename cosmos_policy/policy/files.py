"""Finding the files of a checkpoint: a local directory as downloaded, or a Hugging Face repo id.

The official policy repositories (spec 2) hold `Cosmos-Policy-<SUITE>-Predict2-2B.pt`,
`<suite>_dataset_statistics.json` and `<suite>_t5_embeddings.pkl`; the VAE comes separately with
nvidia/Cosmos-Predict2-2B-Video2World (`tokenizer/tokenizer.pth`). A directory written by
`cosmos_policy.testing.write_tiny_checkpoint` adds `network_config.json` for its non-official network size.

Cosmos-Predict2.5 policies (Predict2.5 spec 2.1) come as a `robot/policy/<suite>` folder of nvidia/Cosmos-Predict2.5-2B
(`model.pt`, keys `net.*`); the official evaluation takes the Reason1 embeddings from the suite's dataset repository
(`success_only/reason1_embeddings.pkl`) and the dataset statistics from the Predict2 policy repository. They are looked
for beside the network (`reason1_embeddings.pkl` or `<suite>_reason1_embeddings.pkl`) or given as paths (local, or
`org/repo/path` on the Hub, `datasets/org/repo/path` for a dataset repository).
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
REASON1_SOURCES = {"libero": "datasets/nvidia/LIBERO-Cosmos-Policy/success_only/reason1_embeddings.pkl",
                   "robocasa": "datasets/nvidia/RoboCasa-Cosmos-Policy/success_only/reason1_embeddings.pkl"}
STATISTICS_REPOS = {suite: f"nvidia/Cosmos-Policy-{name}-Predict2-2B"
                    for suite, name in (("libero", "LIBERO"), ("robocasa", "RoboCasa"), ("aloha", "ALOHA"))}


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
    variant: str = "predict2"


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
    parts = text.split("/")
    if len(parts) > 2 and all(parts) and is_hub_repo_id("/".join(parts[:2])):  # org/repo/sub/dir (official form)
        sub = "/".join(parts[2:]).strip("/")
        return _hub_call(text, lambda hub: Path(hub.snapshot_download(
            repo_id="/".join(parts[:2]), allow_patterns=[f"{sub}/*", f"{sub}/**/*"]))) / sub
    if not is_hub_repo_id(text):
        hint = "" if "/" in text or os.sep in text else " (nor a Hugging Face repo id like org/name)"
        raise FileNotFoundError(f"{text}: no such checkpoint directory{hint}")
    local = _hub_call(text, lambda hub: Path(hub.snapshot_download(repo_id=text)))
    return local / "model" if (local / "model").is_dir() else local


def _hub_call(text: str, call, what: str = "a directory"):
    """`call(huggingface_hub)`, its failures (no package, offline, authentication, no such repo) as one line."""
    try:
        import huggingface_hub
    except ImportError:
        raise FileNotFoundError(
            f"{text}: not {what}, and huggingface_hub is not installed to fetch it from the Hugging Face Hub "
            "(pip install huggingface_hub, or download it and pass its local path)"
        ) from None
    try:
        return call(huggingface_hub)
    except Exception as err:  # offline, authentication or no such repo: one line naming the repo
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        detail = f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__
        raise FileNotFoundError(
            f"{text}: not {what}, and could not be fetched from the Hugging Face Hub ({detail})") from err


def resolve_file(path: str | os.PathLike, kind: str) -> Path:
    """A local file, or `org/repo/path/in/repo` (`datasets/org/repo/...`: a dataset repository) from the Hub."""
    local = Path(path)
    if local.is_file():
        return local
    text = os.fspath(path)
    parts = text.split("/")
    repo_type = "dataset" if parts[0] == "datasets" else None
    parts = parts[1:] if repo_type else parts
    if len(parts) < 3 or not is_hub_repo_id("/".join(parts[:2])):
        raise FileNotFoundError(f"{kind}: {text} does not exist")
    return _hub_call(text, lambda hub: Path(hub.hf_hub_download(
        repo_id="/".join(parts[:2]), filename="/".join(parts[2:]), repo_type=repo_type)), "a file")


def _suite_of(name: str) -> str | None:
    lowered = name.lower()
    for suite in LAYOUTS:
        if lowered.startswith(suite + "_") or f"-{suite}-" in lowered:
            return suite
    return None


def _variant_of(network: Path, extra: dict) -> str:
    from ..model.checkpoint import load_network_checkpoint
    from ..model.loading import checkpoint_variant

    if "network" in extra:
        return "predict2.5" if extra["network"].get("crossattn_proj_in_channels") else "predict2"
    return checkpoint_variant(load_network_checkpoint(network, mmap=True))


def find_checkpoint_files(path, *, suite: str | None = None, vae=None, variant: str | None = None,
                          text_embeddings=None, statistics=None) -> CheckpointFiles:
    """The files of a Predict2 or Predict2.5 policy; `variant` None reads it from the network's keys (or from
    `network_config.json`). `text_embeddings` / `statistics` name those files when they are not in the directory."""
    from ..model.config import DiTConfig

    directory = resolve_directory(path)
    if suite is not None and suite not in LAYOUTS:
        raise ValueError(f"suite: expected one of {sorted(LAYOUTS)}, got {suite!r}")
    names = sorted(p.name for p in directory.iterdir())
    if not any(n.endswith(".pt") for n in names):
        what = "is empty" if not names else f"holds no .pt network checkpoint (found {_listing(names)})"
        raise FileNotFoundError(f"{directory} {what}; expected an official checkpoint directory "
                                "(Cosmos-Policy-<SUITE>-Predict2-2B.pt, <suite>_dataset_statistics.json, "
                                "<suite>_t5_embeddings.pkl), or a Predict2.5 robot/policy/<suite> folder (model.pt)")
    extra = {}
    config_path = directory / NETWORK_CONFIG_FILE
    if config_path.is_file():
        try:
            extra = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptFileError(f"{config_path}: corrupt network config, not valid JSON ({err})") from None
        if not isinstance(extra, dict):
            raise CorruptFileError(f"{config_path}: the network config must be a JSON object")
    found = sorted({s for s in map(_suite_of, names) if s is not None} | set(LAYOUTS) & {directory.name.lower()})
    if suite is None:
        suite = extra.get("suite")
    if suite is None:
        if len(found) != 1:
            raise ValueError(f"suite: cannot tell the suite from the files in {directory} (found {found or 'none'}); "
                             f"pass suite= one of {sorted(LAYOUTS)}")
        suite = found[0]

    def one(kind: str, pattern: str, source: str | None = None, argument: str | None = None) -> Path:
        matches = [directory / n for n in names if re.fullmatch(pattern, n, flags=re.IGNORECASE)]
        if not matches:
            hint = f"; it comes from {source}: put it there or pass {argument}=<path>" if source else ""
            raise FileNotFoundError(f"{kind}: no file matching {pattern!r} in {directory}{hint}")
        return matches[0]

    pts = [n for n in names if n.endswith(".pt")]
    suite_pts = [n for n in pts if _suite_of(n) == suite]
    network = directory / (suite_pts or pts)[0]
    if variant is not None and variant not in ("predict2", "predict2.5"):
        raise ValueError(f"variant: expected 'predict2' or 'predict2.5', got {variant!r}")
    held = _variant_of(network, extra)
    if variant is not None and variant != held:
        raise ValueError(f"variant: {variant!r} given, but {network} holds a {held} network")
    variant = held
    where = f"the Predict2 policy repository {STATISTICS_REPOS[suite]}" + (
        " (Predict2.5 policies use the Predict2 statistics)" if variant == "predict2.5" else "")
    statistics = (resolve_file(statistics, "statistics") if statistics is not None else
                  one("dataset statistics", rf"{suite}_dataset_statistics\.json", where, "statistics"))
    if text_embeddings is not None:
        t5 = resolve_file(text_embeddings, "text_embeddings")
    elif variant == "predict2.5":
        t5 = one("Reason1 embeddings", rf"({suite}_)?reason1_embeddings\.pkl",
                 f"{REASON1_SOURCES.get(suite, 'the suite dataset repository')} on the Hugging Face Hub",
                 "text_embeddings")
    else:
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
    config = DiTConfig.from_dict(extra["network"]) if "network" in extra else None  # None: the 2B of the keys' variant
    image_size = int(extra.get("image_size", IMAGE_SIZE))
    if image_size <= 0 or image_size % 16:
        raise ValueError(f"{config_path}: image_size must be a positive multiple of 16, got {image_size}")
    return CheckpointFiles(directory, suite, network, config, t5, statistics, vae, image_size, variant)


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
