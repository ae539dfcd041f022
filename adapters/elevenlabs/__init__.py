"""ElevenLabs adapters: `elevenlabs` (streaming text to speech, PCM output)."""
