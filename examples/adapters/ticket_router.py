"""Ticket router: a plain rule, served as a p2pnet adapter (see ticket_router.json).

emotion (the emotion model's anger, gratitude, neutral, sadness, worry; also frustration
and joy; anything else counts as neutral) and
article (the help article a ticket matched, e.g. "refund-policy") -> priority and queue.
"""

from typing import Any

UPSET = {"anger", "frustration", "sadness"}
PLEASED = {"joy", "gratitude"}
SENSITIVE = ("refund", "damaged")


def route(inputs: dict[str, Any]) -> dict[str, list[str]]:
    priorities, queues = [], []
    for emotion, article in zip(inputs["emotion"], inputs["article"], strict=True):
        emotion, article = emotion.strip().lower(), article.strip().lower()
        sensitive = any(word in article for word in SENSITIVE)
        if emotion in UPSET and sensitive:
            priority = "urgent"
        elif emotion in PLEASED and not sensitive:
            priority = "low"
        else:
            priority = "normal"
        if priority == "urgent":
            queue = "escalations"
        elif "refund" in article:
            queue = "billing"
        elif "damaged" in article:
            queue = "returns"
        else:
            queue = "support"
        priorities.append(priority)
        queues.append(queue)
    return {"priority": priorities, "queue": queues}
