import pytest

from soulray.rewrite.server import LocalLLMServer, ServerConfig


@pytest.fixture
def llm():
    """Start local OpenAI-compatible servers (real HTTP on loopback); stopped after the test."""
    servers = []

    def start(**kwargs) -> tuple[LocalLLMServer, str]:
        server = LocalLLMServer(ServerConfig(**kwargs))
        servers.append(server)
        return server, server.start()

    yield start
    for server in servers:
        server.stop()
