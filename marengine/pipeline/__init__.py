"""The user-facing generation API: MARPipeline (model + tokenizer + settings), with editing, and
GenerationEngine (continuous batching of requests over a pipeline)."""

from .engine import GenerationEngine, Ticket
from .pipeline import MARPipeline, PipelineOutput

__all__ = ["GenerationEngine", "MARPipeline", "PipelineOutput", "Ticket"]
