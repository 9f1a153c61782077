"""How fast the daemon, run as a service, starts, stops and comes back after the broker.

For each run: start the real daemon (tiny random weights, a private JACK dummy server, a real
Mosquitto on loopback) and measure
- start: process start to READY=1 on a NOTIFY_SOCKET standing in for systemd's;
- reconnect: broker killed for 1 s, restarted, to the daemon's retained "online" again;
- stop: SIGTERM while an answer sounds, to (a) the synth's last message (every note released),
  (b) the retained "offline" and (c) the process's exit (the target is 2 s; systemd kills at 5).
Prints a table and, last, one JSON line.

    python bench/service_stop.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the service tests' harness: the same daemon, peer and broker

from daemon_process import (  # noqa: E402
    DaemonProcess,
    JackPeer,
    Jam,
    NotifySocket,
    answer_heard,
    daemon_sections,
    save_tiny_weights,
    sounding,
    wait_online,
)
from fixtures_mqtt import Broker, MqttObserver  # noqa: E402

from daemon.jack_server import JackServer  # noqa: E402


def one_run(folder: Path, mosquitto: str) -> dict[str, float]:
    broker = Broker(mosquitto, folder)
    broker.start()
    peer = JackPeer()
    notify = NotifySocket(folder / "notify")
    prefix = f"antiphon/bench-{folder.name}"
    sections = daemon_sections(peer, save_tiny_weights(folder / "lstm"), broker, prefix)
    # takes and learned controls go to the run's scratch folder, not the user's
    daemon = DaemonProcess(folder, sections, {"NOTIFY_SOCKET": str(notify.path), "XDG_DATA_HOME": str(folder),
                                              "XDG_STATE_HOME": str(folder)})
    observer = MqttObserver(broker, prefix)
    try:
        started = time.monotonic()
        daemon.start()
        notify.wait_for("READY=1")
        start_s = time.monotonic() - started
        wait_online(observer)

        broker.kill()
        time.sleep(1.0)
        mark = observer.mark()
        back = time.monotonic()
        broker.start()
        wait_online(observer, mark)
        reconnect_s = time.monotonic() - back

        jam = Jam(daemon, peer, observer, folder)
        answer_heard(jam)
        observer.wait_for(lambda: sounding(peer.messages()), "a sounding note")
        mark = observer.mark()
        terminated = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(timeout=10)
        exit_s = time.monotonic() - terminated
        offline = observer.wait_for(lambda: observer.latest("status", mark), "offline")
        offline_s = offline.arrived - terminated
        released_s = max((t for t, _ in peer.received if t >= terminated), default=terminated) - terminated
        if code != 0 or offline.payload != b"offline" or sounding(peer.messages()):
            raise SystemExit(f"bad stop: exit {code}, status {offline.payload!r}, {sounding(peer.messages())} sounding")
        return {"start_s": start_s, "reconnect_s": reconnect_s, "released_s": released_s,
                "offline_s": offline_s, "exit_s": exit_s}
    finally:
        observer.close()
        daemon.kill()
        notify.close()
        peer.close()
        broker.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    results = []
    with JackServer(period=64), tempfile.TemporaryDirectory(prefix="antiphon-bench-") as scratch:
        for run in range(args.runs):
            folder = Path(scratch) / f"run{run}"
            folder.mkdir()
            results.append(one_run(folder, mosquitto))
            print(f"run {run}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[-1].items()), flush=True)
    summary = {key: {"median": statistics.median(r[key] for r in results), "max": max(r[key] for r in results)}
               for key in results[0]}
    print(f"{'':12} {'median s':>9} {'max s':>9}")
    for key, values in summary.items():
        print(f"{key:12} {values['median']:9.3f} {values['max']:9.3f}")
    print(json.dumps({"runs": args.runs, **summary}))


if __name__ == "__main__":
    main()
