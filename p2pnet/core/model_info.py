"""What a model is, whatever runs it: ``ModelInfo``, the facts a capability record states."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pnet.core.generation import GenerationCard
from p2pnet.core.schema import ModelSchema

__all__ = ["ModelInfo", "card_to_dict"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model file is: its ID, where it lies, its size and its I/O schema; its name
    (the file's stem unless given), version and runtime (``onnxruntime/1.x``,
    ``python/3.x``: what runs it), and for a generative model its ``generation`` card,
    as its capability record says."""

    model_id: str
    path: Path
    size: int
    schema: ModelSchema
    name: str = ""
    version: str = ""
    runtime: str = ""
    generation: GenerationCard | None = None

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.path.stem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            **self.schema.to_dict(),
            **({"generation": card_to_dict(self.generation)} if self.generation else {}),
        }


def card_to_dict(card: GenerationCard) -> dict[str, Any]:
    """A generation card as JSON-ready values (``--json`` output)."""
    return {
        "context_length": card.context_length,
        "eos_token_ids": list(card.eos_token_ids),
        "chat_turn": card.chat_turn,
        "generation_prompt": card.generation_prompt,
        "tokenizer": card.tokenizer,
    }
