"""The work each job exists for: check input → generate → upload to Cloudinary.

The generator is the one ``GENERATOR_KIND`` selects (``pipeline/generators``); it stores its
provider's handle through the engine's ``JobContext`` (the step's ``progress``), so that a later
attempt resumes the generation instead of paying for a new one.

Progress: 10 when generation starts (set by the claim), 60 once the image is in hand (the upload
is what remains), 100 with the completion itself.
"""

from __future__ import annotations

import time

from worker.jobs import Job, JobResult, Progress
from worker.observability import metrics
from worker.pipeline.cloudinary import CloudinaryUploader
from worker.pipeline.download import ImageDownloader
from worker.pipeline.generators import GeneratorContext, make_generator
from worker.pipeline.images import validate_job
from worker.settings import Settings


class ImagePipeline:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._downloader = ImageDownloader(settings)
        self._generator = make_generator(settings, self._downloader)
        self._uploader = CloudinaryUploader(settings)

    @property
    def deadline(self) -> float:
        """An upper bound on one job's work, past which something is wrong: every generator
        attempt (each may first wait for the replica's throttle gate, at most one attempt's
        timeout), every wait between attempts (a longer Retry-After wins, capped by one
        attempt's timeout), plus generous room for the download and the upload."""
        s = self._settings
        timeout, delays = s.generator_timeout_seconds, s.generator_retry_delays
        attempts = len(delays) + 1
        return 2 * timeout * attempts + sum(max(d, timeout) for d in delays) + 600

    async def __call__(self, job: Job, progress: Progress) -> JobResult:
        width, height = validate_job(job, self._settings)
        started = time.monotonic()
        generated = await self._generator.generate(
            job, width, height, GeneratorContext.of(progress)
        )
        metrics.STAGE_DURATION.labels("generate").observe(time.monotonic() - started)
        await progress(60)
        if generated.cloudinary_link is not None:
            # Already on Cloudinary: the contract says use it as is, no second upload.
            return JobResult(
                image_url=generated.cloudinary_link,
                thumbnail_url=self._uploader.thumbnail_url(generated.cloudinary_link),
            )
        assert generated.data is not None
        started = time.monotonic()
        uploaded = await self._uploader.upload(job, generated.data)
        metrics.STAGE_DURATION.labels("upload").observe(time.monotonic() - started)
        return JobResult(image_url=uploaded.image_url, thumbnail_url=uploaded.thumbnail_url)

    async def aclose(self) -> None:
        await self._generator.aclose()
        await self._downloader.aclose()
        await self._uploader.aclose()
