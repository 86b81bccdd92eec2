"""The state dir's format, and the one migration so far (format 1 -> 2, issue 14).

Format 1 put an ``<interface type='ethernet'>``'s top-level ``<ip>`` and ``<route>`` on the host
end of its veth; format 2 reads them as libvirt does (the guest's end) and takes the host end's
from ``<source>``. A definition stored by format 1 must keep doing what it did, so it is
rewritten into ``<source>`` once, and the log says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from supervisor.errors import RuntimeFailure
from supervisor.model import Domain, Interface, IpAddress, Route
from supervisor.store import STORE_FORMAT, ConfigStore, migrate_domain
from supervisor.xml import format_domain, parse_domain

OLD_ETHERNET = """<domain type='lxc'>
  <name>p2p</name>
  <os><type>exe</type><init>/bin/sh</init></os>
  <devices>
    <interface type='ethernet'>
      <ip address='10.213.80.1'/>
      <ip address='10.213.80.5' prefix='24'/>
      <route address='10.213.81.0' prefix='24' gateway='10.213.80.2'/>
    </interface>
    <interface type='bridge'>
      <source bridge='br0'/><ip address='10.213.82.7' prefix='24'/>
    </interface>
  </devices>
</domain>
"""


def test_migration_moves_ethernet_sides_into_source() -> None:
    """An ethernet NIC's top-level addresses and routes become its <source>'s, an address
    without a prefix gets the /32 format 1 gave it; other NICs stay as they are."""
    domain = parse_domain(OLD_ETHERNET)
    migrated = migrate_domain(domain)
    assert migrated is not None
    eth, bridge = migrated.interfaces
    assert ((), (), domain.interfaces[1]) == (eth.ips, eth.routes, bridge)
    assert (
        IpAddress("10.213.80.1", 32),
        IpAddress("10.213.80.5", 24),
    ) == eth.host_ips
    assert (Route("10.213.81.0", 24, "10.213.80.2"),) == eth.host_routes


def test_migration_leaves_other_domains_alone() -> None:
    """A domain without addressed ethernet NICs needs no migration."""
    plain = Domain(name="a", type="lxc", interfaces=(Interface(type="ethernet"),))
    assert None is migrate_domain(plain)


def _old_store(tmp_path: Path) -> ConfigStore:
    """A state dir as format 1 left it: documents, no format file."""
    store = ConfigStore(tmp_path / "state")
    (store.domains_dir).mkdir(parents=True)
    (store.domains_dir / "p2p.xml").write_text(OLD_ETHERNET)
    return store


def test_loading_an_old_store_migrates_and_marks_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The stored document is rewritten with the host end's settings in <source>, the log
    names the domain, and the state dir is marked current (a second load changes nothing)."""
    store = _old_store(tmp_path)
    assert 1 == store.stored_format()
    with caplog.at_level(logging.WARNING, logger="vsv.store"):
        (domain,), problems = store.load_domains()
    assert [] == problems
    assert ["p2p"] == [r.args[0] for r in caplog.records if r.args]  # type: ignore[index]
    stored = parse_domain((store.domains_dir / "p2p.xml").read_bytes())
    assert (domain, STORE_FORMAT) == (stored, store.stored_format())
    assert (2, 2) == (len(domain.interfaces[0].host_ips), len(domain.interfaces))
    text = (store.domains_dir / "p2p.xml").read_text()
    assert format_domain(domain) == text
    again, _ = store.load_domains()
    assert [domain] == again


def test_a_new_store_is_current_and_keeps_libvirts_meaning(tmp_path: Path) -> None:
    """A state dir made now is marked current: its ethernet NICs' top-level <ip> stay the
    guest end's."""
    store = ConfigStore(tmp_path / "state")
    nic = Interface(type="ethernet", ips=(IpAddress("10.213.80.2", 32, peer="10.213.80.1"),))
    store.save_domain(Domain(name="g", type="lxc", interfaces=(nic,)))
    assert STORE_FORMAT == store.stored_format()
    (domain,), _ = store.load_domains()
    assert (nic,) == domain.interfaces


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    """Definitions in a format this supervisor does not know are not read (it could not tell
    what they mean)."""
    store = ConfigStore(tmp_path / "state")
    store.ensure()
    store.format_file.write_text(f"{STORE_FORMAT + 1}\n")
    with pytest.raises(RuntimeFailure, match="newer"):
        store.load_domains()
