"""Tests of activecall.webrtc."""
