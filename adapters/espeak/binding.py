"""A thin ctypes binding to the libespeak-ng shipped in the `espeakng-loader` wheel.

Only what TTH needs: initialise in synchronous mode with phoneme events, pick a
voice, set prosody parameters, and synthesise UTF-8 text while a callback receives
each buffer of PCM16 samples with the word, sentence and phoneme events inside it.

libespeak-ng keeps all of its state in globals and is not thread-safe, so there is
at most one `Espeak` per process (`Espeak.open()`), and it must be used from one
thread at a time. `adapters.espeak.pool` runs one per worker process.

The C declarations follow espeak-ng's `speak_lib.h` (API revision 12).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from enum import IntEnum
from pathlib import Path
from typing import ClassVar, NamedTuple

# espeak_AUDIO_OUTPUT: like RETRIEVAL, but espeak_Synth returns only when synthesis is done,
# so the calling thread owns the whole synthesis and no espeak thread is involved.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
# Without this, a missing data directory makes the library call exit() in our process.
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
# A sentence pause at the end of the text, so consecutive segments don't run together.
_ENDPAUSE = 0x1000
_POS_CHARACTER = 1
_EE_OK = 0

RATE_MIN_WPM = 80
RATE_MAX_WPM = 450
RATE_NORMAL_WPM = 175


class Parameter(IntEnum):
    """espeak_PARAMETER values that TTH sets."""

    RATE = 1  # words per minute, 80..450
    VOLUME = 2  # 0..200, 100 is normal
    PITCH = 3  # base pitch 0..100, 50 is normal
    RANGE = 4  # pitch range 0..100, 0 is monotone, 50 is normal


class EventType(IntEnum):
    LIST_TERMINATED = 0
    WORD = 1
    SENTENCE = 2
    MARK = 3
    PLAY = 4
    END = 5
    MSG_TERMINATED = 6
    PHONEME = 7
    SAMPLERATE = 8


_KNOWN_EVENTS = frozenset(int(kind) for kind in EventType)


class Event(NamedTuple):
    """One synthesis event, copied out of the library's buffer."""

    kind: EventType
    audio_ms: int
    """Position in the output of this synthesis call, in ms."""
    text_position: int
    """1-based character index into the text (words and sentences)."""
    length: int
    """Length in characters (words)."""
    phoneme: str
    """espeak's phoneme mnemonic (phonemes), else empty."""


class _EventId(ctypes.Union):
    _fields_: ClassVar = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _EspeakEvent(ctypes.Structure):
    _fields_: ClassVar = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)

OnAudio = Callable[[bytes, Sequence[Event]], bool]
"""Receives each buffer of PCM16 samples and its events; returns False to abort synthesis."""


class EspeakError(RuntimeError):
    """The library refused a call; the message names the call and its status."""


class Espeak:
    """This process's handle on libespeak-ng. Use from one thread at a time."""

    _opened: ClassVar[Espeak | None] = None

    def __init__(self, library_path: str, data_path: str) -> None:
        self._lib = ctypes.CDLL(library_path)
        self._declare()
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            0,  # buffer length: 0 is the library's default and minimum, 60 ms
            data_path.encode(),
            _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT,
        )
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate}) with data at {data_path}")
        self.sample_rate_hz: int = rate
        self._data_path = Path(data_path)
        self.version: str = (self._lib.espeak_Info(None) or b"").decode()
        self._on_audio: OnAudio | None = None
        self._failure: BaseException | None = None
        self._aborted = False
        # Kept on self: the library holds only the raw pointer, so this object must outlive it.
        self._callback = _SynthCallback(self._dispatch)
        self._lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def open(cls) -> Espeak:
        """Load and initialise the library once per process, from the espeakng-loader wheel."""
        if cls._opened is None:
            try:
                import espeakng_loader
            except ImportError as exc:  # pragma: no cover - a dependency of the project
                raise ImportError("espeak TTS needs espeakng-loader: pip install 'espeakng-loader>=0.2'") from exc
            cls._opened = cls(espeakng_loader.get_library_path(), espeakng_loader.get_data_path())
        return cls._opened

    def _declare(self) -> None:
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_GetParameter.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.espeak_GetParameter.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int

    def set_voice(self, name: str) -> None:
        """Select a voice by name, e.g. "en-us" or "en-us+f3" (a language plus a variant from voices/!v)."""
        _, _, variant = name.partition("+")
        # The library silently ignores an unknown variant; a typo in config should not go unnoticed.
        if variant and not (self._data_path / "voices" / "!v" / variant).is_file():
            raise EspeakError(f"espeak has no voice variant {variant!r} (in {name!r})")
        status = self._lib.espeak_SetVoiceByName(name.encode())
        if status != _EE_OK:
            raise EspeakError(f"espeak has no voice {name!r} (espeak_SetVoiceByName returned {status})")

    def set_parameter(self, parameter: Parameter, value: int) -> None:
        status = self._lib.espeak_SetParameter(int(parameter), value, 0)
        if status != _EE_OK:
            raise EspeakError(f"espeak_SetParameter({parameter.name}, {value}) failed ({status})")

    def get_parameter(self, parameter: Parameter) -> int:
        """The current value, as the library will use it."""
        return int(self._lib.espeak_GetParameter(int(parameter), 1))

    def synthesize(self, text: str, on_audio: OnAudio) -> bool:
        """Synthesise `text`, calling `on_audio` per buffer; True if it ran to the end.

        An exception raised by `on_audio` aborts synthesis and is re-raised here.
        """
        data = text.encode("utf-8") + b"\0"
        buffer = ctypes.create_string_buffer(data, len(data))
        self._on_audio, self._failure, self._aborted = on_audio, None, False
        try:
            status = self._lib.espeak_Synth(
                buffer, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
            )
        finally:
            self._on_audio = None
        if self._failure is not None:
            raise self._failure
        if status != _EE_OK:
            raise EspeakError(f"espeak_Synth failed ({status})")
        return not self._aborted

    def _dispatch(
        self, wav: ctypes._Pointer[ctypes.c_short], samples: int, events: ctypes._Pointer[_EspeakEvent]
    ) -> int:
        # Called by the library on this thread, inside espeak_Synth. Returning 1 aborts synthesis;
        # an exception must not escape into C, so it is kept and re-raised by `synthesize`.
        try:
            pcm = ctypes.string_at(wav, samples * 2) if wav and samples > 0 else b""
            keep_going = self._on_audio is None or self._on_audio(pcm, _copy_events(events))
        except BaseException as exc:
            self._failure = exc
            keep_going = False
        if not keep_going:
            self._aborted = True
        return 0 if keep_going else 1


def _copy_events(events: ctypes._Pointer[_EspeakEvent]) -> list[Event]:
    copied: list[Event] = []
    if not events:
        return copied
    i = 0
    while (raw := events[i]).type != EventType.LIST_TERMINATED:
        if raw.type in _KNOWN_EVENTS:  # newer libraries may add kinds; they are skipped
            kind = EventType(raw.type)
            phoneme = raw.id.string.decode("utf-8", "replace") if kind is EventType.PHONEME else ""
            copied.append(Event(kind, raw.audio_position, raw.text_position, raw.length, phoneme))
        i += 1
    return copied
