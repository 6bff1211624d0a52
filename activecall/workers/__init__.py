"""Worker processes: each owns whole sessions and runs their media pipeline (later issues)."""
