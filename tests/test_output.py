"""Scheduling, note pairing, late policy and the panic order of the note output."""

from __future__ import annotations

import asyncio

import mido

from daemon.output import NoteOutput


def run(coroutine):
    return asyncio.run(coroutine)


def kinds(messages: list[mido.Message]) -> list[tuple]:
    return [(m.type, getattr(m, "note", getattr(m, "control", None))) for m in messages]


def test_every_note_on_gets_its_note_off_and_nothing_is_left_sounding():
    async def scenario():
        loop = asyncio.get_running_loop()
        sent: list[mido.Message] = []
        output = NoteOutput(loop, sent.append)
        now = loop.time()
        output.play(0, 60, 90, now + 0.01, now + 0.03)
        output.play(0, 64, 90, now + 0.012, now + 0.016)
        # The same note again while it still sounds: the first one is ended first.
        output.play(0, 60, 90, now + 0.022, now + 0.04)
        await asyncio.sleep(0.07)
        return output, sent

    output, sent = run(scenario())
    assert kinds(sent) == [("note_on", 60), ("note_on", 64), ("note_off", 64), ("note_off", 60),
                           ("note_on", 60), ("note_off", 60)]
    assert not output.sounding and not output.busy
    assert output.stats.notes == 3


def test_note_on_is_never_sent_before_its_time():
    async def scenario():
        loop = asyncio.get_running_loop()
        sent_at = []
        output = NoteOutput(loop, lambda m: sent_at.append((m.type, loop.time())))
        due = loop.time() + 0.02
        output.play(0, 60, 90, due, due + 0.01)
        await asyncio.sleep(0.05)
        return due, sent_at

    due, sent_at = run(scenario())
    assert sent_at[0][0] == "note_on" and sent_at[0][1] >= due


def test_output_latency_sends_early_by_that_much():
    async def scenario():
        loop = asyncio.get_running_loop()
        sent_at = []
        output = NoteOutput(loop, lambda m: sent_at.append(loop.time()), send_ahead=0.015)
        due = loop.time() + 0.03
        output.play(0, 60, 90, due, due + 0.01)
        await asyncio.sleep(0.06)
        return due, sent_at

    due, sent_at = run(scenario())
    assert due - 0.015 <= sent_at[0] < due


def test_late_notes_follow_the_policy_and_are_counted():
    async def scenario(policy):
        loop = asyncio.get_running_loop()
        sent: list[mido.Message] = []
        output = NoteOutput(loop, sent.append, late_policy=policy)
        now = loop.time()
        played = output.play(0, 60, 90, now - 0.01, now + 0.02)
        await asyncio.sleep(0.04)
        return played, output.stats, sent

    played, stats, sent = run(scenario("drop"))
    assert not played and stats.late_dropped == 1 and stats.late_played == 0 and sent == []
    played, stats, sent = run(scenario("play"))
    assert played and stats.late_played == 1 and kinds(sent) == [("note_on", 60), ("note_off", 60)]


def test_panic_releases_in_the_order_that_silences_a_real_synth():
    async def scenario():
        loop = asyncio.get_running_loop()
        sent: list[mido.Message] = []
        output = NoteOutput(loop, sent.append)
        now = loop.time()
        output.play(2, 60, 90, now + 0.005, now + 5)
        output.play(2, 67, 90, now + 0.005, now + 5)
        output.play(2, 72, 90, now + 3, now + 5)  # not started yet: never sent
        await asyncio.sleep(0.03)
        sent.clear()
        output.panic()
        await asyncio.sleep(0.01)
        return output, sent

    output, sent = run(scenario())
    assert kinds(sent) == [("note_off", 60), ("note_off", 67), ("control_change", 64),
                           ("control_change", 123), ("control_change", 120)]
    assert all(m.channel == 2 for m in sent)
    assert [m.value for m in sent if m.type == "control_change"] == [0, 0, 0]
    assert not output.sounding and not output.busy


def test_release_all_ends_sounding_notes_and_forgets_pending_ones():
    async def scenario():
        loop = asyncio.get_running_loop()
        sent: list[mido.Message] = []
        output = NoteOutput(loop, sent.append)
        now = loop.time()
        output.play(0, 60, 90, now + 0.005, now + 5)
        output.play(0, 62, 90, now + 0.05, now + 5)
        await asyncio.sleep(0.02)
        output.release_all()
        await asyncio.sleep(0.06)
        return sent

    assert kinds(run(scenario())) == [("note_on", 60), ("note_off", 60)]
