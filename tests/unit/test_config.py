from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from kraken.config import ByteSize, ConfigError, Duration, ListenConfig, Secret, load_config


@dataclass
class Inner:
    size: ByteSize = 1
    ttl: Duration = 1.0
    mode: Literal["a", "b"] = "a"


@dataclass
class Sample:
    name: str
    listen: ListenConfig = field(default_factory=ListenConfig)
    inner: Inner = field(default_factory=Inner)
    hosts: list[str] = field(default_factory=list)
    sizes: dict[ByteSize, ByteSize] = field(default_factory=dict)
    optional: int | None = None


def write(path, text):
    path.write_text(text)
    return path


def test_extends_chain_merges_key_by_key(tmp_path):
    write(tmp_path / "base.yaml", "name: base\nlisten: {host: 0.0.0.0, port: 1}\ninner: {size: 4MB, ttl: 5m}\n")
    write(tmp_path / "mid.yaml", "extends: base.yaml\nlisten: {port: 2}\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    dev = write(sub / "dev.yaml", "extends: ../mid.yaml\ninner: {mode: b}\nsizes: {0: 4MB, 1GB: 16MB}\n")
    cfg = load_config(Sample, dev)
    assert cfg.name == "base"
    assert cfg.listen == ListenConfig(host="0.0.0.0", port=2)
    assert cfg.inner == Inner(size=4 << 20, ttl=300.0, mode="b")
    assert cfg.sizes == {0: 4 << 20, 1 << 30: 16 << 20}


@pytest.mark.parametrize("text,message", [
    ("name: x\ninner: {sise: 1}\n", "inner.sise: unknown key"),
    ("name: x\nhosts: [a, [b]]\n", "hosts[1]: expected str"),
    ("listen: {port: 1}\n", "name: required key is missing"),
    ("name: x\nlisten: {port: eighty}\n", "listen.port: expected int"),
    ("name: x\ninner: {ttl: soon}\n", "inner.ttl: not a duration"),
    ("name: x\ninner: {size: 4XB}\n", "inner.size: not a size"),
    ("name: x\ninner: {mode: c}\n", "inner.mode: expected one of"),
    ("name: x\noptional: nope\n", "optional: expected int"),
    ("name: x\nlisten: {port: true}\n", "listen.port: expected int"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("name: [unclosed\n", "invalid YAML"),
])
def test_errors_name_file_and_key_path(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(Sample, path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_file_and_extends_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Sample, tmp_path / "nope.yaml")
    write(tmp_path / "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Sample, tmp_path / "a.yaml")


def test_overrides_win(tmp_path):
    path = write(tmp_path / "c.yaml", "name: x\nlisten: {port: 1}\n")
    cfg = load_config(Sample, path, overrides={"listen": {"port": 9}})
    assert cfg.listen.port == 9 and cfg.name == "x"


@dataclass
class Checked:
    low: int = 0
    high: int = 1

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low must not exceed high")


@dataclass
class WithChecked:
    range: Checked = field(default_factory=Checked)


def test_a_dataclass_own_check_is_reported_with_file_and_key(tmp_path):
    path = write(tmp_path / "r.yaml", "range: {low: 5, high: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(WithChecked, path)
    assert str(err.value) == f"{path}: range: low must not exceed high"


def test_origin_piece_lengths_need_a_zero_threshold(tmp_path):
    from kraken.origin.config import OriginConfig

    path = write(tmp_path / "o.yaml", "store: {root: /tmp/x}\nmetainfo: {piece_lengths: {1GB: 16MB}}\n")
    with pytest.raises(ConfigError, match=r"metainfo: piece_lengths needs a 0 threshold"):
        load_config(OriginConfig, path)


@dataclass
class WithAuth:
    name: str
    auth: dict[str, Secret] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


def test_secrets_file_is_merged_over_the_config(tmp_path):
    config = write(tmp_path / "c.yaml", "name: x\ninner: {mode: b}\nauth: {user: placeholder}\n")
    secrets = write(tmp_path / "s.yaml", "auth: {password: hunter2, user: u}\ninner: {size: 2KB}\n")
    cfg = load_config(WithAuth, config, secrets=secrets)
    assert cfg.auth == {"user": Secret("u"), "password": Secret("hunter2")}
    assert (cfg.inner.size, cfg.inner.mode) == (2048, "b")
    assert cfg.auth["password"].reveal() == "hunter2"


def test_a_secret_never_prints_itself():
    secret = Secret("hunter2")
    for text in (repr(secret), str(secret), f"{secret}", repr(WithAuth("x", {"p": secret}))):
        assert "hunter2" not in text and "<redacted>" in text


def test_secrets_without_a_config_file_build_on_the_defaults(tmp_path):
    secrets = write(tmp_path / "s.yaml", "name: from-secrets\n")
    assert load_config(WithAuth, None, secrets=secrets).name == "from-secrets"


@pytest.mark.parametrize("text, message", [
    ("inner: {mode: hunter2}\n", "s.yaml: inner.mode: expected one of ['a', 'b'], got <redacted>"),
    ("inner: {size: hunter2}\n", "s.yaml: inner.size: <redacted>"),
    ("auth: {p: [hunter2]}\n", "s.yaml: auth.p: expected a string (a secret, not shown), got list"),
    ("extends: hunter2.yaml\n", "s.yaml: extends: unknown key"),
    ("- hunter2\n", "s.yaml: top level must be a mapping"),
    ("auth: {p: 'hunter2\n", "s.yaml: invalid YAML at line"),
])
def test_errors_about_secrets_file_values_name_the_file_not_the_value(tmp_path, text, message):
    config = write(tmp_path / "c.yaml", "name: x\n")
    secrets = write(tmp_path / "s.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(WithAuth, config, secrets=secrets)
    assert message in str(e.value)
    assert "hunter2" not in str(e.value)


@dataclass
class Limited:
    """A top-level rule (``__post_init__``) whose message quotes the value."""

    name: str = "x"
    limit: int = 1

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")


def test_a_rule_failing_on_a_secrets_value_names_the_file_not_the_value(tmp_path):
    config = write(tmp_path / "c.yaml", "name: y\n")
    secrets = write(tmp_path / "s.yaml", "limit: -12345\n")
    with pytest.raises(ConfigError) as e:
        load_config(Limited, config, secrets=secrets)
    assert "c.yaml with " in str(e.value) and "s.yaml" in str(e.value)
    assert "12345" not in str(e.value)


def test_a_rule_failing_on_a_config_value_is_shown_unless_secrets_share_the_section(tmp_path):
    config = write(tmp_path / "c.yaml", "limit: -73519\n")
    with pytest.raises(ConfigError, match="c.yaml: <top level>: limit must be >= 0, got -73519"):
        load_config(Limited, config)
    secrets = write(tmp_path / "s.yaml", "name: y\n")
    with pytest.raises(ConfigError) as e:
        load_config(Limited, config, secrets=secrets)
    # The section holds a secrets value: nothing of it is shown (a value no temporary path holds).
    assert "73519" not in str(e.value)


def test_a_missing_secrets_file_is_named(tmp_path):
    config = write(tmp_path / "c.yaml", "name: x\n")
    with pytest.raises(ConfigError, match="nope.yaml: secrets file not found"):
        load_config(WithAuth, config, secrets=tmp_path / "nope.yaml")


def test_config_file_values_are_still_shown(tmp_path):
    config = write(tmp_path / "c.yaml", "name: x\ninner: {mode: c}\n")
    secrets = write(tmp_path / "s.yaml", "auth: {p: hunter2}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: inner.mode: expected one of \['a', 'b'\], got 'c'"):
        load_config(WithAuth, config, secrets=secrets)


def test_http_client_section_and_component_defaults(tmp_path: Path) -> None:
    from kraken.agent.config import AgentConfig, StoreConfig
    from kraken.proxy.config import ProxyConfig

    path = tmp_path / "proxy.yaml"
    path.write_text(f"store: {{root: {tmp_path}}}\norigins: {{hosts: []}}\n"
                    "http_client: {connect_timeout: 2s, retries: 0, read_buffer: 32KB}\n")
    client = load_config(ProxyConfig, path).http_client
    assert (client.connect_timeout, client.retries, client.read_buffer, client.read_timeout) == (2.0, 0, 32 << 10, 60.0)
    agent = AgentConfig(store=StoreConfig(root=str(tmp_path))).http_client
    assert (agent.connect_timeout, agent.read_timeout, agent.retries) == (3.0, 60.0, 2)


def test_agent_http_client_keeps_its_defaults_for_keys_not_given(tmp_path: Path) -> None:
    """A partial ``http_client:`` changes only the keys it gives, not the agent's defaults
    back to the generic ones."""
    from kraken.agent.config import AgentConfig

    path = tmp_path / "agent.yaml"
    path.write_text(f"store: {{root: {tmp_path}}}\nhttp_client: {{max_connections: 10}}\n")
    client = load_config(AgentConfig, path).http_client
    assert (client.max_connections, client.connect_timeout, client.retries) == (10, 3.0, 2)


def test_tls_section_has_krakens_shape_and_refuses_half_pairs(tmp_path: Path) -> None:
    from kraken.tracker.config import TrackerConfig

    path = tmp_path / "tracker.yaml"
    path.write_text("tls: {name: kraken, cas: [{path: /ca.pem}],\n"
                    "  server: {cert: {path: /s.pem}, key: {path: /k.pem}}}\n")
    tls = load_config(TrackerConfig, path).tls
    assert (tls.name, tls.serves, tls.calls, tls.verifies_clients) == ("kraken", True, True, True)
    path.write_text("tls: {server: {cert: {path: /etc/kraken/server.crt}}}\n")
    with pytest.raises(ConfigError, match="cert and key go together"):
        load_config(TrackerConfig, path)
    path.write_text("tls: {client: {cert: {path: /c.pem}, key: {path: /k.pem}}}\n")
    with pytest.raises(ConfigError, match="needs tls.cas"):
        load_config(TrackerConfig, path)
    path.write_text("tls: {cas: [{path: /ca.pem}], client: {disabled: true}}\n")
    assert not load_config(TrackerConfig, path).tls.calls
