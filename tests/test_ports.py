"""tests/ports.py: a picked port is not one this process already handed out, nor one held on any address."""

from __future__ import annotations

import socket

from tests import ports


def test_a_port_is_handed_out_once_per_process():
    picked = [ports.free_port() for _ in range(400)]  # ~6 repeats expected from 400 independent picks of ~12,800
    assert len(set(picked)) == len(picked)


def test_a_port_held_on_another_local_address_is_not_handed_out(monkeypatch):
    with socket.socket() as holder:
        holder.bind(("127.0.0.2", 0))  # all of 127/8 is local on Linux: stands in for the node's own IP
        held = holder.getsockname()[1]
        monkeypatch.setattr(ports.random, "sample", lambda candidates, k: [held, *range(20000, 20200)])
        monkeypatch.setattr(ports, "_handed_out", set())
        port = ports.free_port()
        assert port != held
        with socket.socket() as server:  # what a Serve proxy does with it
            server.bind(("0.0.0.0", port))
