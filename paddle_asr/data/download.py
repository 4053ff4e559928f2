"""Stage -1 downloads: fetch corpus archives with resume and an md5 check.

An archive is written as `<name>.part` and renamed only once its md5 matches, so a killed or
failed download leaves nothing a re-run would trust; a re-run continues the `.part` file with an
HTTP Range request. Subsets already unpacked (or whose archive is complete) are not fetched again.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from paddle_asr.errors import AsrError

CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def download_archive(url: str, dest: Path, md5: str, *, log: Callable[[str], None] = print,
                     timeout: float = 60) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), check its md5, and return `dest`."""
    dest = Path(dest)
    if dest.is_file():
        if file_md5(dest) == md5:
            log(f"download: {dest} is complete (md5 {md5})")
            return dest
        raise AsrError(f"{dest} exists but its md5 is not {md5}: the file is damaged; delete it and run stage -1 again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    # A Range request continues an interrupted download; a server that ignores it answers 200.
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/https URL from the recipe)
            resumed = start > 0 and response.status == 206
            if start and not resumed:
                log(f"download: the server does not resume; fetching {url} from the start")
            log(f"download: {url} -> {dest}" + (f" (resuming at {start} bytes)" if resumed else ""))
            with open(part, "ab" if resumed else "wb") as out:
                while block := response.read(CHUNK):
                    out.write(block)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise AsrError(f"cannot download {url} ({e}); without network, fetch it yourself into {dest.parent} "
                       "(a .tar.gz, or the unpacked folder) and run again; a partial download is resumed") from None
    got = file_md5(part)
    if got != md5:
        part.unlink()
        raise AsrError(f"{url}: md5 {got}, expected {md5}; the download was corrupt and has been removed - run again")
    part.rename(dest)
    return dest
