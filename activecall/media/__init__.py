"""Media processing cores without I/O (VAD event logic, framing)."""
