"""Tests for clipsort.service.sdnotify: the datagram protocol over a real AF_UNIX socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from clipsort.service.sdnotify import notify, reloading, watchdog_interval


def test_notify_sends_fields_to_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """READY=1 and STATUS arrive as one newline-joined datagram."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert notify("READY=1", "STATUS=idle")
        assert server.recv(4096) == b"READY=1\nSTATUS=idle"
        assert reloading()
        message = server.recv(4096).decode()
        assert message.startswith("RELOADING=1\nMONOTONIC_USEC=")


def test_abstract_socket_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name starting with @ is in Linux's abstract namespace."""
    name = f"clipsort-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1")
        assert server.recv(4096) == b"STOPPING=1"


def test_without_systemd_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY_SOCKET: a no-op; a dead socket: logged, not raised."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/socket")
    assert not notify("READY=1")


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ping twice per WatchdogSec, and only for our own pid."""
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None


def test_a_full_reader_queue_drops_instead_of_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that stopped reading must never hang the daemon's supervisor loop."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        results = [notify(f"STATUS={k}") for k in range(200)]
        assert results[0] and not results[-1]
