"""Tasks: the orchestration seed's task names, their prompt templates, and the classifier."""

from __future__ import annotations

TASK_NAMES = ("summarize", "sentiment", "rewrite", "chat", "code", "analysis", "tools")
