"""The echo filter: our own notes coming back are not the player."""

from __future__ import annotations

from daemon.echo import EchoFilter


def test_an_echo_within_the_window_is_ignored_once_per_note_sent():
    echoes = EchoFilter(0.05)
    echoes.sent(60, 1.000)
    assert echoes.note_on_is_echo(60, 1.003)
    assert not echoes.note_on_is_echo(60, 1.004)  # one note sent, one echo
    assert echoes.ignored == 1


def test_the_echo_s_note_off_is_swallowed_and_the_player_s_is_not():
    echoes = EchoFilter(0.05)
    echoes.sent(60, 1.0)
    assert echoes.note_on_is_echo(60, 1.01)
    assert echoes.note_off_is_echo(60)
    assert not echoes.note_off_is_echo(60)


def test_other_pitches_late_arrivals_and_earlier_notes_are_the_player():
    echoes = EchoFilter(0.05)
    echoes.sent(60, 1.0)
    assert not echoes.note_on_is_echo(62, 1.01)
    assert not echoes.note_on_is_echo(60, 0.99)  # before we sent it
    assert not echoes.note_on_is_echo(60, 1.2)  # past the window: forgotten
    assert not echoes.note_on_is_echo(60, 1.01)
    assert echoes.ignored == 0
