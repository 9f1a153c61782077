"""Antiphon's offline training: MIDI folders to weights."""
