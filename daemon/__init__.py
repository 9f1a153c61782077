"""Antiphon: a realtime MIDI jam partner."""
