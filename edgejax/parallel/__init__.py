"""Parallel execution across devices: pipeline (model) partitioning and hybrid data x pipeline parallelism."""
from edgejax.parallel.hybrid import REPLICAS, Pipelined
from edgejax.parallel.pipeline import STAGES, pipeline_value_and_grad, stage_value_and_grad
from edgejax.parallel.stages import StagePlan, layer_train_flops, plan_stages

__all__ = ["Pipelined", "REPLICAS", "STAGES", "StagePlan", "layer_train_flops", "pipeline_value_and_grad",
           "plan_stages", "stage_value_and_grad"]
