"""What the Cloudinary stand-in remembers: stored assets, and a record of every upload request.

Tests read these to count attempts and retries and to check what was stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["created", "overwritten", "existing"]


@dataclass(frozen=True)
class UploadRecord:
    """One accepted upload request, as the stand-in understood it."""

    public_id: str
    params: dict[str, str]  # every form field except the file
    context: dict[str, str]
    data: bytes
    received_at: float
    outcome: Outcome
    version: int


@dataclass
class StoredAsset:
    public_id: str
    asset_id: str
    version: int
    version_id: str
    data: bytes
    format: str
    width: int
    height: int
    etag: str
    created_at: str
    context: dict[str, str]
    tags: list[str]
    original_filename: str
    invalidations: int = 0
    # (transformation, extension) -> encoded bytes; dropped when the asset is replaced.
    derived: dict[tuple[str, str], bytes] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class RequestRecord:
    """Every upload request, accepted or not: lets tests count attempts and retries."""

    path: str
    status: int  # 0 for a request that was hung and never answered
    public_id: str | None
    fault: Literal["fail", "hang"] | None
    received_at: float
