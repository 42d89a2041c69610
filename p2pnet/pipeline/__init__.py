"""Pipelines: models on different peers composed into one computation (docs/pipelines.md)."""

from p2pnet.pipeline.executor import Mode, Pipeline, PipelineResult, Plan, StepPlan, StepTrace

__all__ = ["Mode", "Pipeline", "PipelineResult", "Plan", "StepPlan", "StepTrace"]
