"""Every database call: the engine's ``JobStore`` (PostgREST or in memory) and the operators'
queries. Nothing above this package builds a request or names an SQL function."""

from worker.store.interface import ClaimedJob, Completion, JobStore, RescuedJob, StoreError

__all__ = ["ClaimedJob", "Completion", "JobStore", "RescuedJob", "StoreError"]
