"""The user-facing generation API: MARPipeline (model + tokenizer + settings), with editing."""

from .pipeline import MARPipeline, PipelineOutput

__all__ = ["MARPipeline", "PipelineOutput"]
