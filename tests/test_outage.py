"""The network between a register and its server goes down and comes back: the register keeps
selling, sync fails as transient (never a crash or a half-applied batch), then catches up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import execute
from proxy import Proxy
from support import ITEMS, Node, moved, rows, write_node

from replicator.errors import TransientError
from replicator.sync import run_jobs

DDL = "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20))"


def test_sync_waits_out_a_network_outage(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = pg_database(), sqlite_database()
    execute(server, DDL)
    execute(register, DDL)
    with Proxy(5432) as proxy:
        via_proxy = server.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        node = Node(write_node(tmp_path, via_proxy, register, {"itens": ITEMS}))
        node.setup()
        execute(register, "INSERT INTO item (id, name) VALUES (1, 'before')")
        assert moved(node.sync()) == 1

        proxy.cut()
        # The register keeps selling while the server is unreachable.
        execute(
            register,
            *[f"INSERT INTO item (id, name) VALUES ({i}, 'offline')" for i in range(2, 50)],
        )
        results = run_jobs(node.settings, node.settings.jobs(), node.dbs)
        assert isinstance(results[0].error, TransientError), results[0].error
        assert rows(server, "item") == [(1, "before")], "nothing half-applied"

        proxy.restore()
        node.sync()  # catches up by itself: no reset, no manual step
        assert rows(server, "item") == rows(register, "item")
        assert len(rows(server, "item")) == 49
        node.close()


def test_connection_cut_mid_cycle_resumes_without_loss(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """The network drops between the commits of one cycle (the catalog goes to a register in
    short commits): applied commits stay, the rest follows."""
    server, register = pg_database(), sqlite_database()
    execute(server, DDL)
    execute(register, DDL)
    with Proxy(5432) as proxy:
        via_proxy = server.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        config = write_node(
            tmp_path,
            via_proxy,
            register,
            {"itens": ITEMS.replace("register_to_server", "server_to_register")},
            extra="[sync]\nbatch_rows = 10\n",
        )
        node = Node(config)
        node.setup()
        execute(server, *[f"INSERT INTO item (id, name) VALUES ({i}, 'n')" for i in range(1, 101)])
        node.sync(max_batches=3)
        assert len(rows(register, "item")) == 30
        proxy.cut()
        proxy.restore()  # the pooled connections are dead now; the next cycle must cope
        node.sync()
        assert rows(server, "item") == rows(register, "item")
        node.close()
