"""The provider router: every stage's adapter behind time budgets, retries, breakers and a fallback chain.

`route()` builds a stage's primary adapter and its fallbacks (`components.<stage>.fallback`,
each `{adapter, options}`) through the registry and wraps them in a routed
adapter that implements the same base, so the pipeline cannot tell the difference.
For every provider call the router

1. skips providers whose circuit is open (after `failure_threshold` consecutive
   failures it stays open for `cooldown_s`, then lets exactly one trial call
   through: success closes it, failure opens it again);
2. enforces the stage's budget: the first output within `first_byte_ms`, and no
   more than `total_ms` spent waiting on the provider over the call (time the
   pipeline holds output back for pacing does not count). For the avatar the
   first frame is timed from the first audio it could draw from;
3. on a failure *before the provider produced any output*, retries the same
   provider (`retries` times, for retryable errors: 5xx, 429 with a Retry-After
   up to `max_retry_after_ms`, dropped connections; never for timeouts, since
   waiting again on a hung provider only spends the budget twice), then moves
   down the fallback chain;
4. on a failure *after output was delivered*, gives up: the turn fails with
   exactly one error. Nothing already sent is ever sent again and a voice never
   changes in the middle of a sentence. Each TTS call is one sentence or clause,
   so a later sentence of the same turn may still fall back; once one has, the
   rest of the turn stays with that provider (one voice per turn, as far as can be).
   The avatar is the exception: a face that fails mid-turn is replaced by the
   next in the chain from the next frame on, drawn from the turn's audio, so the
   turn goes on with the fallback in its metrics and no frame slot is sent twice.

Errors arrive classified (`adapters.errors.ProviderError`) and keep their category,
so `tth_server.errors` maps them to one error code table. The turn's metrics say
which provider served each stage and whether a fallback fired: the pipeline makes
a `TurnRoutes` per turn and binds the stage adapters to it (`for_turn`), the
routed adapters write into it, and `TurnRoutes.apply` stamps the turn's
`StageTiming`s.

The files, one idea each: `breaker` (the circuit breaker), `budget` (a call held
to its stage's budget), `chain` (the providers in order and the one loop that
tries them), `routes` (what served a turn), `routed` (the routed LLM, TTS and
realtime adapters, and `for_turn`), `avatar` (the routed avatar and its audio
tape), `build` (`route`).
"""

from tth_server.router.avatar import RoutedAvatar
from tth_server.router.breaker import Breaker, BreakerState
from tth_server.router.budget import budgeted
from tth_server.router.build import route
from tth_server.router.chain import Chain, Provider
from tth_server.router.routed import RoutedConversation, RoutedLLM, RoutedRealtime, RoutedTTS, for_turn
from tth_server.router.routes import TurnRoutes

__all__ = [
    "Breaker",
    "BreakerState",
    "Chain",
    "Provider",
    "RoutedAvatar",
    "RoutedConversation",
    "RoutedLLM",
    "RoutedRealtime",
    "RoutedTTS",
    "TurnRoutes",
    "budgeted",
    "for_turn",
    "route",
]
