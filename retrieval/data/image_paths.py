"""Image paths of million-image sets, built on access instead of held as Python objects.

GLDv2-clean lists 1.6 M images, the revisitop distractors 1 M. A list of that many
``Path`` objects costs ~0.5 GB in every process, and DataLoader workers forked from it copy
it page by page as they touch the reference counts. :class:`ImagePaths` keeps one NumPy
array of fixed-width names (16 bytes an id for GLDv2) and joins ``folder / prefix / name +
suffix`` only when an item is asked for; slicing and :meth:`ImagePaths.take` stay compact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from retrieval.data.image_io import image_problem
from retrieval.utils.errors import DatasetError


def gldv2_layout(image_id: str) -> str:
    """GLDv2's ``a/b/c/abc....jpg`` (the first three characters of the id as folders)."""
    return f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def as_is(name: str) -> str:
    return name


class ImagePaths(Sequence[Path]):
    """``folder / layout(name)`` for each of ``names`` (a NumPy string array), in order."""

    def __init__(self, folder: Path, names: np.ndarray, layout: Callable[[str], str] = as_is) -> None:
        self.folder, self.names, self.layout = Path(folder), np.asarray(names), layout

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> Path: ...
    @overload
    def __getitem__(self, index: slice) -> ImagePaths: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return ImagePaths(self.folder, self.names[index], self.layout)
        return self.folder / self.layout(str(self.names[index]))

    def __iter__(self) -> Iterator[Path]:
        for name in self.names.tolist():
            yield self.folder / self.layout(str(name))

    def take(self, indices: np.ndarray | Sequence[int]) -> ImagePaths:
        return ImagePaths(self.folder, self.names[np.asarray(indices, dtype=np.int64)], self.layout)

    def __repr__(self) -> str:
        return f"ImagePaths({self.folder}, {len(self)} images)"


class ChainedPaths(Sequence[Path]):
    """``head`` then ``tail``: a benchmark's own images with distractors appended, without
    materialising the distractors' paths."""

    def __init__(self, head: Sequence[Path], tail: Sequence[Path]) -> None:
        self.head, self.tail = list(head), tail

    def __len__(self) -> int:
        return len(self.head) + len(self.tail)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.head[index] if index < len(self.head) else self.tail[index - len(self.head)]

    def __iter__(self) -> Iterator[Path]:
        yield from self.head
        yield from self.tail


def take(items: Sequence, indices: np.ndarray | Sequence[int]) -> Sequence:
    """``items`` at ``indices``: compact for :class:`ImagePaths` and NumPy arrays, else a list."""
    if isinstance(items, ImagePaths | np.ndarray):
        return items.take(np.asarray(indices, dtype=np.int64))
    return [items[i] for i in np.asarray(indices, dtype=np.int64).tolist()]


def sampled_problems(paths: Sequence[Path], sample: int, seed: int = 0) -> dict[Path, str]:
    """Header checks (:func:`~retrieval.data.image_io.image_problem`) of ``sample`` seeded
    images of ``paths``: what a set of millions affords at start-up instead of decoding
    every image (a missing or truncated download shows up in any sample)."""
    if not len(paths) or sample <= 0:
        return {}
    picked = np.random.default_rng(seed).choice(len(paths), size=min(sample, len(paths)), replace=False)
    problems = {}
    for index in np.sort(picked).tolist():
        path = paths[index]
        problem = "missing" if not path.is_file() else image_problem(path)
        if problem is not None:
            problems[path] = problem
    return problems


def check_sampled(paths: Sequence[Path], sample: int, seed: int, what: str, fix: str) -> None:
    """:func:`sampled_problems`, as one DatasetError naming up to three: ``what`` says which
    images were sampled ("distractors listed in FILE"), ``fix`` how to get them again."""
    problems = sampled_problems(paths, sample, seed)
    if problems:
        shown = "; ".join(f"{p} ({why})" for p, why in list(problems.items())[:3])
        raise DatasetError(
            f"{len(problems)} of {min(sample, len(paths))} sampled {what} are missing or broken, "
            f"e.g. {shown}. {fix}"
        )
