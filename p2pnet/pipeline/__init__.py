"""Pipelines: models on different peers composed into one computation (docs/pipelines.md).

executor.py   Pipeline, Plan, PipelineResult,    load a spec (checked by
              PipelinePeer                       ``p2pnet.core.pipeline``), plan a provider
                                                 per step, run orchestrated or forwarded
"""

from p2pnet.pipeline.executor import Mode, Pipeline, PipelineResult, Plan, StepPlan, StepTrace

__all__ = ["Mode", "Pipeline", "PipelineResult", "Plan", "StepPlan", "StepTrace"]
