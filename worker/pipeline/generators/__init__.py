"""The generator kinds (``GENERATOR_KIND``) behind one small provider interface.

    generator = make_generator(settings, downloader)
    image = await generator.generate(job, width, height, GeneratorContext.of(progress))

| module | what |
| --- | --- |
| ``base.py`` | the provider interface (start, poll, cancel, result), ``Handle``, the failures |
| ``driver.py`` | ``Generator``: resume a stored handle or start, store it, wait, retry, cancel |
| ``throttle.py`` | ``Retry-After`` (seconds, HTTP date, the providers' bodies), the replica's gate |
| ``http.py`` | the generic protocol: Modal web endpoints, your own server; redirects by hand |
| ``replicate.py``, ``openai.py``, ``fal.py`` | the hosted providers' APIs |
| ``outputs.py``, ``transport.py`` | answers → images; one exchange with a provider's API |
"""

from __future__ import annotations

from worker.pipeline.download import ImageDownloader
from worker.pipeline.generators.base import (
    GeneratedImage,
    GenerationRequest,
    GeneratorContext,
    Handle,
    Provider,
)
from worker.pipeline.generators.driver import Generator
from worker.settings import GeneratorKind, Settings


def make_provider(settings: Settings, downloader: ImageDownloader) -> Provider:
    kind = settings.generator_kind
    if kind == GeneratorKind.REPLICATE:
        from worker.pipeline.generators.replicate import ReplicateProvider

        return ReplicateProvider(settings, downloader)
    if kind == GeneratorKind.OPENAI:
        from worker.pipeline.generators.openai import OpenAIProvider

        return OpenAIProvider(settings, downloader)
    if kind == GeneratorKind.FAL:
        from worker.pipeline.generators.fal import FalProvider

        return FalProvider(settings, downloader)
    from worker.pipeline.generators.http import HttpProvider

    return HttpProvider(settings, downloader)


def make_generator(settings: Settings, downloader: ImageDownloader) -> Generator:
    """The generator ``GENERATOR_KIND`` selects, driven by the shared driver."""
    return Generator(settings, make_provider(settings, downloader))


__all__ = [
    "GeneratedImage",
    "GenerationRequest",
    "Generator",
    "GeneratorContext",
    "Handle",
    "Provider",
    "make_generator",
    "make_provider",
]
