import pytest

from edge_slm.mqtt import BrokerUrl


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker.local", "broker.local", 1883, False),
        ("mqtts://cloud.example.com", "cloud.example.com", 8883, True),
        ("mqtt://127.0.0.1:18830", "127.0.0.1", 18830, False),
        ("mqtts://[::1]:8884", "::1", 8884, True),
    ],
)
def test_parse(url: str, host: str, port: int, tls: bool) -> None:
    parsed = BrokerUrl.parse(url)
    assert (parsed.host, parsed.port, parsed.tls) == (host, port, tls)


@pytest.mark.parametrize("url", ["http://x", "tcp://x:1883", "mqtt://", "mqtt://h:99999", "x"])
def test_rejects(url: str) -> None:
    with pytest.raises(ValueError, match="broker URL"):
        BrokerUrl.parse(url)
