"""The agent's small persistent store: parameters the kernel cannot hold.

The kernel is the truth for what exists (links carry cnm's ownership mark);
this store keeps what is needed to report and to re-apply the firewall
after a restart or a flush: each network's options and each endpoint's
address, sandbox and port mappings, plus the names of the sandboxes the
agent created. One JSON file per object, replaced atomically.

The files are written on the event loop, not in a worker thread: a few
hundred bytes into the page cache (no fsync: the store must survive the
agent, not the machine, whose reboot empties the kernel it describes) take
about 60 us, where the hop to a thread and back took 0.2-0.6 ms on a busy
machine, three times per connect.

An *intent* names the link an operation is about to create, written before
it is: the kernel cannot mark a link in the request that makes it, so a
crash between the two leaves an unmarked link, which only the intent shows
to be cnm's (and safe to delete).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from netdriver_service.model import EndpointSpec, NetworkSpec


class Store:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.networks: dict[str, NetworkSpec] = {}
        self.endpoints: dict[str, EndpointSpec] = {}
        self.sandboxes: set[str] = set()
        self.intents: dict[str, str] = {}  # "ep:ID" or "net:ID" -> name of the link to make

    def load(self) -> Store:
        for kind in ("networks", "endpoints", "sandboxes", "intents"):
            (self.directory / kind).mkdir(parents=True, exist_ok=True)
        for path in (self.directory / "networks").glob("*.json"):
            spec = NetworkSpec.from_dict(json.loads(path.read_text()))
            self.networks[spec.network_id] = spec
        for path in (self.directory / "endpoints").glob("*.json"):
            endpoint = EndpointSpec.from_dict(json.loads(path.read_text()))
            self.endpoints[endpoint.endpoint_id] = endpoint
        self.sandboxes = {path.name for path in (self.directory / "sandboxes").iterdir()}
        for path in (self.directory / "intents").glob("*.json"):
            self.intents[path.stem] = json.loads(path.read_text())["link"]
        return self

    def endpoints_of(self, network_id: str) -> list[EndpointSpec]:
        return [e for e in self.endpoints.values() if e.network_id == network_id]

    async def put_network(self, spec: NetworkSpec) -> None:
        await self._write("networks", spec.network_id, spec.to_dict())
        self.networks[spec.network_id] = spec

    async def delete_network(self, network_id: str) -> None:
        await self._remove("networks", network_id + ".json")
        self.networks.pop(network_id, None)

    async def put_endpoint(self, endpoint: EndpointSpec) -> None:
        await self._write("endpoints", endpoint.endpoint_id, endpoint.to_dict())
        self.endpoints[endpoint.endpoint_id] = endpoint

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await self._remove("endpoints", endpoint_id + ".json")
        self.endpoints.pop(endpoint_id, None)

    async def add_sandbox(self, name: str) -> None:
        (self.directory / "sandboxes" / name).touch()
        self.sandboxes.add(name)

    async def remove_sandbox(self, name: str) -> None:
        await self._remove("sandboxes", name)
        self.sandboxes.discard(name)

    async def put_intent(self, key: str, link: str) -> None:
        await self._write("intents", key, {"link": link})
        self.intents[key] = link

    async def delete_intent(self, key: str) -> None:
        await self._remove("intents", key + ".json")
        self.intents.pop(key, None)

    async def _write(self, kind: str, key: str, data: dict) -> None:
        path = self.directory / kind / (key + ".json")
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, sort_keys=True))
        os.replace(temporary, path)

    async def _remove(self, kind: str, name: str) -> None:
        (self.directory / kind / name).unlink(missing_ok=True)
