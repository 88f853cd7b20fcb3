"""The downloadable datasets: where each published file lives, what it must be (size,
checksums where known) and where its content goes (images, ground truth, kept as is).

:mod:`retrieval.acquisition.download` fetches, verifies and unpacks them;
``retrieval-download`` without a dataset prints :func:`dataset_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGES, GROUND_TRUTH, KEEP = "jpg", "gt_files", "."  # where a file's content ends up
TRAIN = "train"  # GLDv2's shards unpack into train/a/b/c/<id>.jpg
CHECKSUMS = "md5sum"  # published md5 lists, kept as they are in <dataset>/md5sum/
KEPT = (KEEP, CHECKSUMS)  # places whose files are kept as downloaded, not unpacked
PINNED_HINT = (
    "The expected values are pinned in retrieval/acquisition/datasets.py; if the "
    "publisher has re-released the file, run again with ignore_pinned=true."
)


@dataclass(frozen=True)
class RemoteFile:
    """One published file: where to get it, what it must be, where its content goes."""

    name: str
    urls: tuple[str, ...]  # official locations, tried in order
    place: str  # IMAGES / GROUND_TRUTH (tar archives unpacked there) or KEEP (kept as is)
    size: int | None = None  # exact bytes, where known
    md5: str | None = None
    sha256: str | None = None
    shard: int | None = None  # one of a sharded image set: fetched when selected (shards=...)
    md5_file: str | None = None  # the file (of the same dataset) that publishes this one's md5

    def pinned_checksums(self) -> dict[str, str]:
        return {k: v for k, v in (("md5", self.md5), ("sha256", self.sha256)) if v}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    summary: str  # for --help: size and content
    files: tuple[RemoteFile, ...]
    shares_images_with: str | None = None  # classic set whose unpacked jpg/ can be reused
    parts: tuple[str, ...] = ()  # a combination of other datasets, each in its own folder
    used_by: tuple[str, ...] = ()  # the dataset configs that read it, where not its own name

    @property
    def shard_numbers(self) -> list[int]:
        return sorted({f.shard for f in self.files if f.shard is not None})


_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
_THOR = "https://thor.robots.ox.ac.uk/datasets"  # where the VGG links redirect to today
_CMP = "https://cmp.felk.cvut.cz"

# Sources: file names and URLs as in filipradenovic/revisitop python/download.py and
# cnnimageretrieval-pytorch cirtorch/utils/download.py (images, gnd pkl) and the VGG dataset
# pages (ground-truth archives). VGG publishes no checksums for these files; the two pinned
# for Oxford (and its size) come from third-party download scripts that verify them. Paris and
# the pickles are checked by size against Content-Length and then trust-on-first-use (sha256
# in .download.json). If a publisher re-releases a file, --ignore-pinned skips the pins.
_OXFORD_IMAGES = RemoteFile(
    "oxbuild_images-v1.tgz",
    (f"{_VGG}/oxbuildings/oxbuild_images-v1.tgz", f"{_THOR}/oxford-buildings/oxbuild_images-v1.tgz"),
    IMAGES,
    size=1_938_238_004,
    md5="8f0017cc5d671f35011d6968269fbf47",
)
_PARIS_IMAGES = tuple(
    RemoteFile(
        f"paris_{k}-v1.tgz",
        (f"{_VGG}/parisbuildings/paris_{k}-v1.tgz", f"{_THOR}/paris-buildings/paris_{k}-v1.tgz"),
        IMAGES,
    )
    for k in (1, 2)
)


def _gnd_pkl(name: str) -> RemoteFile:
    return RemoteFile(
        f"gnd_{name}.pkl",
        (
            f"{_CMP}/revisitop/data/datasets/{name}/gnd_{name}.pkl",
            f"{_CMP}/cnnimageretrieval/data/test/{name}/gnd_{name}.pkl",
        ),
        KEEP,
    )


# GLDv2: file names, URLs and the md5 lists as in cvdfoundation/google-landmark README.md
# ("Download train set", "Checking the download") and download-dataset.sh; the shards unpack
# as a/b/c/<id>.jpg inside train/. Only the shards have published checksums (one md5sum
# file each); the CSVs are checked by trust on first use.
_GLD = "https://s3.amazonaws.com/google-landmark"
_GLDV2_METADATA = tuple(
    RemoteFile(name, (f"{_GLD}/metadata/{name}",), KEEP)
    for name in ("train.csv", "train_clean.csv", "train_attribution.csv", "train_label_to_category.csv")
)
_GLDV2_SHARDS = tuple(
    remote
    for k in range(500)
    for remote in (
        RemoteFile(
            f"md5.images_{k:03d}.txt", (f"{_GLD}/md5sum/train/md5.images_{k:03d}.txt",), CHECKSUMS, shard=k
        ),
        RemoteFile(
            f"images_{k:03d}.tar",
            (f"{_GLD}/train/images_{k:03d}.tar",),
            TRAIN,
            shard=k,
            md5_file=f"md5.images_{k:03d}.txt",
        ),
    )
)
# revisitop's 1M distractors: names and URLs as in filipradenovic/revisitop python/download.py
# (download_distractors) and python/dataset.py (revisitop1m.txt: image paths relative to
# jpg/); the archives unpack straight into jpg/. No checksums are published.
_PTAK = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"
_R1M = (
    RemoteFile("revisitop1m.txt", (f"{_PTAK}/revisitop1m.txt",), KEEP),
    *(
        RemoteFile(f"revisitop1m.{k}.tar.gz", (f"{_PTAK}/jpg/revisitop1m.{k}.tar.gz",), IMAGES, shard=k)
        for k in range(1, 101)
    ),
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "oxford5k",
            "~1.9 GB; 5062 images, 55 queries (VGG Oxford Buildings)",
            (
                _OXFORD_IMAGES,
                RemoteFile(
                    "gt_files_170407.tgz",
                    (
                        f"{_VGG}/oxbuildings/gt_files_170407.tgz",
                        f"{_THOR}/oxford-buildings/gt_files_170407.tgz",
                    ),
                    GROUND_TRUTH,
                    md5="06c4dee0ad954f6ee122c82390548537",
                ),
            ),
        ),
        DatasetSpec(
            "paris6k",
            "~2.5 GB; 6412 images (~20 unreadable), 55 queries (VGG Paris)",
            (
                *_PARIS_IMAGES,
                RemoteFile(
                    "paris_120310.tgz",
                    (f"{_VGG}/parisbuildings/paris_120310.tgz", f"{_THOR}/paris-buildings/paris_120310.tgz"),
                    GROUND_TRUTH,
                ),
            ),
        ),
        DatasetSpec(
            "roxford5k",
            "~1.9 GB; Oxford images + revisited gnd (70 queries, CMP revisitop)",
            (_OXFORD_IMAGES, _gnd_pkl("roxford5k")),
            shares_images_with="oxford5k",
        ),
        DatasetSpec(
            "rparis6k",
            "~2.5 GB; Paris images + revisited gnd (70 queries, CMP revisitop)",
            (*_PARIS_IMAGES, _gnd_pkl("rparis6k")),
            shares_images_with="paris6k",
        ),
        DatasetSpec(
            "gldv2",
            "~500 GB; GLDv2 train: 4.1 M images (clean: 1.6 M, 81 k landmarks) in 500 tar "
            "shards with md5 lists, CSV metadata (shards=N fetches the first N)",
            (*_GLDV2_METADATA, *_GLDV2_SHARDS),
        ),
        DatasetSpec(
            "revisitop1m",
            "~100 GB or more (estimated, unpublished); revisitop's 1M distractors in 100 "
            "archives + revisitop1m.txt; fetched by dataset=roxford5k+r1m or rparis6k+r1m "
            "(shards=N: the first N)",
            _R1M,
            used_by=("roxford5k+r1m", "rparis6k+r1m"),
        ),
        DatasetSpec(
            "roxford5k+r1m",
            "~100 GB or more; roxford5k and revisitop1m, each in its own folder",
            (),
            parts=("roxford5k", "revisitop1m"),
        ),
        DatasetSpec(
            "rparis6k+r1m",
            "~100 GB or more; rparis6k and revisitop1m, each in its own folder",
            (),
            parts=("rparis6k", "revisitop1m"),
        ),
    )
}


def dataset_table(table: dict[str, DatasetSpec] = DATASETS) -> str:
    """Every downloadable dataset with its approximate size and official sources."""
    lines = []
    for spec in table.values():
        lines.append(f"  {spec.name:<10} {spec.summary}")
        shown = [f for f in spec.files if f.shard is None or f.shard == spec.shard_numbers[0]]
        lines.extend(f"{'':13}{f.urls[0]}" for f in shown)
        if len(shown) < len(spec.files):
            lines.append(
                f"{'':13}... and the same for shards {spec.shard_numbers[1]}..{spec.shard_numbers[-1]}"
            )
        if spec.parts:
            lines.append(f"{'':13}= {' + '.join(spec.parts)}")
    return "\n".join(lines)
