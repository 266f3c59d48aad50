"""The documentation stays true to the code: every config key documented with its default,
the checked-in configs load, and the files, metrics and make targets the docs name exist."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kraken.config import load_config
from kraken.devcluster import AgentPorts, HerdPorts
from kraken.tools import configdoc

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "CONFIGURATION.md"
CONFIG_COMPONENTS = ["testfs", "origin", "build-index", "proxy", "tracker", "agent"]

# base.yaml leaves out what only a deployment can say (its directories, its origins, its
# backends); these stand in for it when base.yaml is loaded on its own.
SITE_KEYS: dict[str, dict] = {
    "testfs": {},
    "origin": {},
    "build-index": {"store": {"root": "/srv/kraken/build-index"}, "origins": {"hosts": []}, "backends": []},
    "proxy": {"store": {"root": "/srv/kraken/proxy"}, "origins": {"hosts": []}},
    "tracker": {},
    "agent": {"store": {"root": "/var/cache/kraken/agent"}},
}

PORTS = {"testfs": 14000, "proxy": 15000, "origin": 15002, "tracker": 15003, "build-index": 15004, "agent": 16000}

# The agent's other ports (registry, P2P, agent server) and the second dev agent's.
AGENT_PORTS = {"development": (16000, 16001, 16002), "development-two": (17000, 17001, 17002)}


@pytest.mark.parametrize("component", list(configdoc.COMPONENTS))
def test_configuration_documents_every_key_with_its_default(component: str) -> None:
    problems = configdoc.check_doc(CONFIGURATION.read_text(), [component])
    assert problems == [], "\n".join(problems)


def test_every_component_config_has_a_table() -> None:
    tables = configdoc.doc_tables(CONFIGURATION.read_text())
    assert set(configdoc.COMPONENTS) <= set(tables)


def test_check_doc_catches_a_missing_key_a_wrong_default_and_a_stale_key() -> None:
    doc = CONFIGURATION.read_text()
    assert "| `cleanup.tti` | duration | `24h` |" in doc
    wrong = doc.replace("| `cleanup.tti` | duration | `24h` |", "| `cleanup.tti` | duration | `12h` |")
    assert any("cleanup.tti" in p for p in configdoc.check_doc(wrong, ["origin"]))
    missing = "\n".join(line for line in doc.splitlines() if not line.startswith("| `fetch.concurrency`"))
    assert any("fetch.concurrency" in p for p in configdoc.check_doc(missing, ["origin"]))
    stale = doc.replace("| `fetch.concurrency`", "| `fetch.no_such_key` | int | `1` | x |\n| `fetch.concurrency`")
    assert any("fetch.no_such_key" in p for p in configdoc.check_doc(stale, ["origin"]))
    required = doc.replace(
        "| `store.root` | string | required | Directory where uploads", "| `store.root` | string | `x` | D"
    )
    assert any("required" in p for p in configdoc.check_doc(required, ["proxy"]))


@pytest.mark.parametrize("name", ["base", "development"])
@pytest.mark.parametrize("component", CONFIG_COMPONENTS)
def test_checked_in_configs_load(component: str, name: str) -> None:
    cls = configdoc.config_class(component)
    overrides = SITE_KEYS[component] if name == "base" else None
    config = load_config(cls, ROOT / "config" / component / f"{name}.yaml", overrides)
    assert isinstance(config, cls)
    assert config.listen.port == PORTS[component]


@pytest.mark.parametrize("name", list(AGENT_PORTS))
def test_dev_agent_configs_use_the_documented_ports(name: str) -> None:
    config = load_config(configdoc.config_class("agent"), ROOT / "config" / "agent" / f"{name}.yaml")
    assert (config.listen.port, config.p2p.listen.port, config.server.port) == AGENT_PORTS[name]
    rows = {r.path: r.section_default for r in configdoc.rows("agent")}
    assert (rows["listen.port"], rows["p2p.listen.port"], rows["server.port"]) == tuple(
        map(str, AGENT_PORTS["development"])
    )


def test_readme_ports_table_lists_every_dev_port() -> None:
    readme = (ROOT / "README.md").read_text()
    table = {m.group(1) for m in re.finditer(r"^\|[^|\n]*\|\s*(\d+)\s*\|", readme, re.MULTILINE)}
    expected = {str(p) for p in PORTS.values()} | {"15001"} | {str(p) for ports in AGENT_PORTS.values() for p in ports}
    assert sorted(expected - table) == []


@pytest.mark.parametrize("component", CONFIG_COMPONENTS)
def test_default_ports_match_the_docs(component: str) -> None:
    row = next(r for r in configdoc.rows(component) if r.path == "listen.port")
    assert row.section_default == str(PORTS[component])
    assert f"| {component} | {PORTS[component]} |" in (DOCS / "ARCHITECTURE.md").read_text()


@pytest.mark.parametrize("component", CONFIG_COMPONENTS)
def test_multihost_configs_load(component: str) -> None:
    path = ROOT / "examples" / "multihost" / "config" / component / "multihost.yaml"
    config = load_config(configdoc.config_class(component), path)
    assert config.listen.port == PORTS[component]


def test_devcluster_parameter_files_give_the_documented_ports() -> None:
    params = ROOT / "examples" / "devcluster"
    herd = HerdPorts.from_params(params / "herd_param.sh")
    assert (herd.testfs, herd.proxy, herd.origin, herd.tracker, herd.build_index) == (
        PORTS["testfs"], PORTS["proxy"], PORTS["origin"], PORTS["tracker"], PORTS["build-index"])
    assert (herd.origin_p2p, herd.redis) == (15001, 14001)
    for name, config in (("one", "development"), ("two", "development-two")):
        agent = AgentPorts.from_params(params / f"agent_{name}_param.sh")
        assert (agent.registry, agent.p2p, agent.server) == AGENT_PORTS[config]


def test_readme_mentions_make_targets() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in ("make devcluster", "make test", "make images", "make base-image", "make docker_stop",
                   "docker ps --filter name=kraken"):
        assert target in readme, target


@pytest.mark.parametrize("doc", ["ARCHITECTURE.md", "CONFIGURATION.md", "CONTRACTS.md", "OPERATIONS.md"])
def test_files_named_in_docs_exist(doc: str) -> None:
    text = (DOCS / doc).read_text()
    paths = set(re.findall(r"`((?:kraken|config|tests|docker|examples)/[\w./-]+)`", text))
    paths |= {m.group(1) for m in re.finditer(r"\((\w+\.md)\)", text)}
    missing = sorted(p for p in paths if not ((ROOT / p).exists() or (DOCS / p).exists()))
    assert missing == []


def test_metrics_named_in_docs_exist_in_code() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "kraken").rglob("*.py"))
    named = set(re.findall(r"\bkraken_[a-z_]+_(?:total|seconds|pending)\b", (DOCS / "ARCHITECTURE.md").read_text()))
    assert named, "ARCHITECTURE.md names no metrics"
    assert sorted(m for m in named if f'"{m}"' not in code) == []


def test_configdoc_formats_values_as_config_files_write_them() -> None:
    assert [configdoc.format_duration(s) for s in (0, 0.5, 1, 90, 300, 86400)] == [
        "0s",
        "500ms",
        "1s",
        "90s",
        "5m",
        "24h",
    ]
    assert [configdoc.format_size(n) for n in (0, 1000, 4 << 20, 1 << 30)] == ["0", "1000", "4MB", "1GB"]


def test_configdoc_reads_help_from_yaml_comments(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# file header\nlisten:\n  port: 1\n\n# the thing\nsection:\n  # inner\n  key: 2  # more\n")
    assert configdoc.yaml_comments(path) == {"section": "the thing", "section.key": "inner more"}
    # A block after the header (a blank line between them) belongs to the first key.
    path.write_text("# file header\n\n# first\nlisten:\n  port: 1\n")
    assert configdoc.yaml_comments(path) == {"listen": "first"}


@dataclass
class _Addr:
    addr: str


@dataclass
class _WithSection:
    peer: _Addr = field(default_factory=lambda: _Addr("localhost:1"))


def test_configdoc_shows_the_section_default_of_a_required_key() -> None:
    row = next(r for r in configdoc.walk(_WithSection) if r.path == "peer.addr")
    assert row.required and row.section_default == "localhost:1"
    assert configdoc.default_cell(row) == "`localhost:1` if `peer` is absent, else required"


def test_configdoc_checks_a_section_default() -> None:
    doc = CONFIGURATION.read_text()
    cell = '| `tracker.addr` | string | `localhost:15003` if `tracker` is absent, else `""` |'
    assert cell in doc
    wrong = doc.replace(cell, '| `tracker.addr` | string | `""` |')
    assert any("tracker.addr" in p for p in configdoc.check_doc(wrong, ["agent"]))


def test_configdoc_cli_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert configdoc.main(["origin"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<!-- configdoc: origin -->\n| key | type | default | meaning |")
    assert "| `writeback.retry_interval` | duration | `1s` |" in out
