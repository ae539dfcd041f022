"""Anam: a photoreal persona that lip-syncs our speech (audio passthrough), over WebRTC (`adapters.anam.avatar`)."""
