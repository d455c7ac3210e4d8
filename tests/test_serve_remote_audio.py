"""/audio streams remote sources (http here) under a remote media root, with byte ranges; others are 404."""

from __future__ import annotations

import functools
import http.server
import io
import os
import threading

import pytest
from test_serve import fill, random_bundle, settings_for


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server plus single byte ranges, as object stores and web servers answer them."""

    def send_head(self):
        header = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not header or not header.startswith("bytes=") or not os.path.isfile(path):
            return super().send_head()
        data = open(path, "rb").read()  # noqa: SIM115 (closed by the BytesIO's reader below)
        first, _, last = header[6:].partition("-")
        start = int(first) if first else len(data) - int(last)
        end = int(last) if first and last else len(data) - 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(data[start:end + 1])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    from fastapi.testclient import TestClient

    from hark.bundle import Bundle
    from hark.plugin.serve import create_app
    from hark.store import connect

    tmp = tmp_path_factory.mktemp("remote")
    served = tmp / "www"
    served.mkdir()
    (served / "a.wav").write_bytes(bytes(range(256)) * 40)
    (tmp / "secret.wav").write_bytes(b"x" * 100)
    handler = functools.partial(RangeHandler, directory=str(tmp))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    bundle = Bundle.load(random_bundle(tmp / "b"))
    settings = settings_for(tmp, HARK_MEDIA_ROOTS=f"{tmp / 'media'};{base}/www/")
    client = connect(settings)
    info = fill(client, bundle, 4, tmp / "media")
    uris = {"inside": f"{base}/www/a.wav", "outside": f"{base}/secret.wav", "dots": f"{base}/www/../secret.wav"}
    for name, uri in uris.items():
        client.set_payload(info["physical"], {"source_uri": uri}, points=[info["ids"][{"inside": 0, "outside": 2,
                                                                                       "dots": 3}[name]]])
    app = create_app(settings, bundle, client=client)
    with TestClient(app) as http_client:
        yield {"http": http_client, "ids": info["ids"], "body": (served / "a.wav").read_bytes()}
    client.close()
    server.shutdown()


def test_remote_source_under_a_root_streams_whole_and_in_ranges(remote):
    whole = remote["http"].get(f"/audio/{remote['ids'][0]}")
    assert whole.status_code == 200 and whole.content == remote["body"]
    part = remote["http"].get(f"/audio/{remote['ids'][0]}", headers={"range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == remote["body"][100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(remote['body'])}"
    tail = remote["http"].get(f"/audio/{remote['ids'][0]}", headers={"range": "bytes=-10"})
    assert tail.content == remote["body"][-10:]
    assert remote["http"].get(f"/audio/{remote['ids'][0]}", headers={"range": "bytes=99999-"}).status_code == 416


@pytest.mark.parametrize("index", [2, 3])
def test_remote_sources_outside_the_roots_are_404(remote, index):
    response = remote["http"].get(f"/audio/{remote['ids'][index]}")
    assert response.status_code == 404
    assert b"x" * 100 not in response.content


def test_a_local_file_still_plays(remote):
    assert remote["http"].get(f"/audio/{remote['ids'][1]}").status_code == 200


def test_media_roots_split_local_folders_and_uri_prefixes():
    from hark.plugin.serve.media import MediaRoots
    from hark.settings import Settings

    roots = MediaRoots(Settings(media_roots="/data/a;s3://bucket/audio;https://host:8443/x/;/data/b"))
    assert roots.remote_prefixes() == ["s3://bucket/audio/", "https://host:8443/x/"]
    assert [str(p) for p in roots.roots()] == ["/data/a", "/data/b"]
    assert roots.allows_remote("s3://bucket/audio/clip.wav")
    assert not roots.allows_remote("s3://bucket/audiox/clip.wav")
    assert not roots.allows_remote("s3://bucket/audio/../secret.wav")
    assert not roots.allows_remote("https://host:8443/x/a.wav?redirect=1")
    local_only = MediaRoots(Settings(media_roots="/data/a:/data/b"))
    assert [str(p) for p in local_only.roots()] == ["/data/a", "/data/b"] and local_only.remote_prefixes() == []
