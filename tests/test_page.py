"""The search page (/ui) and its waveform thumbnails (/thumb/{id}), in headless Chromium through Playwright.

Runs on a random tiny bundle and a store of random points whose sources are real files (a few short clips and
the windows of one 70 s recording), so it does not need the session-wide trained model. Screenshots at
desktop and phone widths are written under pytest's tmp folder and copied to $HARK_TEST_ARTIFACTS when set.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_serve import fill, random_bundle, serve_in_thread, settings_for

LONG = {"must": [{"key": "half", "match": {"value": "long"}}]}
FILES = {"must": [{"key": "half", "match": {"any": ["long", "short"]}}]}  # not the point outside the roots
NONE = {"must": [{"key": "half", "match": {"value": "nothing has this"}}]}
N_POINTS = 24


def _give_files(client, physical: str, ids: list, media: Path) -> dict:
    """Point every stored point at a real file: short clips round-robin, and three points as the 30 s windows
    of one 70 s recording. Returns the ids of those windows by offset."""
    from hark.demo.synth import make_clip, write_audio

    rng = np.random.default_rng(5)
    clips = []
    for i, seconds in enumerate((3.0, 5.5, 8.0)):
        path = write_audio(media / f"clip {i}.wav", make_clip(rng, seconds, 32000)[0], 32000, 1)
        clips.append((path, seconds))
    long_path = write_audio(media / "long field recording.wav", make_clip(rng, 70.0, 32000)[0], 32000, 1)
    windows = {}
    for n, pid in enumerate(ids):
        if n < 3:
            offset = 30.0 * n
            payload = {"source_uri": str(long_path), "file_name": long_path.name, "content_hash": "long" * 16,
                       "windows": 3, "window_index": n, "window_offset": offset,
                       "window_duration": min(30.0, 70.0 - offset), "duration": 70.0, "half": "long"}
            windows[offset] = pid
        else:
            path, seconds = clips[n % len(clips)]
            payload = {"source_uri": str(path), "file_name": path.name, "content_hash": f"clip{n % len(clips)}" * 8,
                       "windows": 1, "window_index": 0, "window_offset": 0.0, "window_duration": seconds,
                       "duration": seconds, "half": "short"}
        client.set_payload(physical, payload, points=[pid], wait=True)
    return windows


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from hark.bundle import Bundle
    from hark.plugin.serve import create_app
    from hark.store import connect

    tmp = tmp_path_factory.mktemp("page")
    bundle = Bundle.load(random_bundle(tmp / "b"))
    settings = settings_for(tmp)
    client = connect(settings)
    info = fill(client, bundle, N_POINTS, tmp / "media")
    usable = [i for i in info["ids"] if i not in (info["passwd"],)]
    windows = _give_files(client, info["physical"], usable, tmp / "media")
    app = create_app(settings, bundle, client=client)
    keyed = create_app(settings_for(tmp, HARK_API_KEY="sesame"), bundle, client=client)
    url, stop = serve_in_thread(app)
    keyed_url, stop_keyed = serve_in_thread(keyed)
    yield {"url": url, "keyed_url": keyed_url, "app": app, "keyed": keyed, "windows": windows, "info": info,
           "settings": settings, "bundle": bundle, "client": client}
    stop()
    stop_keyed()
    client.close()


# -- the thumbnail route -------------------------------------------------------------------------------------
def test_thumbnail_locks_stay_bounded_however_many_recordings():
    """One lock per recording ever thumbnailed grew without end on a long-running server; the same key must
    still get the same lock (one decode per recording when its windows are asked for together)."""
    from hark.plugin.serve.thumbs import Thumbnails

    thumbs = Thumbnails(Path("/nonexistent-thumbs"))
    locks = {id(thumbs._lock(f"recording-{i}")) for i in range(10_000)}
    assert len(locks) <= 64
    assert thumbs._lock("recording-7") is thumbs._lock("recording-7")


def test_thumb_is_computed_once_and_cached(stack, monkeypatch):
    import httpx

    from hark.plugin.serve import thumbs

    decodes = []
    real = thumbs._decode
    monkeypatch.setattr(thumbs, "_decode", lambda path: decodes.append(path) or real(path))
    middle = stack["windows"][30.0]
    first = httpx.get(f"{stack['url']}/thumb/{middle}")
    assert first.status_code == 200, first.text
    assert "max-age=31536000" in first.headers["cache-control"]
    body = first.json()
    assert body["duration"] == pytest.approx(70.0) and body["window"] == {"start": 30.0, "end": 60.0}
    assert len(body["peaks"]) == len(body["window_peaks"]) == thumbs.COLUMNS
    assert all(lo <= hi for lo, hi in body["peaks"]) and max(hi for _, hi in body["peaks"]) > 0.01
    assert len(decodes) == 1
    # Again, and another window of the same recording: served from the cache, no decode.
    assert httpx.get(f"{stack['url']}/thumb/{middle}").content == first.content
    last = httpx.get(f"{stack['url']}/thumb/{stack['windows'][60.0]}").json()
    assert last["window"] == {"start": 60.0, "end": 70.0}
    assert len(decodes) == 1
    cached = sorted(p.name for p in (Path(stack["settings"].state_dir) / "thumbs").iterdir())
    assert any(name.endswith("-30-30.json") for name in cached) and any(name.endswith(".npy") for name in cached)


def test_thumb_peaks_follow_the_audio(tmp_path):
    """A recording silent in its first half has flat columns there and loud ones after."""
    import soundfile as sf

    from hark.plugin.serve.thumbs import columns, fine_peaks

    audio = np.concatenate([np.zeros(32000 * 2), 0.5 * np.sin(np.arange(32000 * 2) / 5.0)]).astype(np.float32)
    sf.write(tmp_path / "half.wav", audio, 32000)
    cols = columns(fine_peaks(tmp_path / "half.wav"), 0.0, 4.0, 40)
    assert max(abs(v) for col in cols[:18] for v in col) < 0.02
    assert min(hi for _, hi in cols[22:]) > 0.4 and max(lo for lo, _ in cols[22:]) < -0.4


def test_thumb_only_for_sources_under_media_roots(stack):
    import httpx

    assert httpx.get(f"{stack['url']}/thumb/{stack['info']['passwd']}").status_code == 404
    assert httpx.get(f"{stack['url']}/thumb/{uuid.UUID(int=10**9)}").status_code == 404
    assert httpx.get(f"{stack['url']}/thumb/not-a-point").status_code == 404


def test_thumb_needs_the_key_when_one_is_set(stack):
    import httpx

    point = stack["windows"][0.0]
    assert httpx.get(f"{stack['keyed_url']}/thumb/{point}").status_code == 401
    assert httpx.get(f"{stack['keyed_url']}/thumb/{point}", headers={"api-key": "wrong"}).status_code == 401
    assert httpx.get(f"{stack['keyed_url']}/thumb/{point}", headers={"api-key": "sesame"}).status_code == 200


def test_root_sends_browsers_to_the_page(stack):
    import httpx

    response = httpx.get(stack["url"] + "/", headers={"accept": "text/html"})
    assert response.status_code in {302, 307} and response.headers["location"] == "/ui"


# -- in the browser --------------------------------------------------------------------------------------------
def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (scripts/test.sh installs it where apt-get is available)")
    return path


@pytest.fixture(scope="module")
def browser():
    pw = pytest.importorskip("playwright.sync_api")
    with pw.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


def _keep(artifacts: Path, path: Path) -> None:
    target = os.environ.get("HARK_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def _url(base: str, query: str, flt: dict | None = None) -> str:
    url = f"{base}/ui?q={quote(query)}"
    return url + (f"&filter={quote(json.dumps(flt))}" if flt else "")


def _wait_for_hits(page, n: int | None = None) -> None:
    page.wait_for_function("document.body.dataset.state === 'results' || document.body.dataset.state === 'error'")
    assert page.evaluate("document.body.dataset.state") == "results", page.inner_text("#status")
    if n is not None:
        assert page.locator(".hit").count() == n


def test_query_shows_players_and_thumbnails_and_lives_in_the_url(stack, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(stack["url"] + "/ui")
        page.fill("#q", "a dog barks while rain falls")
        page.fill("#filter", json.dumps(FILES))
        page.click("button[type=submit]")
        _wait_for_hits(page, 10)
        assert "q=a+dog+barks+while+rain+falls" in page.url
        assert page.locator(".hit audio").count() == 10
        page.wait_for_function("document.querySelectorAll('canvas.wave[data-ready]').length === 10")
        # The canvas really has a waveform on it: dark (drawn) pixels in more than a few columns.
        drawn = page.evaluate("""() => { const c = document.querySelector('canvas.wave');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 200) n++; return n / (c.width * c.height); }""")
        assert drawn > 0.05
        parts = page.locator(".hit .parts").first.inner_text()
        assert "cosine" in parts and "attention" in parts and "score" in parts
        assert not page.locator(".hit details").first.evaluate("d => d.open")
        first = page.locator(".hit .title").all_inner_texts()
        # Reloading the address runs the same search again.
        page.reload()
        _wait_for_hits(page, 10)
        assert page.input_value("#q") == "a dog barks while rain falls"
        assert page.locator(".hit .title").all_inner_texts() == first
    finally:
        page.close()


def test_waveform_click_and_button_seek_to_the_match(stack, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(_url(stack["url"], "a long field recording", LONG))
        _wait_for_hits(page, 3)
        hits = page.locator(".hit")
        second = next(i for i in range(3) if hits.nth(i).locator("canvas").get_attribute("data-start") == "30")
        hit = hits.nth(second)
        assert "match 0:30–1:00" in hit.locator(".where").inner_text()
        assert "1:10" in hit.locator(".where").inner_text()
        canvas = hit.locator("canvas.wave")
        page.wait_for_function("document.querySelectorAll('canvas.wave[data-ready]').length === 3")
        box = canvas.bounding_box()
        # Click at the start of the highlighted span (30 s of 70 s).
        canvas.click(position={"x": box["width"] * 30.2 / 70.0, "y": box["height"] / 2})
        now = hit.locator("audio").evaluate("a => a.currentTime")
        assert now == pytest.approx(30.2, abs=0.5)
        canvas.click(position={"x": box["width"] * 0.9, "y": box["height"] / 2})
        assert hit.locator("audio").evaluate("a => a.currentTime") == pytest.approx(63.0, abs=0.5)
        hit.locator("button.play").click()
        assert hit.locator("audio").evaluate("a => a.currentTime") == pytest.approx(30.0, abs=0.3)
        # The player itself starts at the window too.
        assert hit.locator("audio").evaluate("a => a.src").endswith("#t=30")
    finally:
        page.close()


def test_the_player_starts_at_the_moment_the_search_found(stack, browser):
    """A window whose stored moments peak at 10-12 s into it (40-42 s into the recording): the hit carries that
    span, and the page's player and play button start there instead of at the window."""
    from qdrant_client import models

    from hark.moments import quantize
    from hark.plugin.encoders import TextEncoder

    client, physical, pid = stack["client"], stack["info"]["physical"], stack["windows"][30.0]
    query = "a long field recording"
    sentence = TextEncoder(stack["bundle"], "cpu").encode([query]).sentence[0]
    rows = np.stack([-sentence] * 15)
    rows[5] = sentence
    record = client.retrieve(physical, [pid], with_payload=True, with_vectors=True)[0]
    original = dict(record.vector)
    client.upsert(physical, [models.PointStruct(id=pid, vector={**original, "moments": quantize(rows).tolist()},
                                                payload=record.payload)], wait=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(_url(stack["url"], query, LONG))
        _wait_for_hits(page, 3)
        hits = page.locator(".hit")
        found = [i for i in range(3) if hits.nth(i).locator("canvas").get_attribute("data-start") == "40"]
        assert len(found) == 1, [hits.nth(i).locator("canvas").get_attribute("data-start") for i in range(3)]
        hit = hits.nth(found[0])
        assert "match 0:40–0:42" in hit.locator(".where").inner_text()
        assert hit.locator("audio").evaluate("a => a.src").endswith("#t=40")
        hit.locator("button.play").click()
        assert hit.locator("audio").evaluate("a => a.currentTime") == pytest.approx(40.0, abs=0.3)
    finally:
        page.close()
        client.upsert(physical, [models.PointStruct(id=pid, vector=original, payload=record.payload)], wait=True)


def test_more_results_pages_through_the_collection(stack, browser):
    """The page showed the first `top` hits and no way past them."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(_url(stack["url"], "a dog barks"))
        _wait_for_hits(page, 10)
        first = page.locator(".hit .title").all_inner_texts()
        assert page.is_visible("#more")
        page.click("#more")
        page.wait_for_function("document.body.dataset.results === '20'")
        page.click("#more")
        page.wait_for_function(f"document.body.dataset.results === '{N_POINTS}'")
        titles = page.locator(".hit .title").all_inner_texts()
        assert titles[:10] == first and len(titles) == N_POINTS
        ids = page.evaluate("[...document.querySelectorAll('.hit')].map(h => h.dataset.id)")
        assert len(set(ids)) == N_POINTS  # every point once
        assert not page.is_visible("#more")  # a short page was the last
        assert f"{N_POINTS} hits" in page.inner_text("#status")
    finally:
        page.close()


def test_empty_and_error_states(stack, browser):
    page = browser.new_page()
    try:
        page.goto(_url(stack["url"], "a dog barks", NONE))
        page.wait_for_function("['empty', 'error'].includes(document.body.dataset.state)")
        assert page.evaluate("document.body.dataset.state") == "empty"
        assert "no hits" in page.inner_text("#status") and page.locator(".hit").count() == 0
        page.fill("#filter", '{"must": [{"kee": 1}]}')
        page.click("button[type=submit]")
        page.wait_for_function("document.body.dataset.state === 'error'")
        assert "filter" in page.inner_text("#status") and page.locator(".hit").count() == 0
        page.fill("#filter", "{not json")
        page.click("button[type=submit]")
        assert "not valid JSON" in page.inner_text("#status")
    finally:
        page.close()


def test_key_field_against_a_server_with_a_key(stack, browser):
    page = browser.new_page()
    try:
        page.goto(_url(stack["keyed_url"], "rain falls", FILES))
        page.wait_for_function("document.body.dataset.state === 'error'")
        assert "API key" in page.inner_text("#status")
        page.fill("#key", "sesame")
        page.dispatch_event("#key", "change")
        page.click("button[type=submit]")
        _wait_for_hits(page, 10)
        page.wait_for_function("document.querySelectorAll('canvas.wave[data-ready]').length === 10")
        page.wait_for_function("document.querySelector('audio').readyState >= 1", timeout=20000)
        assert page.evaluate("document.querySelector('audio').src").startswith("blob:")
        # The key is remembered by this browser for the next visit.
        page.reload()
        assert page.input_value("#key") == "sesame"
        _wait_for_hits(page, 10)
    finally:
        page.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_screenshots_fit_the_width(stack, browser, artifacts, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.goto(_url(stack["url"], "a long field recording", FILES))
        _wait_for_hits(page, 10)
        page.wait_for_function("document.querySelectorAll('canvas.wave[data-ready]').length === 10")
        page.locator(".hit details").first.evaluate("d => d.open = true")
        assert page.evaluate("document.documentElement.scrollWidth") == width
        overflowing = page.evaluate("""(w) => [...document.querySelectorAll('body *')]
            .filter(e => { const r = e.getBoundingClientRect();
                           return r.width > 0 && (r.right > w + 0.5 || r.left < -0.5); })
            .map(e => e.tagName + '.' + e.className)""", width)
        assert overflowing == []
        # Each hit's controls stay usable: the player is at least half the width at a phone's size.
        audio_width = page.locator(".hit audio").first.bounding_box()["width"]
        assert audio_width >= min(width, 60 * 16) * 0.5 - 40
        shot = artifacts / f"search-page-{width}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        _keep(artifacts, shot)
    finally:
        page.close()
