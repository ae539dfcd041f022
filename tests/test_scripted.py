"""The scripted local responder: varied, fitting, deterministic replies with inline emotion hints."""

from __future__ import annotations

import re

from adapters.base import LLMRequest, Message
from adapters.local.scripted import ScriptedResponder


def _reply(text: str, history: tuple[Message, ...] = (), **options: object) -> str:
    return ScriptedResponder("scripted", options).compose(LLMRequest("", text, history))


def test_replies_fit_the_kind_of_text_and_mention_the_users_words() -> None:
    texts = ["Hello!", "How are you?", "Who are you?", "Tell me a joke", "I had a bad day", "Thanks!", "Bye"]
    replies = [_reply(t) for t in texts]
    assert len(set(replies)) == len(texts)
    assert "sailing boats" in _reply("I love sailing boats")
    assert "joke" in _reply("Tell me a joke").lower() or "bar" in _reply("Tell me a joke")


def test_replies_carry_inline_emotion_hints_unless_turned_off() -> None:
    assert re.search(r"\[(happy|sad|surprised|neutral)\]", _reply("Hello!"))
    assert "[" not in _reply("Hello!", hints=False)


def test_the_same_text_varies_across_a_conversation_but_is_deterministic() -> None:
    history = (Message("user", "x"), Message("assistant", "y"))
    first, later = _reply("What is the time?"), _reply("What is the time?", history)
    assert first == _reply("What is the time?") and first != later
