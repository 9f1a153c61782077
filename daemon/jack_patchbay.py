"""JACK connections as the patchbay sees them, read and made by JACK's own tools.

python-rtmidi can connect a port when it opens it but cannot tell whether the connection still
exists (a patchbay may remove it while both ports live on). `jack_lsp -c` and `jack_connect`
answer that from a child process: opening a JACK client in this process would hold the GIL
for ~25 ms (see ports.jack_server_answers), which the event loop would play as a late note.
Without the tools (a JACK install without its example clients) both return None.
"""

from __future__ import annotations

import asyncio
import shutil

TOOL_TIMEOUT_S = 5.0


async def run_tool(*command: str) -> tuple[int, str] | None:
    """(exit status, stdout) of a JACK tool; None when it is missing or hangs."""
    tool = shutil.which(command[0])
    if tool is None:
        return None
    try:
        process = await asyncio.create_subprocess_exec(tool, *command[1:], stdin=asyncio.subprocess.DEVNULL,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError:  # out of processes or file descriptors: not a reason to think JACK gone
        return None
    try:
        output, _ = await asyncio.wait_for(process.communicate(), TOOL_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        return None
    return process.returncode, output.decode(errors="replace")


def parse_connections(listing: str) -> dict[str, list[str]]:
    """`jack_lsp -c` output: every port listed, with the ports it is connected to."""
    ports: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in listing.splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            if current is not None:
                current.append(line.strip())
        else:
            current = ports.setdefault(line.strip(), [])
    return ports


async def connections(name_filter: str) -> dict[str, list[str]] | None:
    """The ports whose name contains `name_filter` and their connections; None when unknown
    (no jack_lsp, or the server does not answer)."""
    result = await run_tool("jack_lsp", "-c", name_filter)
    if result is None or result[0] != 0:
        return None
    return parse_connections(result[1])


async def connect(source: str, destination: str) -> bool:
    """Connect two ports; False when JACK refused or the tool is missing."""
    result = await run_tool("jack_connect", source, destination)
    return result is not None and result[0] == 0
