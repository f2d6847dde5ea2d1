"""One job per generator kind in the demo: the worker's production pipeline for each
``GENERATOR_KIND``, each pointed at its devstack stand-in.

A real deployment runs one kind per worker (``GENERATOR_KIND``), and every worker claims any
pending job, so the demo cannot give each kind a worker of its own while they share one queue.
Its one worker runs this step instead: the production ``ImagePipeline`` built once per kind from
the same settings (``stack.provider_env(kind)`` for the URL and token, the kind's default model),
and each job goes to the kind its model belongs to. Everything below the choice (generation,
handle storage under the lease, download, upload) is the production code.
"""

from __future__ import annotations

from pydantic import SecretStr

from devstack.stack import DevStack
from worker.jobs import Job, JobResult, Progress
from worker.pipeline.step import ImagePipeline
from worker.settings import GENERATOR_DEFAULTS, GeneratorKind, Settings

# The model each hosted sample job names (samples.HOSTED), and so its kind.
HOSTED_MODELS = {
    GENERATOR_DEFAULTS[kind][1]: kind
    for kind in (GeneratorKind.REPLICATE, GeneratorKind.OPENAI, GeneratorKind.FAL)
}


def kind_settings(stack: DevStack, settings: Settings, kind: GeneratorKind) -> Settings:
    env = stack.provider_env(kind.value)  # type: ignore[arg-type]
    return settings.model_copy(
        update={
            "generator_kind": kind,
            "generator_url": env["GENERATOR_URL"],
            "generator_token": SecretStr(env["GENERATOR_TOKEN"]),
            "generator_default_model": GENERATOR_DEFAULTS[kind][1],
        }
    )


class EveryKind:
    """The demo worker's step: the job's kind picked by its model, then that kind's pipeline."""

    def __init__(self, stack: DevStack, settings: Settings) -> None:
        self.pipelines = {
            kind: ImagePipeline(kind_settings(stack, settings, kind)) for kind in GeneratorKind
        }

    @staticmethod
    def kind_of(job: Job) -> GeneratorKind:
        return HOSTED_MODELS.get(job.model or "", GeneratorKind.HTTP)

    @property
    def deadline(self) -> float:
        return max(pipeline.deadline for pipeline in self.pipelines.values())

    async def __call__(self, job: Job, progress: Progress) -> JobResult:
        return await self.pipelines[self.kind_of(job)](job, progress)

    async def aclose(self) -> None:
        for pipeline in self.pipelines.values():
            await pipeline.aclose()
