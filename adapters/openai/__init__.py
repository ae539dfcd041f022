"""OpenAI adapters: `openai_chat` (Chat Completions, also any OpenAI-compatible server),
`openai_tts` (/v1/audio/speech) and `openai_realtime` (the Realtime API over WebSocket).

`_http` holds the HTTP plumbing every HTTP provider adapter shares (keys from the
environment, error classification, SSE parsing, PCM chunking).
"""
