"""Kept for imports from before the move: the inference call lives in routing.inference."""

from routing.inference import (  # noqa: F401
    AttemptRecord,
    InferenceCall,
    inference_call_open,
    rejected_request_record,
    usage_event_payload,
)
