"""Pages of a long list (queries, database images, a ranking): ``?page=N&per_page=M``
with bounds, so no page of a million-image database lists more than ``per_page`` items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Query

from retrieval.serving.app.uploads import RequestError

PER_PAGE, MAX_PER_PAGE = 60, 200
# a ranking is searched to its page's end: beyond this many pages, a query deserves the API
MAX_RESULT_PAGES = 50

# the two parameters of every paged route, HTML and JSON alike; no bounds here: page_of
# checks them, so that a bad value is a 422 that names its allowed range
PageNumber = Annotated[int | None, Query(description="page, from 1 (default 1)")]
PerPage = Annotated[
    int | None, Query(description=f"items a page (default {PER_PAGE}, at most {MAX_PER_PAGE})")
]


@dataclass(frozen=True)
class Page:
    number: int  # 1-based
    per_page: int
    total: int  # items in the whole list
    path: str  # the page's route, for the links
    extra: tuple[tuple[str, int], ...] = ()  # other query parameters the links keep (k)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def start(self) -> int:
        return (self.number - 1) * self.per_page

    @property
    def stop(self) -> int:
        return min(self.start + self.per_page, self.total)

    def url(self, number: int) -> str:
        return f"{self.path}?{urlencode([*self.extra, ('page', number), ('per_page', self.per_page)])}"

    @property
    def prev_url(self) -> str | None:
        return self.url(self.number - 1) if self.number > 1 else None

    @property
    def next_url(self) -> str | None:
        return self.url(self.number + 1) if self.number < self.pages else None


def page_of(
    total: int,
    page: int | None,
    per_page: int | None,
    path: str,
    default: int = PER_PAGE,
    max_pages: int | None = None,
    **extra: int,
) -> Page:
    """The requested page of ``total`` items; out of bounds is a 422 naming the bounds."""
    per_page = default if per_page is None else per_page
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise RequestError(422, f"per_page must be between 1 and {MAX_PER_PAGE}, got {per_page}.")
    result = Page(1 if page is None else page, per_page, total, path, tuple(extra.items()))
    last = result.pages if max_pages is None else min(result.pages, max_pages)
    if not 1 <= result.number <= last:
        raise RequestError(422, f"page must be between 1 and {last}, got {result.number}.")
    return result
