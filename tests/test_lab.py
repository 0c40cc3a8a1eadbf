"""`make lab` starts JupyterLab on the project (notebooks/ and outputs/ both in reach, opening at notebooks/), and the
kernel it offers runs the clone's .venv and its comicnb."""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
NUMBERED = re.compile(r"^\d\d_.*\.ipynb$")
START_TIMEOUT_S = 60.0
EXECUTE_TIMEOUT_S = 60.0
CODE = "import comicnb, json, os, sys; print(json.dumps([comicnb.__file__, sys.executable, sys.prefix, os.getcwd()]))"


@dataclass
class Lab:
    """A running `make lab` server: its loopback port, its token, and the log file its output goes to."""

    port: int
    token: str
    log: Path

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
        """One token-authenticated REST call; returns the status and body, error statuses included."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"token {self.token}", "Content-Type": "application/json"}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        """A REST call that must answer `expect`; returns the decoded JSON body."""
        status, payload = self.request(method, path, body)
        assert status == expect, f"{method} {path} -> {status}: {payload[:500]!r}\n{self.tail()}"
        return json.loads(payload)

    def tail(self) -> str:
        """The end of the server's output, for failure messages."""
        return "server output:\n" + self.log.read_text(errors="replace")[-4000:]


def free_port() -> int:
    """A port on loopback that nothing listens on now (the server is told not to move if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """End make and the server it started: the whole process group, SIGTERM first, SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    # make does not pass SIGTERM on to its recipe, so signal the group that start_new_session gave them.
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """`make lab` on a free loopback port with a fresh token and no browser; stopped however the test ends."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    if Path(sys.prefix).resolve() != VENV.resolve():
        pytest.skip("runs only from the clone's .venv (`make test`): elsewhere `make lab` would build it first")
    # `make lab` first makes `env`, which rebuilds .venv (rm -rf) when it is stale: never under a running pytest.
    # (`make -q env` cannot tell, as a phony target always counts as out of date; a dry run prints nothing if current.)
    dry_run = subprocess.run(
        [make, "-n", "-s", "--no-print-directory", "-C", str(ROOT), "env"], capture_output=True, text=True
    )
    if dry_run.returncode != 0 or dry_run.stdout.strip():
        # Under CI, `make test` has just made env: a stale one there is a Makefile bug, not a reason to skip.
        stale = "the environment is out of date (requirements.lock or pyproject.toml changed): run `make env`"
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{stale}\n{dry_run.stdout}")
    port, token = free_port(), secrets.token_hex(16)
    lab_args = " ".join(
        [
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            "--ServerApp.open_browser=False",
        ]
    )
    # Runtime files (server info, kernel connection files) and config go to tmp_path: the test leaves nothing in
    # ~/.local/share/jupyter, and a user's ~/.jupyter config (a password, another root dir) cannot change the result.
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
    }
    log = tmp_path / "lab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [make, "-s", "--no-print-directory", "-C", str(ROOT), "lab", f"LAB_ARGS={lab_args}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = Lab(port, token, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"make lab exited with {process.returncode}\n{server.tail()}"
            assert time.monotonic() < deadline, f"no answer on port {port} in {START_TIMEOUT_S:.0f} s\n{server.tail()}"
            try:
                if server.request("GET", "/api/status", timeout=2)[0] == 200:
                    break
            except OSError:  # not listening yet (connection refused) or not answering yet (timeout)
                pass
            time.sleep(0.25)
        yield server
    finally:
        stop(process)


def execute(lab: Lab, kernel_id: str, code: str) -> tuple[dict, str]:
    """Run code in a kernel over the server's websocket; returns the execute_reply content and the stdout text."""
    import websocket  # websocket-client, pinned in requirements.lock

    session = uuid.uuid4().hex
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{lab.port}/api/kernels/{kernel_id}/channels?session_id={session}",
        header=[f"Authorization: token {lab.token}"],
        suppress_origin=True,
        timeout=10,
    )
    try:
        msg_id = uuid.uuid4().hex
        # Jupyter messaging protocol v5, in the server's JSON websocket framing (no subprotocol: a "channel" key).
        header = {"msg_id": msg_id, "msg_type": "execute_request", "session": session, "username": "test_lab"}
        content = {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False}
        request = {"header": {**header, "version": "5.3", "date": ""}, "parent_header": {}, "metadata": {}}
        ws.send(json.dumps({**request, "content": content, "channel": "shell", "buffers": []}))
        reply, stdout, idle = None, [], False
        deadline = time.monotonic() + EXECUTE_TIMEOUT_S
        # The reply (shell) and the output (iopub) travel on different channels in no fixed order: wait for both
        # the reply and iopub's idle status, which the kernel sends after all output of the request.
        while reply is None or not idle:
            assert time.monotonic() < deadline, f"no execute_reply and idle in {EXECUTE_TIMEOUT_S:.0f} s\n{lab.tail()}"
            message = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["header"]["msg_type"], message["content"]
            if kind == "execute_reply":
                reply = content
            elif kind == "stream" and content["name"] == "stdout":
                stdout.append(content["text"])
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        return reply, "".join(stdout)
    finally:
        ws.close()


def test_make_lab_serves_the_notebooks_and_a_kernel_on_the_clones_venv(lab: Lab) -> None:
    """The numbered notebooks are listed, outputs/ is in reach, the lab page opens at notebooks/, and a new kernel
    imports this clone's comicnb."""
    on_disk = sorted(p.name for p in (ROOT / "notebooks").iterdir() if NUMBERED.match(p.name))
    assert on_disk, "notebooks/ holds no NN_*.ipynb"
    root = {item["name"]: item["type"] for item in lab.json("GET", "/api/contents/")["content"]}
    assert root.get("notebooks") == "directory" and root.get("outputs") == "directory", root  # the runs' reports too
    listed = {item["name"]: item["type"] for item in lab.json("GET", "/api/contents/notebooks")["content"]}
    assert set(on_disk) <= set(listed), f"not listed in notebooks/: {sorted(set(on_disk) - set(listed))}"
    assert all(listed[name] == "notebook" for name in on_disk), listed
    opening = urllib.request.Request(lab.url + "/", headers={"Authorization": f"token {lab.token}"})
    with urllib.request.urlopen(opening, timeout=10) as response:  # follows the server's redirect
        assert response.url.endswith("/lab/tree/notebooks"), response.url

    # The page itself: it fails (500) when the lab's assets under sys.prefix/share are not found.
    status, page = lab.request("GET", "/lab")
    assert status == 200 and b"jupyter-config-data" in page, f"/lab -> {status}\n{lab.tail()}"

    # A kernel for a notebook, as the lab starts one: the server's default kernel, in the notebook's folder.
    kernel_id = lab.json("POST", "/api/kernels", {"path": f"notebooks/{on_disk[0]}"}, expect=201)["id"]
    try:
        reply, stdout = execute(lab, kernel_id, CODE)
        assert reply["status"] == "ok", f"{reply.get('ename')}: {reply.get('evalue')}\n{lab.tail()}"
        lines = stdout.strip().splitlines()
        assert lines, f"the kernel printed nothing: {reply}"
        module, executable, prefix, cwd = json.loads(lines[-1])
        # In notebooks/, the clone's root is not on sys.path: comicnb must come from .venv's editable install.
        assert Path(cwd).resolve() == ROOT / "notebooks", f"kernel started in {cwd}"
        assert Path(module).resolve().is_relative_to(ROOT / "comicnb"), f"comicnb from {module}, not this clone"
        # sys.prefix is .venv only when the venv's python runs (the base env's python has the base as prefix);
        # sys.executable keeps the unresolved .venv/bin/python, so compare its folder, which is a real directory.
        assert Path(prefix).resolve() == VENV.resolve(), f"kernel sys.prefix {prefix}, not {VENV}"
        assert Path(executable).parent.resolve() == (VENV / "bin").resolve(), f"kernel python {executable}"
    finally:
        status, payload = lab.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204, f"DELETE kernel -> {status}: {payload[:500]!r}"
    assert kernel_id not in {k["id"] for k in lab.json("GET", "/api/kernels")}, "the kernel survived DELETE"
