"""activecall: a voice-AI media gateway (SIP/RTP, WebRTC, WebSocket) with a JSON command API."""

__version__ = "0.1.0.dev0"
