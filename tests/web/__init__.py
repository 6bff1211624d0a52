"""Tests of activecall.web."""
