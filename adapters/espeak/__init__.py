"""espeak-ng: real offline speech synthesis, the default profile's TTS (`adapters.espeak.tts.EspeakTTS`)."""
