"""Tests of tidings.layers, with the backend conformance suite."""
