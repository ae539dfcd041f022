"""A scripted responder standing in for an LLM: no network, no key, deterministic.

It is labelled as what it is: it does not understand the user. It picks a reply
that fits the shape of the text (a greeting, a question, thanks, a farewell,
anything else), mentions the user's own words, optionally opens sentences with
inline emotion hints such as "[happy]", and streams it token by token at a
configurable pace.

Options: `tokens_per_s` (0 streams as fast as possible), `hints` (bool), `reply`
(a fixed reply, for tests), and the knobs of `adapters.local.knobs`.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator
from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass

from adapters.base import Capabilities, LLMAdapter, LLMRequest
from adapters.local.knobs import KnobOptions, Knobs
from adapters.options import OPTIONS, GivenOptions

_TOKEN = re.compile(r"\s*\S+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")
_STOP = frozenset(
    "about after again also because been being could does from have just know like make more "
    "much some than that them then there these they this what when where which while with would "
    "your you're tell please".split()
)

_REPLIES: dict[str, tuple[str, ...]] = {
    "greeting": (
        "[happy] Hello, it is good to hear from you! I am the scripted local responder, so my answers are canned. "
        "Ask me anything and I will say it with feeling.",
        "[happy] Hi there! Nice to meet you. I am a scripted stand-in for a language model, "
        "here so you can see and hear the whole pipeline without a key.",
        "[surprised] Oh, hello! I did not see you there. [happy] What would you like to talk about today?",
    ),
    "wellbeing": (
        "[happy] I am doing well, thank you for asking! My voice is synthesized right here on this machine, "
        "and my face is drawn frame by frame. How about you?",
        "Honestly? [neutral] As well as a script can be. [happy] But talking with you makes it better.",
    ),
    "identity": (
        "I am a talking face made by TTH. [neutral] Right now a scripted responder writes my words, "
        "espeak gives me a voice, and a small renderer moves my lips. Give me a real model and I will say more.",
    ),
    "joke": (
        "[happy] Here is one. Why did the robot go on holiday? [surprised] Because it needed to recharge! "
        "[neutral] I know, I know. My jokes are scripted too.",
        "[neutral] A sound engineer walks into a bar. [happy] One, two, one, two. That is the whole joke.",
    ),
    "question": (
        "That is a good question about {topic}. [neutral] I am only a scripted responder, so I cannot really know. "
        "Switch the profile to a real model and you will get a real answer.",
        "[surprised] Oh, {topic}? I wish I could tell you more. [neutral] A scripted voice like mine can only "
        "point the way: configure a language model and ask again.",
        "Let me think about {topic}. [neutral] My script has no answer for that, [sad] which is a little sad. "
        "[happy] But I can still say it any way you like!",
    ),
    "thanks": (
        "[happy] You are very welcome! I am glad that helped. Is there anything else you would like to hear?",
        "[happy] Any time! It was my pleasure.",
    ),
    "farewell": (
        "[sad] Leaving already? It was a pleasure talking with you. [happy] Come back any time!",
        "[happy] Goodbye, and take care! [neutral] I will be right here.",
    ),
    "negative": (
        "[sad] I am sorry to hear that. [neutral] I am only a script, but I am listening. "
        "Tell me more about {topic}, if you like.",
        "[sad] That sounds hard. [neutral] Take your time; I am here.",
    ),
    "statement": (
        "I hear you talking about {topic}. [happy] That sounds interesting! Tell me more, and I will keep talking "
        "with every emotion you ask for.",
        "So, {topic}. [neutral] Let me think about that for a moment. I am scripted, but I can still say it "
        "slowly, quickly, happily or sadly.",
        "[surprised] Really, {topic}? [happy] I would love to hear the rest of that story.",
    ),
}

_HINT_TAG = re.compile(r"\[(neutral|happy|sad|angry|surprised|fearful|disgusted)\]\s*")


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class ScriptedOptions(KnobOptions):
    tokens_per_s: Annotated[float, Field(ge=0, description="0 means as fast as possible")] = 0.0
    hints: bool = True  # keep inline emotion tags such as [happy]
    reply: str | None = None  # one fixed reply instead of the canned ones


class ScriptedResponder(LLMAdapter):
    """Streams canned, varied replies token by token."""

    Options = ScriptedOptions
    options: ScriptedOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._knobs = Knobs.from_options(self.options)
        self._tokens_per_s = self.options.tokens_per_s
        self._hints = self.options.hints
        self._fixed = self.options.reply

    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True, controls=frozenset({"emotion.label", "character.persona_id"}))

    def compose(self, request: LLMRequest) -> str:
        """The whole reply this responder gives to `request`."""
        if self._fixed is not None:
            reply = str(self._fixed)
        else:
            kind = _classify(request.user_text)
            choices = _REPLIES[kind]
            seed = zlib.crc32(f"{request.user_text}|{len(request.history)}".encode())
            reply = choices[seed % len(choices)].format(topic=_topic(request.user_text))
        return reply if self._hints else _HINT_TAG.sub("", reply)

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        interval = 1.0 / self._tokens_per_s if self._tokens_per_s > 0 else 0.0
        for index, token in enumerate(_TOKEN.findall(self.compose(request))):
            await self._knobs.before(index, self.name)
            if index and interval:
                await asyncio.sleep(interval)
            yield token


def _classify(text: str) -> str:
    lowered = text.lower().strip()
    if re.match(r"(hi|hello|hey|good (morning|afternoon|evening))\b", lowered):
        return "greeting"
    if re.search(r"\b(thanks|thank you|cheers)\b", lowered):
        return "thanks"
    if re.search(r"\b(bye|goodbye|see you)\b", lowered):
        return "farewell"
    if re.search(r"\bhow are you\b|\bhow's it going\b", lowered):
        return "wellbeing"
    if re.search(r"\bwho are you\b|\byour name\b|\bwhat are you\b", lowered):
        return "identity"
    if re.search(r"\bjoke\b|\bfunny\b", lowered):
        return "joke"
    if re.search(r"\b(sad|tired|angry|upset|bad day|awful|terrible|lonely)\b", lowered):
        return "negative"
    if lowered.endswith("?") or re.match(r"(what|why|how|who|when|where|can|could|is|are|do|does)\b", lowered):
        return "question"
    return "statement"


def _topic(text: str) -> str:
    words = [w for w in _WORD.findall(text) if w.lower() not in _STOP]
    return " ".join(words[-2:]).lower() if words else "that"
