"""Asynchronous jobs: Bronze requests run as SageMaker Async Inference jobs.

The engine (:mod:`workers.engines.sagemaker_async`) submits a job and records it in the job
store (:mod:`pipeline.job_store`, S3); the worker answers at once with an ``accepted`` notice
carrying the job id; the collector (:mod:`workers.jobs.collector`) watches the job's output and
failure objects and publishes the request's one final reply. Pending jobs live in S3, not in
memory, so a restarted collector picks them up where the last one left them.
"""
