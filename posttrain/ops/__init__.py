"""Tensor operations shared by trainers: log-prob gathering (chunked), masking, advantages."""

from posttrain.ops.logprobs import gather_token_logps, sequence_logps

__all__ = ["gather_token_logps", "sequence_logps"]
