"""Download, verify and unpack Oxford5k / Paris6k / ROxford5k / RParis6k into the loaders' layout.

    retrieval-download dataset=oxford5k paths.data_dir=DATA_DIR

Which files make each dataset is :mod:`retrieval.acquisition.datasets`. Result (what
:mod:`retrieval.data.landmark_formats` reads): ``<root>/<name>/jpg/`` (images at
any depth: Paris unpacks as ``paris/<landmark>/*.jpg``), ``<root>/<name>/gt_files/`` (VGG
ground-truth .txt files) for the classic sets, ``<root>/<name>/gnd_<name>.pkl`` for the
revisited ones. Archives are fetched into ``<root>/<name>/archives/`` (resumable ``.part``
files), checked, unpacked through a scratch folder and then deleted (``keep_archives=true``
keeps them). ``<root>/<name>/.download.json`` records the size and sha256 of every file at
its first download, so a later download or a tampered ground-truth pickle is caught even
where the publisher gives no checksum; it also makes a re-run with everything in place a
no-op. The revisited sets reuse an already unpacked classic set's images (``jpg`` becomes a
symlink) instead of downloading 2-4.5 GB again.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from retrieval.acquisition.archives import (
    Manifest,
    flatten_files,
    move_tree,
    safe_extract,
    unreadable_images,
    verify_file,
)
from retrieval.acquisition.datasets import (
    CHECKSUMS,
    DATASETS,
    GROUND_TRUTH,
    IMAGES,
    KEPT,
    PINNED_HINT,
    TRAIN,
    DatasetSpec,
    RemoteFile,
)
from retrieval.acquisition.fetch import DownloadFailed, FetchOptions, fetch_first
from retrieval.acquisition.shards import published_md5, select_shards, write_shard_list
from retrieval.data.landmark_formats import IMAGE_EXTENSIONS
from retrieval.utils.atomic import scratch_directory
from retrieval.utils.errors import DatasetError

ARCHIVES = "archives"  # where downloads wait (and users may drop files by hand)


@dataclass
class DownloadReport:
    """What one run did; ``downloaded`` and ``extracted`` are empty when all was in place."""

    dataset: str
    folder: Path
    downloaded: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    in_place: list[str] = field(default_factory=list)
    image_count: int | None = None  # counted when images were unpacked in this run
    unreadable: list[Path] = field(default_factory=list)


def _manual_help(spec: DatasetSpec, folder: Path, files: tuple[RemoteFile, ...]) -> str:
    shown = 8  # GLDv2 has 1000 files: their pattern is plain from the first few
    urls = "\n".join(f"  {f.urls[0]}" for f in files[:shown])
    urls += f"\n  ... and {len(files) - shown} more" if len(files) > shown else ""
    return (
        f"To install it by hand, fetch these on a machine with internet access:\n{urls}\n"
        f"copy them into {folder / ARCHIVES}/ and run this command again: it verifies and "
        f"unpacks files it finds there without downloading. (Or unpack them yourself: images "
        f"under {folder / IMAGES}/, ground-truth .txt files directly in {folder / GROUND_TRUTH}/, "
        f"gnd_*.pkl in {folder}/.)"
    )


def _forget_missing(manifest: Manifest, folder: Path) -> None:
    """Un-mark files whose unpacked folder was deleted since, so they are fetched again."""
    link = folder / IMAGES
    if link.is_symlink() and not link.exists():  # shared images whose classic set was removed
        link.unlink()
    for record in manifest.files.values():
        place = record.get("placed")
        if place in (IMAGES, GROUND_TRUTH, TRAIN) and not (
            (folder / place).is_dir() and any((folder / place).iterdir())
        ):
            del record["placed"]


def _in_place(remote: RemoteFile, folder: Path, manifest: Manifest) -> bool:
    record = manifest.files.get(remote.name, {})
    if not record.get("placed"):
        return False
    if remote.place not in KEPT:
        return True  # its folder exists: _forget_missing ran first
    target = _kept_path(remote, folder)
    if not target.is_file():
        return False
    # small files kept as they are get re-checked on every run: a changed gnd pkl is caught
    verify_file(
        target,
        size=record["size"],
        checksums={"sha256": record["sha256"]},
        hint=f"Its sha256 was recorded in {manifest.path} when it was downloaded; run "
        f"the command again to download it afresh.",
    )
    return True


def _kept_path(remote: RemoteFile, folder: Path) -> Path:
    return folder / remote.place / remote.name


def _share_images(spec: DatasetSpec, folder: Path, manifest: Manifest, table: dict) -> bool:
    """Point ``jpg`` at the classic set's unpacked images when that set is complete."""
    if spec.shares_images_with is None:
        return False
    source = folder.parent / spec.shares_images_with
    image_files = [f.name for f in table[spec.shares_images_with].files if f.place == IMAGES]
    source_records = Manifest(source).files if source.is_dir() else {}
    link = folder / IMAGES
    if (
        link.exists()
        or link.is_symlink()
        or not (source / IMAGES).is_dir()
        or not all(source_records.get(n, {}).get("placed") for n in image_files)
    ):
        return False
    try:
        link.symlink_to(Path("..") / spec.shares_images_with / IMAGES, target_is_directory=True)
    except OSError:  # e.g. Windows without symlink rights: download a copy instead
        return False
    for name in image_files:
        manifest.files[name] = {"placed": IMAGES, "shared_with": spec.shares_images_with}
    manifest.save()
    return True


def _obtain(
    remote: RemoteFile,
    urls: tuple[str, ...],
    folder: Path,
    manifest: Manifest,
    ignore_pinned: bool,
    options: FetchOptions,
    progress: Progress,
    report: DownloadReport,
) -> Path:
    """Download ``remote`` into archives/ (unless already there) and verify it."""
    path = folder / ARCHIVES / remote.name
    path.parent.mkdir(parents=True, exist_ok=True)
    size = None if ignore_pinned else remote.size
    record = manifest.files.get(remote.name, {})
    if not path.is_file():
        url = fetch_first(urls, path, expected_size=size, options=options, progress=progress)
        record = manifest.files[remote.name] = {**record, "url": url}
        report.downloaded.append(remote.name)
    checksums, hint = ({} if ignore_pinned else remote.pinned_checksums()), PINNED_HINT
    if remote.md5_file is not None:  # published beside the file (GLDv2's md5sum lists)
        listing = folder / CHECKSUMS / remote.md5_file
        checksums, hint = {**checksums, "md5": published_md5(listing)}, f"Its md5 is published in {listing}."
    digests = verify_file(path, size=size, checksums=checksums, hint=hint)
    if "sha256" in record:  # trust on first use: it must still be the file first downloaded
        digests = verify_file(
            path,
            size=record["size"],
            checksums={"sha256": record["sha256"]},
            hint=f"The expected sha256 was recorded in {manifest.path} at the "
            f"first download; if the publisher changed the file, delete "
            f"that manifest and run again.",
        )
    manifest.files[remote.name] = {**record, "size": path.stat().st_size, **digests}
    manifest.save()
    return path


def _place(remote: RemoteFile, path: Path, folder: Path, manifest: Manifest) -> int:
    """Move ``path``'s content where the loaders expect it; returns the number of files."""
    if remote.place in KEPT:
        _kept_path(remote, folder).parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, _kept_path(remote, folder))
        return 1
    with scratch_directory(folder, f"unpack-{remote.name}") as scratch:
        try:
            count = safe_extract(path, scratch)
            unpacked = sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*") if p.is_file())
            if remote.place == GROUND_TRUTH:
                flatten_files(scratch, folder / GROUND_TRUTH)
            else:
                move_tree(scratch, folder / remote.place)
            if remote.shard is not None:  # what the readers use instead of listing the folder
                write_shard_list(folder, remote.name, unpacked)
        except DatasetError:
            path.unlink(missing_ok=True)  # a corrupt or hostile archive is of no further use
            manifest.files.pop(remote.name, None)
            manifest.save()
            raise
    return count


def download_dataset(
    name: str,
    root: str | Path = "data",
    *,
    mirror: str | None = None,
    keep_archives: bool = False,
    ignore_pinned: bool = False,
    options: FetchOptions | None = None,
    console: Console | None = None,
    table: dict[str, DatasetSpec] = DATASETS,
    shards: int | list[int] | None = None,
) -> DownloadReport:
    """Make ``<root>/<name>`` complete; download only what is missing. See the module doc.

    ``mirror`` replaces every official URL by ``<mirror>/<file name>``. ``shards`` picks
    some shards of a sharded image set (a number N: the first N; a list: those numbers);
    None: all. A combined dataset (``roxford5k+r1m``) downloads each part into its own
    folder and reports the last.
    """
    if name not in table:
        raise DatasetError(f"unknown dataset '{name}'; choose one of {', '.join(table)}")
    spec, console = table[name], console or Console(stderr=True)
    if spec.parts:
        reports = [
            download_dataset(
                part,
                root,
                mirror=mirror,
                keep_archives=keep_archives,
                ignore_pinned=ignore_pinned,
                options=options,
                console=console,
                table=table,
                shards=shards if table[part].shard_numbers else None,
            )
            for part in spec.parts
        ]
        return reports[-1]
    files = select_shards(spec, shards)
    options = dataclasses.replace(options or FetchOptions(), size_hint=PINNED_HINT)
    folder = Path(root).expanduser().resolve() / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest, report = Manifest(folder), DownloadReport(name, folder)
    _forget_missing(manifest, folder)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=options.quiet) as progress:
        for remote in files:
            if _in_place(remote, folder, manifest) or (
                remote.place == IMAGES and _share_images(spec, folder, manifest, table)
            ):
                report.in_place.append(remote.name)
                continue
            urls = (f"{mirror.rstrip('/')}/{remote.name}",) if mirror else remote.urls
            try:
                path = _obtain(remote, urls, folder, manifest, ignore_pinned, options, progress, report)
            except DownloadFailed as error:
                why = (
                    "no server could be reached, so downloading is impossible from here"
                    if error.unreachable
                    else "the server did not deliver it"
                )
                raise DatasetError(
                    f"cannot download {remote.name} for {name}: {why} ({error}).\n"
                    f"{_manual_help(spec, folder, files)}"
                ) from None
            console.print(f"{name}: unpacking {remote.name} ...")
            manifest.files[remote.name]["files"] = _place(remote, path, folder, manifest)
            manifest.files[remote.name]["placed"] = remote.place
            manifest.save()
            report.extracted.append(remote.name)
            if keep_archives and remote.place not in KEPT:
                continue
            path.unlink(missing_ok=True)
    # sharded sets are too large to open every image here: their readers check a sample
    if any(f.place == IMAGES and f.shard is None and f.name in report.extracted for f in files):
        report.image_count, report.unreadable = unreadable_images(folder / IMAGES, IMAGE_EXTENSIONS)
    _print_summary(report, console, root, spec.used_by or (name,))
    return report


def _print_summary(
    report: DownloadReport, console: Console, root: str | Path, used_by: tuple[str, ...]
) -> None:
    if not report.downloaded and not report.extracted:
        console.print(
            f"{report.dataset}: already complete in {report.folder}; nothing downloaded or extracted."
        )
        return
    if report.image_count is not None:
        console.print(
            f"{report.dataset}: {report.image_count} images, {len(report.unreadable)} "
            f"unreadable"
            + (
                " (kept: the loader skips them with a warning): "
                + ", ".join(p.name for p in report.unreadable[:5])
                + (" ..." if len(report.unreadable) > 5 else "")
                if report.unreadable
                else "."
            )
        )
    console.print(
        f"{report.dataset}: ready in {report.folder} (downloaded "
        f"{len(report.downloaded)}, unpacked {len(report.extracted)} file(s)). Use it "
        f"with {' or '.join(f'dataset={n}' for n in used_by)} paths.data_dir={root}"
    )
