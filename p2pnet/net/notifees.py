"""Swarm events reach only the notifees that do something with them.

Workaround for py-libp2p 0.8.1's ``Swarm._notify``: for every event (a stream opened
or closed, a connection made or lost) it opens a nursery and starts one task per
registered notifee, to isolate each notifee's errors. A p2pnet host has two
notifees, the swarm's ``TagStoreNotifee`` and the host's ``_IdentifyNotifee``, and
both do nothing on ``opened_stream`` and ``closed_stream``: every stream opened and
closed paid for two nurseries and four tasks that returned at once. With 200 peers at
5 discoveries a second that was 9% of the CPU (py-spy of a worker of
``p2pnet simulate simulations/scale.toml --engine libp2p``).

``install_quiet_notify`` replaces ``Swarm._notify`` with upstream's, minus the
notifees whose method for the event is a bare return (the same instructions as
``async def m(*args): pass``, whatever its docstring): those are not called at all,
and no nursery opens when none is left. Every other notifee, a user's or a later
py-libp2p's, is called exactly as upstream calls it. Checked against py-libp2p 0.8.1
(pinned in pyproject.toml). go-libp2p removed the stream events from its notifiee
interface, which nobody used (libp2p/go-libp2p-core#250); no py-libp2p issue names
their cost (searched 2026-12-06).
"""

from __future__ import annotations

import dis
import logging
from typing import Any

import trio
from libp2p.network import swarm as _swarm

from p2pnet.net.patching import replace_attribute

__all__ = ["does_nothing", "install_quiet_notify"]

log = logging.getLogger("libp2p.network.swarm")


async def _bare(*args: Any) -> None:
    pass


def _steps(code: Any) -> list[tuple[str, Any]]:
    """What ``code`` does, instruction by instruction (a docstring only moves the index
    of the constant ``None`` in the bytecode, not what is loaded)."""
    return [(i.opname, i.argval) for i in dis.get_instructions(code)]


_BARE_STEPS = _steps(_bare.__code__)
_verdicts: dict[Any, bool] = {}


def does_nothing(method: Any) -> bool:
    """Whether ``method`` (a function, or a bound method) is a coroutine function whose
    body is a bare return: calling it cannot have an effect."""
    function = getattr(method, "__func__", method)
    verdict = _verdicts.get(function)
    if verdict is None:
        code = getattr(function, "__code__", None)
        verdict = code is not None and _steps(code) == _BARE_STEPS
        _verdicts[function] = verdict
    return verdict


async def _quiet_notify(self: Any, method: str, *args: Any) -> None:
    """upstream ``Swarm._notify`` (py-libp2p 0.8.1) without the notifees whose
    ``method`` does nothing (see the module docstring)."""
    callees = [n for n in self.notifees if not does_nothing(getattr(type(n), method, None))]
    if not callees:
        return
    async with trio.open_nursery() as nursery:
        for notifee in callees:

            async def _call(method_name: str = method, n: Any = notifee) -> None:
                try:
                    await getattr(n, method_name)(self, *args)
                except Exception:
                    log.exception("Notifee %s.%s raised", type(n).__name__, method_name)

            nursery.start_soon(_call)


def install_quiet_notify() -> None:
    """Patch py-libp2p's ``Swarm._notify`` (see the module docstring); idempotent."""
    replace_attribute(_swarm.Swarm, "_notify", _quiet_notify)
