"""Published PSNR-trained weights that users fetch by name: each entry pins its source addresses,
size and sha256, so ``upres models pull NAME`` downloads it (only when asked) into the cache and
keeps it only if its bytes are the ones published; ``upres models add FILE`` installs a local copy
after the same check (offline machines). An installed file is checked again before every load."""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from upres.errors import WeightsError
from upres.io.files import atomic_path, cache_dir, files_sha256

log = logging.getLogger("upres")
CHUNK = 1 << 16


@dataclass(frozen=True)
class Published:
    """A published weights file: where it lives, what it is, and the bytes it must have."""

    name: str
    family: str
    urls: tuple[str, ...]
    sha256: str
    size: int  # bytes
    license: str
    params: int  # parameters in the file's tensors
    data: str  # what it was trained on
    purpose: str  # "PSNR" (pixel loss) or "looks" (GAN)
    source: str  # repository @ commit, path
    paper: str
    # x4 PSNR on the Y channel its authors published (Set5, Set14), and where: benchmarks/
    # bench_zoo_psnr.py scores the file beside it
    published_psnr: dict = field(default_factory=dict)
    published_source: str = ""


def _raw(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_NTIRE2024 = ("Amazingren/NTIRE2024_ESR", "6404fa48dde4a4adbf241a51debdc661aef20449")

_ENTRIES = [
    Published(
        "craft-x4", "CRAFT", (_raw(*_NTIRE2024, "model_zoo/team34_craft.pth"),),
        "a3d57001df7e856be6b4e3553d77be3b038609f34db5d41b43c3e6c67756a381", 3426465, "MIT",
        753344, "bicubic x4 pairs (NTIRE 2024 efficient SR challenge entry)", "PSNR",
        f"{_NTIRE2024[0]} @ {_NTIRE2024[1]}, model_zoo/team34_craft.pth",
        "Li et al., CRAFT, ICCV 2023",
        {"Set5": 32.52, "Set14": 28.85},
        "closest configuration: CRAFT-X4 (753K) in AVC2-UESTC/CRAFT-SR's README @ f4f7068 (the "
        "paper's model); this file is a challenge entry of the same layout"),
]
_ENTRIES.append(Published(
    "imdn-x4", "IMDN",
    (_raw("Zheng222/IMDN", "8f158e6a5ac9db6e5857d9159fd4a6c4214da574", "checkpoints/IMDN_x4.pth"),),
    "e660c38221147217a136debeb99eb304d62d9c0f73ac421ed66281b619719714", 2879112,
    "none stated in the repository", 715176, "DIV2K, bicubic x4 pairs (the paper)", "PSNR",
    "Zheng222/IMDN @ 8f158e6a5ac9db6e5857d9159fd4a6c4214da574, checkpoints/IMDN_x4.pth",
    "Hui et al., IMDN, ACM MM 2019", {"Set5": 32.21, "Set14": 28.58},
    "the IMDN paper's x4 results (this is the authors' own file)"))
_NTIRE2022 = ("ofsoundof/NTIRE2022_ESR", "e95ba4a4916bb13d6348f7ee172827e2452e8a31")
_NTIRE2026 = ("Amazingren/NTIRE2026_ESR", "4592ce6db68b395699f13e7e2a4e3baf317ef1c6")
_SAFMN = ("sunny2109/SAFMN", "68c2182e4f8829a979886b0a1cab8f269f91b321")
_NO_FIGURE = ("no Set5/Set14 figure for this file could be read offline; bench_zoo_psnr.py "
              "prints the measured PSNR beside bicubic")


def _challenge(name: str, family: str, where: tuple[str, str], path: str, sha256: str, size: int,
               license: str, params: int, challenge: str, paper: str) -> Published:
    """An entry of an NTIRE efficient-SR challenge, judged by PSNR on bicubic x4 images."""
    return Published(name, family, (_raw(*where, path),), sha256, size, license, params,
                     f"bicubic x4 pairs ({challenge})", "PSNR", f"{where[0]} @ {where[1]}, {path}",
                     paper, {}, _NO_FIGURE)


_ENTRIES += [
    _challenge("span-ch28-x4", "SPANFused", _NTIRE2026, "model_zoo/team00_SPAN.pth",
               "6c80f05048313289c6526e5fc9726688d7bb3dfdd6ae3c8b1e7dd09f601e5971", 618658, "MIT",
               150688, "the NTIRE 2026 efficient SR repository's team00 model",
               "Wan et al., SPAN, CVPRW 2024"),
    _challenge("safmnpp-x4", "SAFMNPP", _NTIRE2024, "model_zoo/team23_safmnpp.pth",
               "03bf96b5a50f43123d22c3a257341d536118250f7157f12d2832915be4f52685", 1715877, "MIT",
               211572, "NTIRE 2024 efficient SR challenge entry", "Sun et al., SAFMN++, NTIRE 2024"),
    _challenge("rlfn-x4", "RLFN", _NTIRE2022, "model_zoo/team04_rlfn.pth",
               "ca81b7757708ce749ac3766589690db6c2729961d026c0137e7659924ec36622", 1292283,
               "MIT (challenge repository)", 317218, "NTIRE 2022 efficient SR challenge entry",
               "Kong et al., RLFN, CVPRW 2022"),
    _challenge("bsrn-x4", "BSRN", _NTIRE2022, "model_zoo/team18_bsrn.pth",
               "29ac393975ec709912282da97765daf722d9efd40589f4abcb95b3a407f62e40", 699603,
               "MIT (challenge repository)", 156288, "NTIRE 2022 efficient SR challenge entry, BSRN-S",
               "Li et al., BSRN, CVPRW 2022"),
    _challenge("rfdn-x4", "RFDN", _NTIRE2022, "model_zoo/rfdn_baseline.pth",
               "11af8ec8ebd68689e90ef1e29044f9804c72d3bd9f7573820b7b26035782760c", 1754927,
               "MIT (challenge repository)", 433448, "the NTIRE 2022 efficient SR baseline",
               "Liu et al., RFDN, ECCVW 2020"),
    _challenge("safmn-ntire23-x4", "SAFMN23", _SAFMN, "NTIRE2023_ESR/model_zoo/team15_SAFMN.pth",
               "93fe3d7175ef1446cfcb3a884ddf8bbb4391f31190e9d1bf6c6c1cb768f8b565", 971051,
               "MIT (NTIRE2023_ESR/LICENSE)", 237000, "NTIRE 2023 efficient SR challenge entry",
               "Sun et al., SAFMN, ICCV 2023"),
]
# Large published PSNR-trained models. Their authors publish them on Google Drive only, which
# does not serve large files to a script: ``upres models pull`` says where to download them in a
# browser, and ``upres models add FILE`` checks the copy. Sizes and sha256 as OpenModelDB
# records the authors' files (OpenModelDB/open-model-database, data/models/*.json).
_OMDB = "OpenModelDB/open-model-database"
_NOT_READ = ("no Set5/Set14 figure for this file could be read offline; bench_zoo_psnr.py prints "
             "the measured PSNR beside bicubic")


def _large(name: str, family: str, url: str, sha256: str, size: int, license: str, params: int,
           data: str, source: str, paper: str) -> Published:
    return Published(name, family, (url,), sha256, size, license, params, data, "PSNR", source,
                     paper, {}, _NOT_READ)


_ENTRIES += [
    _large("rrdb-psnr-x4", "RRDBNet",
           "https://drive.google.com/open?id=1ldwajXL50uC7PCS63B4Wato6Dnk-svNL",
           "985fba37421353716ef2fbd7fbbab061e76409994d168cf52527aa8ee53f81ec", 66954395,
           "Apache-2.0", 16697987, "DIV2K + Flickr2K, bicubic x4 pairs (ESRGAN's PSNR-oriented RRDB)",
           f"RRDB_PSNR_x4.pth of xinntao/ESRGAN; size and sha256: {_OMDB} @ d575aef, "
           "data/models/4x-PSNR.json", "Wang et al., ESRGAN, ECCVW 2018"),
    _large("dat-x4", "DAT", "https://drive.google.com/file/d/1pEhXmg--IWHaZOwHUFdh7TEJqt2qeuYg",
           "391a6ce69899dff5ea3214557e9d585608254579217169faf3d4c353caff049e", 154692051,
           "Apache-2.0", 14802051, "DF2K, bicubic x4 pairs (the DAT paper)",
           f"DAT_x4.pth of zhengchen1999/DAT; size and sha256: {_OMDB} @ 9a6f1b9, "
           "data/models/4x-DAT.json", "Chen et al., Dual Aggregation Transformer, ICCV 2023"),
    _large("hat-l-x4", "HAT", "https://drive.google.com/file/d/1uefIctjoNE3Tg6GTzelesTTshVogQdUf",
           "5992bd38522f2b8faf11ea4bd8ee08de92465bb66892166576999afc36d60043", 165774123,
           "none recorded (OpenModelDB lists none)", 40846575,
           "ImageNet pre-training, then DF2K, bicubic x4 pairs (HAT-L_SRx4_ImageNet-pretrain)",
           f"HAT-L_SRx4_ImageNet-pretrain.pth of XPixelGroup/HAT; size and sha256: {_OMDB} @ "
           "0830744, data/models/4x-HAT-L-SRx4-ImageNet-pretrain.json", "Chen et al., HAT, CVPR 2023"),
    _large("drct-l-x4", "DRCT", "https://drive.google.com/file/d/1bVxvA6QFbne2se0CQJ-jyHFy94UOi3h5",
           "a99044c0275699d1a296ae21b8f322fa8c65d7b9be2213ee2a3dcc280ab8d64b", 485570697, "MIT",
           27580719, "bicubic x4 pairs (the DRCT paper's DRCT-L)",
           f"DRCT-L_X4.pth of ming053l/DRCT; size and sha256: {_OMDB} @ ecd8ba1, "
           "data/models/4x-DRCT-L.json", "Hsu et al., DRCT, CVPRW 2024"),
]
# Large published PSNR-trained models that their authors attach to GitHub releases, which serve
# them to a script: ``upres models pull NAME`` downloads them. Neither release publishes a
# checksum; the sha256 pinned here is the one public projects pin for the same release asset
# (nine files each, against one file that pins another value for RealESRNet), and the size the
# one they record. A wrong pin refuses the download and keeps nothing.
_ENTRIES += [
    Published(
        "realesrnet-x4plus", "RRDBNet",
        ("https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.1/RealESRNet_x4plus.pth",),
        "a820b9bde89a874d7599d545567308ce6c128fc8754a53208eda016d40aa81df", 67040989,
        "BSD-3-Clause", 16697987,
        "DF2K + OST with Real-ESRGAN's synthetic degradations (blur, resizing, noise and JPEG, "
        "applied twice); L1 loss only: Real-ESRGAN's first stage, before its GAN", "PSNR",
        "xinntao/Real-ESRGAN release v0.1.1, RealESRNet_x4plus.pth",
        "Wang et al., Real-ESRGAN, ICCVW 2021", {},
        "none: trained for real-world degradations, not bicubic x4; bench_zoo_psnr.py prints the "
        "measured PSNR beside bicubic"),
    Published(
        "swinir-classical-x4", "SwinIR",
        ("https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/"
         "001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth",),
        "4e78e33f22c1aa8a773db0cf4a7381bae97c2362c717f155439ebc690cbd9215", 67869037,
        "Apache-2.0", 11900199, "DF2K, bicubic x4 pairs (SwinIR classical SR, 64-pixel LR patches, "
        "window 8)", "PSNR",
        "JingyunLiang/SwinIR release v0.0, 001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth",
        "Liang et al., SwinIR, ICCVW 2021", {}, _NOT_READ),
]
PUBLISHED: dict[str, Published] = {entry.name: entry for entry in _ENTRIES}


def needs_browser(entry: Published) -> bool:
    """True when every address is a Google Drive page (a large file there is served to a browser
    after a confirmation page, never to a plain download)."""
    return all(url.startswith("https://drive.google.com/") for url in entry.urls)


def how_to_get(name: str) -> str:
    """The one command (or step) that installs ``name``."""
    entry = PUBLISHED[name]
    if needs_browser(entry):
        return (f"download {entry.urls[0]} in a browser ({entry.size / 2**20:.0f} MB), then run "
                "`upres models add FILE`")
    return f"upres models pull {name}"


def folder() -> Path:
    return cache_dir() / "published"


def installed_path(name: str) -> Path | None:
    """The installed file of ``name`` if its bytes are the published ones; a file that is not
    (edited, truncated, replaced) is named in a warning and treated as not installed."""
    entry = PUBLISHED[name]
    path = folder() / f"{name}.pth"
    if not path.is_file():
        return None
    if path.stat().st_size != entry.size or files_sha256(path) != entry.sha256:
        log.warning(f"warning: {path} is not the published {name} (size or sha256 differs); "
                    f"ignored: upres models pull {name} fetches it again")
        return None
    return path


def require(name: str) -> Path:
    """The installed file of ``name``, or an error saying the one command that gets it."""
    path = installed_path(name)
    if path is None:
        if needs_browser(PUBLISHED[name]):
            raise WeightsError(f"{name} is not installed: {how_to_get(name)}")
        raise WeightsError(f"{name} is not installed: run `upres models pull {name}` (downloads "
                           f"{PUBLISHED[name].size / 2**20:.1f} MB), or `upres models add FILE` "
                           "with a copy you have")
    return path


def _download(url: str, entry: Published, tmp: Path, progress: bool) -> str:
    """Stream ``url`` into ``tmp``, reading at most one byte more than the entry's size; returns
    the sha256 of what was read."""
    from tqdm import tqdm

    digest, read = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out, \
            tqdm(total=entry.size, unit="B", unit_scale=True, desc=entry.name,
                 disable=not progress, leave=False) as bar:
        while read <= entry.size:
            block = response.read(min(CHUNK, entry.size + 1 - read))
            if not block:
                break
            digest.update(block)
            out.write(block)
            read += len(block)
            bar.update(len(block))
    if read != entry.size:
        raise WeightsError(f"{url}: {read if read <= entry.size else 'more than ' + str(entry.size)} "
                           f"bytes, not the {entry.size} published for {entry.name}; nothing was kept")
    return digest.hexdigest()


def pull(name: str, progress: bool = True, urls: tuple[str, ...] | None = None) -> Path:
    """Download ``name`` from its addresses (the first that answers) into the cache, checked
    against its size and sha256 before it is kept; returns the installed path."""
    if name not in PUBLISHED:
        raise WeightsError(f"{name!r} is not a published model upres knows; `upres models` lists "
                           f"them ({', '.join(PUBLISHED)})")
    entry = PUBLISHED[name]
    if (path := installed_path(name)) is not None:
        return path
    if urls is None and needs_browser(entry):
        raise WeightsError(f"{name} is published on Google Drive, which does not serve it to a "
                           f"script: {how_to_get(name)} (it checks the size and sha256)")
    failures = []
    for url in urls or entry.urls:
        try:
            with atomic_path(folder() / f"{name}.pth") as tmp:
                got = _download(url, entry, tmp, progress)
                if got != entry.sha256:
                    raise WeightsError(f"{url}: sha256 {got} is not the published {entry.sha256} "
                                       f"of {name}; nothing was kept")
            return folder() / f"{name}.pth"
        except (urllib.error.URLError, OSError) as err:
            failures.append(f"{url}: {getattr(err, 'reason', None) or err}")
    raise WeightsError(f"{name}: no address answered (" + "; ".join(failures)[:600] + "); `upres "
                       "models add FILE` installs a copy you have")


def add(file: str | Path, name: str | None = None) -> str:
    """Install a local copy: the published entry whose sha256 it has (it must be ``name``'s, when
    given) is copied into the cache; returns the entry's name."""
    file = Path(file)
    if not file.is_file():
        raise WeightsError(f"{file}: no such file")
    got = files_sha256(file)
    match = next((e for e in PUBLISHED.values() if e.sha256 == got), None)
    if name is not None:
        if name not in PUBLISHED:
            raise WeightsError(f"{name!r} is not a published model upres knows ({', '.join(PUBLISHED)})")
        if match is None or match.name != name:
            raise WeightsError(f"{file}: sha256 {got} is not the published {PUBLISHED[name].sha256} "
                               f"of {name}; nothing was installed")
    if match is None:
        raise WeightsError(f"{file}: sha256 {got} matches no published model upres knows "
                           "(`upres models` lists them); use it by path instead: -n FILE")
    with atomic_path(folder() / f"{match.name}.pth") as tmp:
        shutil.copyfile(file, tmp)
    return match.name
