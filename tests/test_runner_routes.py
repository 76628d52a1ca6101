"""pipecat's runner conventions on the bot's server, without a browser (aiohttp + an aiortc peer).

``POST /start`` -> ``{sessionId, iceConfig}``, the offer at ``/sessions/{id}/api/offer``, trickled ICE
candidates PATCHed as pipecat ``IceCandidate`` objects, CORS for configured origins, pipecat's
prebuilt UI at ``/client/``; a wrong token on every route, a ``/start`` flood, PATCHes for unknown
sessions and malformed candidates are refused with a 4xx and a reason.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from tests.transport_helpers import TOKEN, dummy_config, running_server
from voxtral_pipeline.server import TOKEN_COOKIE, parse_candidates

OTHER_ORIGIN = "http://127.0.0.1:9"  # a page elsewhere, allowed by the config below


@pytest.fixture
async def server():
    config = dummy_config(
        "webrtc",
        **{
            "transport.server.token": TOKEN,
            "transport.server.max_sessions": 2,
            "transport.server.media_timeout_secs": 120.0,  # the peer here sends no audio
            "transport.server.allowed_origins": [OTHER_ORIGIN],
        },
    )
    async with running_server(config) as bot:
        yield bot


def _auth(token: str | None = TOKEN) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def _call(http, method: str, url: str, body=None, token: str | None = TOKEN, **headers):
    async with http.request(
        method, url, data=json.dumps(body or {}), headers={**_auth(token), **headers}
    ) as res:
        try:
            return res.status, await res.json()
        except Exception:
            return res.status, await res.text()


async def _offer(pc: RTCPeerConnection) -> dict:
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    return {"sdp": pc.localDescription.sdp, "type": "offer", "pc_id": None, "restart_pc": False}


def test_parse_candidates_refuses_malformed_ones():
    good = parse_candidates(
        [{"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdp_mid": "0", "sdp_mline_index": 0}]
    )
    assert good[0].candidate.startswith("candidate:") and good[0].sdp_mline_index == 0
    for bad in (None, "x", [1], [{"candidate": 5, "sdp_mid": "0", "sdp_mline_index": 0}],
                [{"candidate": "c", "sdp_mid": "0", "sdp_mline_index": "0"}],
                [{"candidate": "c", "sdp_mid": "0", "sdp_mline_index": True}],
                [{"candidate": "c", "sdp_mid": "0", "sdp_mline_index": 0}] * 65):  # fmt: skip
        with pytest.raises(ValueError):
            parse_candidates(bad)


async def test_start_offer_and_trickled_candidates(server):
    base = server.url.rstrip("/")
    async with aiohttp.ClientSession() as http:
        # A wrong or missing token on every new route.
        for method, path in (("POST", "/start"), ("POST", "/sessions/x/api/offer"),
                             ("PATCH", "/sessions/x/api/offer"), ("PATCH", "/api/offer")):  # fmt: skip
            for token in (None, "wrong"):
                status, body = await _call(http, method, base + path, {}, token=token)
                assert status == 401 and "token" in body["error"], (method, path, token)
        # Unknown sessions.
        pc = RTCPeerConnection()
        try:
            offer = await _offer(pc)
            status, body = await _call(http, "POST", base + "/sessions/nope/api/offer", offer)
            assert status == 404 and "start" in body["error"]
            patch = {"pc_id": "nope", "candidates": []}
            assert (await _call(http, "PATCH", base + "/sessions/nope/api/offer", patch))[0] == 404
            assert (await _call(http, "PATCH", base + "/api/offer", patch))[0] == 404
            status, body = await _call(http, "POST", base + "/start", {"transport": "daily"})
            assert status == 400 and "webrtc" in body["error"]

            # The runner's flow: /start, then the offer at /sessions/{id}/api/offer.
            status, started = await _call(http, "POST", base + "/start", {})
            assert status == 200 and started["iceConfig"] == {"iceServers": []}, started
            sid = started["sessionId"]
            status, answer = await _call(http, "POST", f"{base}/sessions/{sid}/api/offer", offer)
            assert status == 200 and answer["type"] == "answer", answer
            pc_id = answer["pc_id"]
            assert pc_id in server.sessions and server.started[sid] == pc_id
            # The same /start id cannot bring a second session.
            other = RTCPeerConnection()
            try:
                status, _ = await _call(http, "POST", f"{base}/sessions/{sid}/api/offer", await _offer(other))
                assert status == 404
            finally:
                await other.close()

            # Trickled ICE: a real candidate line from the offer, as small-webrtc-transport sends it.
            line = next(x for x in offer["sdp"].splitlines() if x.startswith("a=candidate:"))
            candidate = {"candidate": line[2:], "sdp_mid": "0", "sdp_mline_index": 0}
            for url in (f"{base}/sessions/{sid}/api/offer", base + "/api/offer"):
                status, body = await _call(http, "PATCH", url, {"pc_id": pc_id, "candidates": [candidate]})
                assert status == 200 and body == {"status": "success"}, (url, body)
            end = {"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0}  # end-of-candidates
            assert (await _call(http, "PATCH", base + "/api/offer", {"pc_id": pc_id, "candidates": [end]}))[
                0
            ] == 200
            junk = {"candidate": "junk", "sdp_mid": "0", "sdp_mline_index": 0}
            bads = [{"pc_id": pc_id, "candidates": [{"candidate": 1}]}, {"pc_id": 5, "candidates": []}]
            for bad in [*bads, {"pc_id": pc_id, "candidates": [junk]}]:
                status, body = await _call(http, "PATCH", base + "/api/offer", bad)
                assert status == 400 and "malformed" in body["error"], (bad, body)
            # Another /start id cannot touch this session.
            status, s2 = await _call(http, "POST", base + "/start", {})
            assert status == 200
            patch = {"pc_id": pc_id, "candidates": [candidate]}
            assert (await _call(http, "PATCH", f"{base}/sessions/{s2['sessionId']}/api/offer", patch))[
                0
            ] == 404

            # A /start flood: the limit (2) holds the live session and the unused start.
            status, body = await _call(http, "POST", base + "/start", {})
            assert status == 429 and "busy" in body["error"]
            # An unused /start proves nothing: its slot is freed after media_timeout_secs (aged here).
            server.starts[s2["sessionId"]] -= 121
            status, s3 = await _call(http, "POST", base + "/start", {})
            assert status == 200, s3
            assert pc_id in server.sessions  # the neighbour kept working through all of it
        finally:
            await pc.close()


async def test_cors_and_the_prebuilt_ui(server):
    base = server.url.rstrip("/")
    async with aiohttp.ClientSession() as http:
        preflight = {"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
        async with http.options(base + "/start", headers=preflight) as res:
            assert res.status == 200 and res.headers["Access-Control-Allow-Origin"] == OTHER_ORIGIN
        async with http.options(
            base + "/start", headers={**preflight, "Origin": "http://evil.example"}
        ) as res:
            assert res.status == 403
        status, _ = await _call(http, "POST", base + "/start", {}, Origin=OTHER_ORIGIN)
        assert status == 200

        async with http.get(base + "/client/") as res:
            assert res.status == 200 and "<html" in (await res.text()).lower()
            assert TOKEN_COOKIE not in res.cookies
        async with http.get(base + "/client/?token=wrong") as res:
            assert TOKEN_COOKIE not in res.cookies
        async with http.get(base + "/") as res:  # our page stays at /
            assert res.status == 200 and "voxtral" in (await res.text()).lower()

    # The prebuilt UI cannot send our token: the page loaded with it gets a cookie /start accepts.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        assert (await _call(http, "POST", base + "/start", {}, token=None))[0] == 401
        async with http.get(base + f"/client/?token={TOKEN}") as res:
            assert res.status == 200
        status, body = await _call(http, "POST", base + "/start", {}, token=None)
        assert status == 200 and body["sessionId"], body


async def test_no_cors_by_default():
    config = dummy_config("webrtc")
    async with running_server(config) as bot, aiohttp.ClientSession() as http:
        headers = {"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "POST"}
        async with http.options(bot.url + "start", headers=headers) as res:
            assert res.status == 403
