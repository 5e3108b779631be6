"""A real S3-compatible server on loopback for the object-store tests: moto's ThreadedMotoServer
(its S3 implementation over HTTP), reached by pyarrow's S3 filesystem through the standard AWS
variables, exactly as a deployment reaches MinIO, Ceph or S3 itself (docs/storage.md)."""

from __future__ import annotations

import atexit
import os
import uuid

ENV = {
    "AWS_ACCESS_KEY_ID": "modelfoundry-test",
    "AWS_SECRET_ACCESS_KEY": "modelfoundry-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probe for credentials
}


class S3Server:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def start(self) -> S3Server:
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def env(self) -> dict[str, str]:
        """What every process that reads the store needs (the driver, Ray workers, replicas)."""
        return {**ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def bucket(self, prefix: str = "mf") -> str:
        """A new, empty bucket; its name."""
        import pyarrow.fs as pafs

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        fs = pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key=ENV["AWS_ACCESS_KEY_ID"],
            secret_key=ENV["AWS_SECRET_ACCESS_KEY"],
            region=ENV["AWS_REGION"],
            allow_bucket_creation=True,
        )
        fs.create_dir(name)
        return name

    def stop(self) -> None:
        self.server.stop()


_server: S3Server | None = None


def s3_server() -> S3Server:
    """The session's server, started on first use, its variables in this process's environment
    (so a Ray cluster started after it hands them to its workers)."""
    global _server
    if _server is None:
        _server = S3Server().start()
        os.environ.update(_server.env())
        atexit.register(_server.stop)
    return _server
