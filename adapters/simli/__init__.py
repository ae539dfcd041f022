"""Simli: a photoreal face that lip-syncs our speech, over WebRTC (`adapters.simli.avatar`)."""
