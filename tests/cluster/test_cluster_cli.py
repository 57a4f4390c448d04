"""``coordcore serve`` cluster flags: parsed into the config, contradictions refused."""
from __future__ import annotations

import argparse

import pytest

from coordcore.errors import BadArgument
from coordcore.server.cli import add_arguments, config_from_args


def config(*argv: str):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_cluster_flags() -> None:
    cfg = config("--etcd", "http://127.0.0.11:2379,127.0.0.12:2379", "--cluster", "prod",
                 "--advertise", "10.0.0.5:7379", "--etcd-ttl", "3")
    assert cfg.etcd == ("127.0.0.11:2379", "127.0.0.12:2379")
    assert (cfg.cluster, cfg.advertise, cfg.etcd_ttl) == ("prod", "10.0.0.5:7379", 3.0)
    cfg.validate()
    assert config().etcd == ()  # single node stays the default


@pytest.mark.parametrize("extra", [["--worker-id", "3"], ["--id-workers", "2"], ["--id-only"]])
def test_cluster_mode_refuses_local_worker_ids(extra: list[str]) -> None:
    with pytest.raises(BadArgument):
        config("--etcd", "127.0.0.11:2379", *extra).validate()
