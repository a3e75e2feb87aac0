"""The control socket and the state files of a running instance, without the kernel."""
from __future__ import annotations

import json
import socket
import time

from lb.director import instances


def test_a_client_that_hangs_up_early_is_one_quiet_line(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(instances, "RUN_DIR", tmp_path)

    def slow() -> dict:
        time.sleep(0.3)
        return {"data": "x" * 1_000_000}   # more than the socket buffers hold

    server = instances.ControlServer("eth9", {"status": slow})
    try:
        for _ in range(2):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(instances.socket_path("eth9")))
                s.sendall(json.dumps({"cmd": "status"}).encode() + b"\n")
            time.sleep(0.6)
    finally:
        server.close()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, out + err
    lines = [line for line in (out + err).splitlines() if line]
    assert lines == ["dr-lb: a control client hung up before the answer to 'status'"] * 2


def test_malformed_state_files_are_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(instances, "RUN_DIR", tmp_path)
    good = {"pid": 4242, "interface": "eth0"}
    instances.write_state("eth0", good)
    for name, text in (("eth1", "[]"), ("eth2", '{"pid": 1}'), ("eth3", "{"),
                       ("eth4", '{"pid": true, "interface": "eth4"}'),
                       ("eth5", '{"pid": 5, "interface": "eth0"}')):   # names another file
        instances.state_path(name).write_text(text)
    instances.state_path("eth6").write_bytes(b"\xff\xfe")
    assert instances.instances() == [good]
    assert instances.pick_interface(None) == "eth0"
