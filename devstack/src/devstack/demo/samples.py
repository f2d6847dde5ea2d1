"""The demo's sample jobs: varied prompts and aspect ratios, every generator answer the worker
understands, one job per hosted generator kind (Replicate, OpenAI, fal), one cold-start endpoint,
one bad input and one job its user cancels midway; each says what it demonstrates."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SampleJob:
    prompt: str
    aspect_ratio: str
    model: str
    # How the generator stand-in answers, sent as a ``[gen:…]`` token in the prompt (see
    # devstack.generator): the demo shows every answer shape the worker understands.
    answer: str
    note: str  # what this job demonstrates, for people
    expect_error: str | None = None  # the start of the error_message a designed failure gets
    # Inserted by a signed-in user through the REST API, who cancels it (cancel_job) once it has
    # been running this many seconds: it must end cancelled, with nothing uploaded.
    cancel_after: float | None = None

    @property
    def stored_prompt(self) -> str:
        return f"{self.prompt} [gen:{self.answer}]"


VARIED = (
    SampleJob("a lighthouse on a cliff at dusk, oil painting", "16:9", "flux-schnell", "png", "PNG bytes"),
    SampleJob("portrait of an astronaut made of stained glass", "9:16", "flux-dev", "jpeg", "JPEG bytes"),
    SampleJob("an isometric tiny city on a floating island", "4:3", "sdxl-turbo", "base64", "JSON with base64"),
    SampleJob("a bowl of ramen, studio lighting, top-down", "3:4", "flux-schnell", "image_url", "JSON image_url, downloaded"),
    SampleJob("a panoramic desert canyon at sunrise", "21:9", "flux-dev", "redirect303:2", "Modal 303 redirect chain"),
    SampleJob("a tall waterfall in a misty rainforest", "9:21", "sdxl-turbo", "slow:2", "slow generator (2 s)"),
    SampleJob("a vintage bicycle leaning on a blue door", "3:2", "flux-schnell", "webp", "WebP bytes"),
    SampleJob("a watercolor map of an imaginary archipelago", "2:3", "flux-dev", "b64_json", "JSON b64_json"),
    SampleJob("a cozy reading nook with rain on the window", "1:1", "sdxl-turbo", "openai", "OpenAI Images JSON"),
    SampleJob("a neon-lit street market at night", "16:9", "flux-schnell", "url", "JSON url, downloaded"),
)  # fmt: skip
COLD_START = SampleJob(
    "a red fox curled up in fresh snow", "1:1", "flux-dev", "cold404:2",
    "cold start: 404 'stopped' twice, then retried",
)  # fmt: skip
BAD_INPUT = SampleJob(
    "a sailboat on a calm lake", "5:1", "flux-schnell", "png",
    "bad input: no such aspect ratio", expect_error="aspect ratio '5:1' is not one of",
)  # fmt: skip


CANCELLED = SampleJob(
    "a hot air balloon over patchwork fields", "3:2", "flux-dev", "slow:8",
    "cancelled midway by its user (cancel_job)", cancel_after=1.0,
)  # fmt: skip


# One job per hosted generator kind, each through its stand-in; the demo's worker picks the kind
# by the model (devstack/demo/kinds.py). The answer tokens are the provider stand-ins' faults.
HOSTED = (
    SampleJob("a paper boat on a rain puddle", "16:9", "black-forest-labs/flux-schnell", "run:1.5", "Replicate prediction (GENERATOR_KIND=replicate)"),
    SampleJob("a glass terrarium with tiny mushrooms", "1:1", "gpt-image-1", "run:1", "OpenAI Images API (GENERATOR_KIND=openai)"),
    SampleJob("a lantern-lit night market in the rain", "9:16", "fal-ai/flux/schnell", "run:1.5", "fal queue request (GENERATOR_KIND=fal)"),
)  # fmt: skip


def sample_jobs(count: int) -> list[SampleJob]:
    """``count`` (≥ 2) jobs: the varied ones (cycled), the cold start second, from 3 jobs on
    the one cancelled midway third (while Realtime is up), the bad input two thirds of the way,
    so that it arrives after the Realtime drop."""
    cancelled = [CANCELLED] if count >= 3 else []
    hosted = list(HOSTED) if count >= 6 else []  # from 6 jobs on: one per hosted kind
    jobs = [_varied(i) for i in range(count - 2 - len(cancelled) - len(hosted))]
    jobs.insert(min(1, len(jobs)), COLD_START)
    if cancelled:
        jobs.insert(min(2, len(jobs)), CANCELLED)
    for n, sample in enumerate(hosted):
        jobs.insert(min(3 + 2 * n, len(jobs)), sample)
    jobs.insert(max(1, 2 * count // 3), BAD_INPUT)
    return jobs


def _varied(i: int) -> SampleJob:
    job = VARIED[i % len(VARIED)]
    take = i // len(VARIED) + 1
    return job if take == 1 else replace(job, prompt=f"{job.prompt} (take {take})")
