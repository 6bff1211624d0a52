"""Browser calls: the WebRTC peer connection of a ``/call/webrtc`` session (aiortc)."""

from activecall.webrtc.peer import (
    PeerStats,
    WebRtcError,
    WebRtcPeer,
    live_peers,
    set_consent_freshness,
)

__all__ = ["PeerStats", "WebRtcError", "WebRtcPeer", "live_peers", "set_consent_freshness"]
