"""Starts one `shoal dev` for the suite (SHOAL_BIN, or target/release/shoal
of the checkout) and hands its public address to the tests."""
import os
import pathlib
import subprocess
import tempfile
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def shoal_bin() -> pathlib.Path:
    if os.environ.get("SHOAL_BIN"):
        return pathlib.Path(os.environ["SHOAL_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "shoal"


@pytest.fixture(scope="session")
def server():
    data = tempfile.mkdtemp(prefix="shoal-py-")
    proc = subprocess.Popen([str(shoal_bin()), "dev", "--listen", "127.0.0.1:0", "--in-memory", "--sample", "0", "--data-dir", data], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "SHOAL_LOG": "warn"})
    addr = None
    ready = threading.Event()

    def read():
        nonlocal addr
        for line in proc.stdout:
            if line.startswith("shoal dev ready: public="):
                addr = line.split("public=", 1)[1].split()[0]
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(120) or addr is None:
        proc.kill()
        raise RuntimeError("shoal dev did not become ready")
    yield addr
    proc.kill()
    proc.wait()
