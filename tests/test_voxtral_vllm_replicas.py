"""Two real vLLM replicas behind nginx hashing ``X-Session-ID`` (docs/deployment.md's router).

A session's turns stay on one replica, so its later turns hit that replica's prefix cache; when
its replica dies, nginx sends the next turn to the other one, which answers it (paying one full
prefill). Configured as a deployment would be: ``voxtral.vllm.base_url`` is the router.
"""

from __future__ import annotations

import pytest
from pipecat.frames.frames import ErrorFrame, LLMFullResponseEndFrame, LLMTextFrame

from tests.voxtral_fixtures import StageHarness, count, make_utterance, wait_until
from voxtral_pipeline.config import load_config
from voxtral_pipeline.testing.nginx_router import NginxRouter, nginx_binary
from voxtral_pipeline.testing.vllm_server import VLLMServer, VLLMUnavailableError, vllm_python

pytestmark = [
    pytest.mark.skipif(vllm_python() is None, reason="vLLM is not installed in .venv-vllm (make vllm-setup)"),
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (`make system-deps`)"),
]


@pytest.fixture(scope="module")
def replicas():
    servers = [VLLMServer(), VLLMServer()]
    try:
        for server in servers:  # both load at once
            server.launch()
        for server in servers:
            server.wait_ready()
    except VLLMUnavailableError as e:
        for server in servers:
            server.close()
        pytest.fail(str(e))
    router = NginxRouter([f"127.0.0.1:{s.port}" for s in servers]).start()
    yield servers, router
    router.close()
    for server in servers:
        server.close()


def _stage(base_url: str, model: str, session_id: str):
    """The Voxtral stage of a pipeline configured for the router (the one place naming its class)."""
    from voxtral_pipeline.processors.voxtral import VoxtralLLMService

    config = load_config(
        None,
        {
            "voxtral.backend": "vllm",
            "voxtral.vllm.base_url": base_url,
            "voxtral.vllm.model": model,
            "voxtral.max_new_tokens": 12,
            "voxtral.transcribe_history": False,
        },
    )
    return VoxtralLLMService(config.voxtral, session_id=session_id)


def _upstreams(router: NginxRouter, session: str) -> list[str]:
    return [upstream for sid, upstream, _status in router.routes() if sid == session]


async def test_each_session_stays_on_its_replica_and_hits_its_prefix_cache(replicas):
    servers, router = replicas
    sessions = [f"user-{i}" for i in range(6)]
    for i, session in enumerate(sessions):
        service = _stage(router.base_url, servers[0].served_name, session)
        async with StageHarness(service) as h:
            for turn in range(3):
                await h.send(make_utterance(1.0, seed=10 * i + turn))
                await h.wait_down(count(LLMFullResponseEndFrame, turn + 1))
        assert not [f for f in h.up if isinstance(f, ErrorFrame)]
        (upstream,) = set(_upstreams(router, session))  # one replica for the whole session
        assert upstream in {f"127.0.0.1:{s.port}" for s in servers}
        for stats in service.turn_stats[1:]:  # only the new turn was prefilled
            assert stats.prefill_tokens < stats.prompt_tokens - 375, stats


async def test_a_session_survives_its_replica_dying(replicas):
    servers, router = replicas
    service = _stage(router.base_url, servers[0].served_name, "survivor")
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0, seed=500))
        await h.wait_down(count(LLMFullResponseEndFrame, 1))
        # nginx logs a request once it has closed it, which can be just after the stream's end.
        await wait_until(lambda: _upstreams(router, "survivor"), "nginx's log of the first turn")
        (first,) = _upstreams(router, "survivor")
        dead = next(s for s in servers if f"127.0.0.1:{s.port}" == first)
        dead.kill()
        await h.send(make_utterance(1.0, seed=501))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))
        await h.send(make_utterance(1.0, seed=502))
        await h.wait_down(count(LLMFullResponseEndFrame, 3))

    assert not [f for f in h.up if isinstance(f, ErrorFrame)]
    assert all(f.text for f in h.down if isinstance(f, LLMTextFrame))
    routes = _upstreams(router, "survivor")
    other = next(f"127.0.0.1:{s.port}" for s in servers if s is not dead)
    assert routes[0] == first and routes[-1] == other, routes  # turn 2 was retried on the other one
    second, third = service.turn_stats[1], service.turn_stats[2]
    assert not second.error and not third.error
    assert second.prefill_tokens > second.prompt_tokens - 375  # a new replica: the whole prompt
    assert third.prefill_tokens < third.prompt_tokens - 375  # then its own prefix cache
