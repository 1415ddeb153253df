"""Where shards live: a local folder, or a prefix in object storage (`s3://bucket/prefix`, `gs://bucket/prefix`,
`https://host/path`), behind the few operations fastvid needs.

`open_storage(location)` gives a `Storage` whose names are relative to the location: list names, read a
whole small object (dataset.json, an .idx, the journal), read a byte range (a sample's members, which lie
next to each other in its tar: one request per sample), `publish` a finished local file under a name
(only a complete object ever has the final name), append to a log (the shard journal), delete.

Object storage goes through obstore (Rust's `object_store`; `pip install 'fastvid[s3]'`): it read ~100 kB
byte ranges from a local S3 server at 1.5-1.7x boto3's rate with one request in flight and 1.7-2.7x with four,
2.3-3.4x s3fs's (`benchmarks/storage_clients.py`, two runs), releases the GIL while it waits, and speaks S3,
GCS and HTTP. It is not fork-safe (its runtime's threads do not survive a fork): the loader spawns its
workers when it reads object storage. S3 settings
come from the usual AWS variables (`AWS_ENDPOINT_URL` for an S3-compatible store, `AWS_REGION`, keys) and,
when the variables hold no key and boto3 is installed, from `~/.aws/config` and `~/.aws/credentials`
(profiles, SSO, instance roles). Requests are retried with exponential backoff on throttling (503), server
errors, dropped connections and timeouts; what is still failing after that is a one-line `StorageError`
naming the object (missing, access denied, endpoint unreachable).
"""
from __future__ import annotations

import io
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from fastvid.errors import MissingFile, UserError

URL = re.compile(r"^(s3|gs|https?)://", re.IGNORECASE)
PARTIAL = ".partial"  # the name an object or file has until it is complete
RETRY = {"max_retries": 5, "retry_timeout": timedelta(seconds=60),  # ~3 s of backoff before a dead endpoint is named
         "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5), "base": 2.0}}
CLIENT = {"connect_timeout": "5s", "timeout": "120s"}  # a whole shard's upload fits in the request timeout


class StorageError(UserError, OSError):
    """An object cannot be read or written: access denied, the endpoint unreachable, a bad URL."""


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and URL.match(location) is not None


def join(location: str | Path, name: str) -> str | Path:
    """`name` inside the folder or prefix `location`."""
    return f"{location.rstrip('/')}/{name}" if is_url(location) else Path(location) / name


def split(location: str | Path) -> tuple[str | Path, str]:
    """(folder or prefix, name) of a file or object location."""
    if is_url(location):
        root, _, name = location.rstrip("/").rpartition("/")
        return root, name
    return Path(location).parent, Path(location).name


@dataclass(frozen=True)
class Stat:
    """What a listing or a head request says about an object: its size and a stamp that changes whenever the
    object is written again (a file's mtime in ns, an object's ETag)."""

    size: int
    stamp: str


class Storage(ABC):
    """A folder or prefix; names are relative to it and use "/"."""

    root: str | Path

    def location(self, name: str) -> str | Path:
        """The full path or URL of `name`, for messages and for dataset.json's readers."""
        return join(self.root, name)

    @abstractmethod
    def stat(self, name: str) -> Stat | None:
        """None when there is no such object."""

    @abstractmethod
    def list(self, prefix: str = "") -> dict[str, Stat]:
        """Every object whose name starts with `prefix` (not in sub-folders for a local folder)."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """The whole object (small ones: dataset.json, an index); MissingFile when absent."""

    @abstractmethod
    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object (fewer only where it ends before `end`)."""

    @abstractmethod
    def open(self, name: str):
        """A seekable binary file object over the object (tarfile reads a shard through it; use `with`)."""

    @abstractmethod
    def publish(self, file: Path, name: str) -> None:
        """Make the finished local `file` the object `name`, which appears only once complete; `file` is gone
        afterwards."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove `name` if it exists."""

    @abstractmethod
    def append(self, log: str, line: str) -> None:
        """Add `line` to the log `log` durably (the shard journal: one line per committed shard)."""

    @abstractmethod
    def read_log(self, log: str) -> str | None:
        """Every line appended to `log`, in order; None when it does not exist."""

    def write(self, name: str, data: bytes, staging: Path) -> None:
        """Write `data` as `name`, atomically (through a file in the local folder `staging`)."""
        file = staging / (name.replace("/", "_") + PARTIAL)
        try:
            file.write_bytes(data)
            self.publish(file, name)
        finally:
            file.unlink(missing_ok=True)


class LocalStorage(Storage):
    """A folder on a file system. Reads keep one open descriptor per file (pread needs no seek)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._fds: dict[str, int] = {}

    def __getstate__(self) -> dict:  # sent to worker processes: no descriptors
        return {"root": self.root, "_fds": {}}

    def stat(self, name: str) -> Stat | None:
        try:
            st = (self.root / name).stat()
        except FileNotFoundError:
            return None
        return Stat(st.st_size, str(st.st_mtime_ns)) if not (self.root / name).is_dir() else None

    def list(self, prefix: str = "") -> dict[str, Stat]:
        if not self.root.is_dir():
            return {}
        return {p.name: Stat(st.st_size, str(st.st_mtime_ns)) for p in self.root.iterdir()
                if p.name.startswith(prefix) and p.is_file() and (st := p.stat())}

    def read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            raise MissingFile(f"{self.root / name}: no such file") from None

    def read_range(self, name: str, start: int, end: int) -> bytes:
        fd = self._fds.get(name)
        if fd is None:
            try:
                fd = self._fds[name] = os.open(self.root / name, os.O_RDONLY)
            except FileNotFoundError:
                raise MissingFile(f"{self.root / name}: no such file") from None
        return os.pread(fd, end - start, start)

    def open(self, name: str):
        return open(self.root / name, "rb")

    def publish(self, file: Path, name: str) -> None:
        with file.open("rb+") as f:  # on disk before it has its name: a crash leaves no torn file under it
            os.fsync(f.fileno())
        os.replace(file, self.root / name)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def append(self, log: str, line: str) -> None:
        with (self.root / log).open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_log(self, log: str) -> str | None:
        path = self.root / log
        return path.read_bytes().decode("utf-8", "replace") if path.exists() else None


class ObjectStorage(Storage):
    """A prefix in object storage. The client is made in the process that uses it (the loader's forked
    workers each make their own: obstore's runtime and connections do not survive a fork)."""

    def __init__(self, url: str) -> None:
        self.root = url.rstrip("/")
        self._store = None
        self._pid = -1
        self._lines: dict[str, int] = {}  # log -> lines it holds (`append`)

    def __getstate__(self) -> dict:
        return {"root": self.root, "_store": None, "_pid": -1, "_lines": {}}

    @property
    def store(self):
        if self._store is None or self._pid != os.getpid():
            self._store, self._pid = _make_store(self.root), os.getpid()
        return self._store

    def _call(self, name: str, fn, *args, **kwargs):
        """fn(store, *args) with obstore's errors made one line naming the object."""
        try:
            return fn(self.store, *args, **kwargs)
        except Exception as err:  # obstore raises its own classes, and OSError/ValueError for config and I/O
            raise _one_line(self.location(name), err) from None

    def stat(self, name: str) -> Stat | None:
        import obstore

        try:
            meta = self._call(name, obstore.head, name)
        except MissingFile:
            return None
        return Stat(meta["size"], str(meta["e_tag"] or meta["last_modified"]))

    def list(self, prefix: str = "") -> dict[str, Stat]:
        import obstore

        found = {}
        for chunk in self._call(prefix, obstore.list, prefix or None):
            found.update((m["path"], Stat(m["size"], str(m["e_tag"] or m["last_modified"]))) for m in chunk)
        return found

    def read(self, name: str) -> bytes:
        import obstore

        return bytes(self._call(name, lambda store: obstore.get(store, name).bytes()))

    def read_range(self, name: str, start: int, end: int) -> bytes:
        import obstore

        return bytes(self._call(name, obstore.get_range, name, start=start, end=end))

    def open(self, name: str):
        stat = self.stat(name)
        if stat is None:
            raise MissingFile(f"{self.location(name)}: no such object")
        return io.BufferedReader(_RangeFile(self, name, stat.size), buffer_size=8 << 20)

    def publish(self, file: Path, name: str) -> None:
        """Upload as NAME.partial (multipart for big files), then rename (a server-side copy) to NAME."""
        import obstore

        self._call(name + PARTIAL, obstore.put, name + PARTIAL, file, chunk_size=16 << 20, max_concurrency=4)
        self._call(name, obstore.rename, name + PARTIAL, name)
        file.unlink()

    def delete(self, name: str) -> None:
        import obstore

        try:
            self._call(name, obstore.delete, name)
        except MissingFile:
            pass

    def append(self, log: str, line: str) -> None:
        """An object cannot grow: each line is its own object LOG/NNNNNNNN, numbered after the last one."""
        import obstore

        if log not in self._lines:  # listed once per process, then counted here
            self._lines[log] = len(self.list(f"{log}/"))
        self._call(log, obstore.put, f"{log}/{self._lines[log]:08d}", line.encode())
        self._lines[log] += 1

    def read_log(self, log: str) -> str | None:
        names = sorted(self.list(f"{log}/"))
        if not names:
            return None
        return "".join(self.read(n).decode("utf-8", "replace") for n in names)


class _RangeFile(io.RawIOBase):
    """A read-only, seekable file over an object: each read is a byte-range request (buffered above)."""

    def __init__(self, storage: ObjectStorage, name: str, size: int) -> None:
        self.storage, self.name, self.size, self.position = storage, name, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(base + offset, 0)
        return self.position

    def readinto(self, buffer) -> int:
        end = min(self.position + len(buffer), self.size)
        if end <= self.position:
            return 0
        data = self.storage.read_range(self.name, self.position, end)
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


def open_storage(location: str | Path) -> Storage:
    """The storage of a local folder or an object-storage URL."""
    return ObjectStorage(location) if is_url(location) else LocalStorage(location)


_OPENED: dict[str, Storage] = {}  # root -> its storage, in this process (a client keeps its connections)


def storage_of(location: str | Path) -> tuple[Storage, str]:
    """(the storage of the folder or prefix holding `location`, its name there), one storage per root."""
    root, name = split(location)
    if str(root) not in _OPENED:
        _OPENED[str(root)] = open_storage(root)
    return _OPENED[str(root)], name


def read_location(location: str | Path) -> bytes:
    """The whole file or object at a path or URL."""
    storage, name = storage_of(location)
    return storage.read(name)


def stat_location(location: str | Path) -> Stat | None:
    storage, name = storage_of(location)
    return storage.stat(name)


def _make_store(url: str):
    """An obstore store for `url`, configured from the environment (see the module docstring)."""
    try:
        from obstore.store import from_url
    except ImportError:
        raise StorageError(f"{url}: reading object storage needs obstore: pip install 'fastvid[s3]'") from None
    options = {"client_options": CLIENT, "retry_config": RETRY}
    if url.lower().startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        options["client_options"] = {**CLIENT, "allow_http": endpoint.startswith("http://")}
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            options.update(_aws_config_files())
    elif url.lower().startswith("http://"):
        options["client_options"] = {**CLIENT, "allow_http": True}
    try:
        return from_url(url, **options)
    except Exception as err:
        raise _one_line(url, err) from None


def _aws_config_files() -> dict:
    """Credentials and region from ~/.aws (profiles, SSO, instance roles) through boto3, when it is installed."""
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return {}
    session = boto3.Session()
    if session.get_credentials() is None:  # none anywhere: obstore's own lookup (and its error) stands
        return {}
    return {"credential_provider": Boto3CredentialProvider(session)}


def _one_line(location: str | Path, err: Exception) -> UserError:
    """obstore's multi-line error -> one line naming the object and the reason."""
    from obstore import exceptions as ob

    text = str(err)
    if "<Code>NoSuchBucket</Code>" in text:  # not a missing object (a StorageError: no file to create)
        return StorageError(f"{location}: no such bucket {urlsplit(str(location)).netloc!r}")
    if isinstance(err, ob.NotFoundError) or re.search(r"status code: 404|<Code>NoSuch", text):
        return MissingFile(f"{location}: no such object")
    if isinstance(err, (ob.PermissionDeniedError, ob.UnauthenticatedError)) or re.search(r"status code: 40[13]", text):
        code = re.search(r"<Code>(\w+)</Code>", text)
        return StorageError(f"{location}: access denied ({code.group(1) if code else 'check the credentials'})")
    retries = re.search(r"after (\d+) retries", text)
    after = f" after {retries.group(1)} retries" if retries else ""
    status = re.search(r"status code: (\d{3})|\b(5\d\d) [A-Z]", text)
    if status:  # throttled (503 SlowDown) or a server error, still so after the retries
        code = re.search(r"<Code>(\w+)</Code>", text)
        return StorageError(f"{location}: the server answered {status.group(1) or status.group(2)}"
                            f"{' ' + code.group(1) if code else ''}{after}")
    if re.search(r"error sending request|connect|dns error|timed out", text, re.IGNORECASE):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") if str(location).startswith("s3://") else None
        return StorageError(f"{location}: {'endpoint ' + endpoint if endpoint else 'the server'} unreachable"
                            f"{after} ({_reason(text)})")
    return StorageError(f"{location}: {_reason(text)}")


def _reason(text: str) -> str:
    """The innermost message in obstore's error chain (`message: "..."`), else its first line."""
    messages = re.findall(r'message: "([^"]+)"', text)
    return messages[-1] if messages else " ".join(text.split("\n")[0].split())[:200]
