"""The MQTT bridge's task over the daemon's life: started when [mqtt] names a broker, replaced
when a reload changes [mqtt], stopped on shutdown once it has said "offline".

daemon/mqtt.py (and aiomqtt with it) is imported only when a bridge starts: a daemon without a
broker never loads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from daemon.config import MqttSettings
from daemon.discovery import DEFAULT_PREFIX

if TYPE_CHECKING:
    from daemon.mqtt import JamAppLike


class MqttLink:
    """The bridge between `app` and the broker that `settings()` names at the time it starts."""

    def __init__(self, app: JamAppLike, settings: Callable[[], MqttSettings]) -> None:
        self.app = app
        self.settings = settings
        self.task: asyncio.Task | None = None  # the bridge's run(), or a restart under way

    def start(self, retired_discovery: str | None = None) -> None:
        settings = self.settings()
        if not settings.host:
            return
        from daemon.mqtt import MqttBridge

        # Discovery's documents go when it is turned off: those under the prefix used before a
        # reload, else (after a restart nothing else is known) under the default prefix.
        retired = DEFAULT_PREFIX if retired_discovery is None else retired_discovery
        self.task = asyncio.get_running_loop().create_task(MqttBridge(self.app, settings, retired).run(), name="mqtt")

    def restart(self, old: MqttSettings, new: MqttSettings) -> None:
        """A reload changed [mqtt]: the bridge starts again with the new settings."""
        retired = old.discovery_prefix if old.discovery_prefix != new.discovery_prefix else None
        # Until the new bridge runs, the restart is the task to cancel on shutdown.
        self.task = asyncio.get_running_loop().create_task(self._restart(self.task, retired), name="mqtt-restart")

    async def _restart(self, previous: asyncio.Task | None, retired_discovery: str | None) -> None:
        # The old connection says "offline" before the new one says "online" (same broker and
        # prefix: the other order would leave "offline" retained).
        if previous is not None:
            await _stop(previous)
        self.start(retired_discovery)

    async def stop(self) -> None:
        if self.task is not None:
            await _stop(self.task)


async def _stop(task: asyncio.Task) -> None:
    from daemon.mqtt import stop_bridge

    await stop_bridge(task)
