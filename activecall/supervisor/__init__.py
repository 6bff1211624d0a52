"""The supervisor: HTTP/WebSocket/SIP front end that routes sessions to workers (later issues)."""
