"""What every endpoint of one server shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.templating import Jinja2Templates

from stride.app import Stride
from stride.server.auth import Auth


@dataclass(frozen=True, slots=True)
class ServerState:
    app: Stride
    auth: Auth
    templates: Jinja2Templates
    allowed_hosts: Sequence[str] | None

    @property
    def dev(self) -> bool:
        return self.auth.dev
