"""Which initial weights a run starts from, decided before any work and recorded with every result.

``imagenet``: a ``--weights FILE`` (a torchvision state dict), else torchvision's own ImageNet file for
the architecture: taken from the torch hub cache when a previous download left it there, otherwise
downloaded into that cache through the URL of torchvision's weights API
(``torchvision.models.get_model_weights(arch).IMAGENET1K_V1``), with torch's progress bar and hash
check, exactly as torchvision's ``Weights.get_state_dict`` does. Offline, it stops in one line.
``random``: torch's default init, and nothing is read.

Every run records the choice, the file and its sha256 (``InitChoice.record``), so cells of a study
that started differently can never be mixed up.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_fast.errors import CxrError
from cxr_fast.vocabulary import ARCHS, INITS, check_choice


@dataclass(frozen=True)
class InitChoice:
    init: str  # imagenet | random
    weights_file: str | None
    weights_sha256: str | None
    source: str  # "--weights", "torch cache", "downloaded", or "none"

    def record(self) -> dict[str, Any]:
        """The fields every config, metrics file and study row carries."""
        return {"init": self.init, "weights_file": self.weights_file, "weights_sha256": self.weights_sha256}

    def describe(self) -> str:
        if self.init == "random":
            return "random init (no ImageNet weights)"
        return f"ImageNet weights {self.weights_file} (sha256 {self.weights_sha256[:12]}…, {self.source})"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_url(arch: str) -> str:
    """torchvision's download URL for ``arch``'s ImageNet weights (its weights API, IMAGENET1K_V1)."""
    from torchvision.models import get_model_weights

    return get_model_weights(arch).IMAGENET1K_V1.url


def cache_path(url: str) -> Path:
    """Where torch's hub keeps a downloaded checkpoint (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _hash_prefix(path: Path) -> str | None:
    """torchvision names its files ``<name>-<first 8+ hex of sha256>.pth``: the prefix to check against."""
    stem = path.name.split(".")[0]
    tail = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else None


def _checked(path: Path, sha: str) -> None:
    prefix = _hash_prefix(path)
    if prefix is not None and not sha.startswith(prefix):
        raise CxrError(f"{path} is damaged (sha256 {sha[:12]}… does not start with {prefix}); delete it and rerun")


def resolve_init(arch: str, init: str, weights: str | Path | None = None, download: bool = True,
                 progress: bool = True, pinned_sha256: str | None = None) -> InitChoice:
    """Decide and fetch the initial weights of ``arch``; every failure is one line naming a way out.

    ``pinned_sha256`` (a config's ``weights_sha256``, as a replayed run's config.yaml holds it): the file
    found must have it.
    """
    choice = _resolve(arch, init, weights, download, progress)
    if pinned_sha256 and choice.weights_sha256 != pinned_sha256:
        raise CxrError(f"weights {choice.weights_file} have sha256 {str(choice.weights_sha256)[:12]}…, but the config "
                       f"pins {pinned_sha256[:12]}…; give the pinned file with --weights")
    return choice


def _resolve(arch: str, init: str, weights: str | Path | None, download: bool, progress: bool) -> InitChoice:
    check_choice(arch, ARCHS, "architecture")
    check_choice(init, INITS, "init")
    if init == "random":
        if weights:
            raise CxrError(f"--weights {weights} contradicts --init random; drop one of them")
        return InitChoice("random", None, None, "none")
    if weights:
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise CxrError(f"weights file not found: {weights}")
        return InitChoice("imagenet", str(path), sha256_of(path), "--weights")
    url = imagenet_url(arch)
    path = cache_path(url)
    source = "torch cache"
    if not path.is_file():
        if not download:
            raise CxrError(f"ImageNet weights for {arch} are not in the torch cache ({path}); "
                           "run once online, give --weights PATH, or use --init random")
        _download(url, arch, progress)
        source = "downloaded"
    sha = sha256_of(path)
    _checked(path, sha)
    return InitChoice("imagenet", str(path), sha, source)


def _offline_error(url: str, arch: str, exc: BaseException) -> CxrError:
    reason = str(getattr(exc, "reason", exc)).splitlines()[0][:160]
    return CxrError(f"cannot download ImageNet weights for {arch} from {url} ({reason}); "
                    "give --weights PATH (a torchvision state dict) or use --init random")


def _download(url: str, arch: str, progress: bool) -> None:
    """Fetch ``url`` into the hub cache as torchvision does (atomic: torch writes a temp file, then renames).

    A HEAD request first, so an offline machine gets one line and no half-made cache folder.
    """
    import urllib.request

    import torch

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=20).close()
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        raise _offline_error(url, arch, exc) from None
    try:
        torch.hub.load_state_dict_from_url(url, progress=progress, check_hash=True, map_location="cpu",
                                           weights_only=True)
    except (OSError, RuntimeError) as exc:  # a dropped connection; a hash mismatch is a RuntimeError
        raise _offline_error(url, arch, exc) from None


InitKey = tuple[str, str, "str | None", "str | None"]  # arch, init, weights file, pinned sha256


def resolve_for_runs(keys: list[InitKey], download: bool = True, progress: bool = True) -> dict[InitKey, InitChoice]:
    """One resolution per distinct (arch, init, weights, pinned sha256): a study fetches each file once, before
    its first run."""
    out: dict[InitKey, InitChoice] = {}
    for key in keys:
        if key not in out:
            arch, init, weights, pinned = key
            out[key] = resolve_init(arch, init, weights, download=download, progress=progress, pinned_sha256=pinned)
    return out
