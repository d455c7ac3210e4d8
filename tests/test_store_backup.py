"""Backup of the embedded store = a consistent copy of the folder; restore = put the copy in place and open it."""

from __future__ import annotations

import pytest
from qdrant_client.http import models

from hark.store import StoreError, StoreUnavailableError
from hark.store.edge import EdgeStore, backup, restore

VECTORS = {"global": models.VectorParams(size=8, distance=models.Distance.COSINE)}


def _points(lo: int, hi: int) -> list[models.PointStruct]:
    return [models.PointStruct(id=i, vector={"global": [float((i * j) % 5 + 1) for j in range(8)]},
                               payload={"i": i, "meta": {"n": i % 3}}) for i in range(lo, hi)]


def _fill(store: EdgeStore) -> None:
    store.create_collection("songs__v1", vectors_config=VECTORS)
    store.create_payload_index("songs__v1", "meta.n", "integer")
    store.upsert("songs__v1", _points(0, 50))
    store.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
        create_alias=models.CreateAlias(collection_name="songs__v1", alias_name="songs"))])


def _snapshot(store: EdgeStore) -> tuple:
    records, _ = store.scroll("songs", limit=1000, with_payload=True, with_vectors=True)
    hits = store.query_points("songs", query=[1.0] * 8, using="global", limit=10,
                              query_filter=models.Filter(must=[models.FieldCondition(
                                  key="meta.n", match=models.MatchValue(value=1))]))
    return ([(r.id, r.payload, r.vector) for r in records], [(p.id, round(p.score, 6)) for p in hits.points],
            [(a.alias_name, a.collection_name) for a in store.get_aliases().aliases])


def test_backup_of_an_open_store_restores_the_same_points(tmp_path):
    live, copy, restored = tmp_path / "live", tmp_path / "backup", tmp_path / "restored"
    with EdgeStore(live) as store:
        _fill(store)
        before = _snapshot(store)
        assert backup(live, copy, store=store) == copy
        # The live store goes on working after the copy; later writes are not in the backup.
        store.upsert("songs__v1", _points(50, 60))
        assert store.count("songs").count == 60
    assert not (copy / ".lock").exists()
    restore(copy, restored)
    with EdgeStore(restored) as store:
        assert _snapshot(store) == before
        assert store.count("songs").count == 50
        assert "meta.n" in store.get_collection("songs").payload_schema


def test_backup_of_a_closed_folder_and_of_a_busy_one(tmp_path):
    live = tmp_path / "live"
    with EdgeStore(live) as store:
        _fill(store)
        before = _snapshot(store)
        # Another owner holds the folder: no copy behind its back.
        with pytest.raises(StoreUnavailableError, match="in use by another process"):
            backup(live, tmp_path / "busy")
        assert not (tmp_path / "busy").exists()
    backup(live, tmp_path / "copy")
    with pytest.raises(StoreError, match="not empty"):
        backup(live, tmp_path / "copy")
    with pytest.raises(StoreError, match="not empty"):
        restore(tmp_path / "copy", live)
    with pytest.raises(StoreError, match="not a backup"):
        restore(tmp_path / "nothing", tmp_path / "x")
    restore(tmp_path / "copy", tmp_path / "restored")
    with EdgeStore(tmp_path / "restored") as store:
        assert _snapshot(store) == before


def test_backup_refuses_a_store_of_another_folder(tmp_path):
    with EdgeStore(tmp_path / "a") as store, pytest.raises(StoreError, match="not"):
        backup(tmp_path / "b", tmp_path / "copy", store=store)


def test_backup_and_restore_commands(tmp_path, monkeypatch, capsys):
    from hark.cli import main

    live, copy = tmp_path / "live", tmp_path / "copy"
    with EdgeStore(live) as store:
        _fill(store)
        before = _snapshot(store)
    monkeypatch.setenv("HARK_QDRANT_PATH", str(live))
    monkeypatch.delenv("HARK_QDRANT_URL", raising=False)
    assert main(["backup", str(copy)]) == 0
    assert main(["backup", str(copy)]) == 2  # never over an existing backup
    assert "hark: error:" in capsys.readouterr().err
    monkeypatch.setenv("HARK_QDRANT_PATH", str(tmp_path / "fresh"))
    assert main(["restore", str(copy), "--json"]) == 0
    with EdgeStore(tmp_path / "fresh") as store:
        assert _snapshot(store) == before
    assert main(["restore", str(copy)]) == 2  # the target is not empty any more


def _no_partials(*folders) -> None:
    for folder in folders:
        assert not [p for p in folder.rglob("*.partial")], f"a half copy was left in {folder}"


def test_backup_refuses_a_destination_inside_the_live_store(tmp_path):
    live = tmp_path / "live"
    with EdgeStore(live) as store:
        _fill(store)
        before = _snapshot(store)
    (tmp_path / "link").symlink_to(live / "collections")
    for dest in (live / "collections" / "x", live / "inner", live, tmp_path / "link" / "y"):
        with pytest.raises(StoreError, match="inside its source"):
            backup(live, dest)
        assert dest == live or not dest.exists()
    with EdgeStore(live) as store:
        with pytest.raises(StoreError, match="inside its source"):
            backup(live, live / "inner", store=store)
        assert _snapshot(store) == before
    assert sorted(p.name for p in live.iterdir()) == [".lock", "aliases.json", "collections"]
    assert sorted(p.name for p in (live / "collections").iterdir()) == ["songs__v1"]
    _no_partials(live)


def test_restore_refuses_a_destination_inside_the_backup_and_the_other_way_round(tmp_path):
    live, copy = tmp_path / "live", tmp_path / "copy"
    with EdgeStore(live) as store:
        _fill(store)
    backup(live, copy)
    files = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    for dest in (copy / "collections" / "sub", copy / "sub", copy):
        with pytest.raises(StoreError, match="inside its source"):
            restore(copy, dest)
    # A backup kept inside an (empty) target folder: the target would have to swallow its own source.
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "copy").symlink_to(copy)
    with pytest.raises(StoreError, match="inside its destination"):
        restore(tmp_path / "target" / "copy", copy.parent)
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == files
    _no_partials(copy)


def test_backup_of_a_missing_or_non_store_folder_is_an_error_and_creates_nothing(tmp_path):
    missing, plain = tmp_path / "missing", tmp_path / "plain"
    with pytest.raises(StoreError, match="no such folder"):
        backup(missing, tmp_path / "b1")
    assert not missing.exists() and not (tmp_path / "b1").exists()
    plain.mkdir()
    (plain / "notes.txt").write_text("not a store")
    with pytest.raises(StoreError, match="not an embedded store"):
        backup(plain, tmp_path / "b2")
    assert sorted(p.name for p in plain.iterdir()) == ["notes.txt"] and not (tmp_path / "b2").exists()


def test_backup_and_restore_commands_refuse_nested_folders_in_one_line(tmp_path, monkeypatch, capsys):
    from hark.cli import main

    live, copy = tmp_path / "live", tmp_path / "copy"
    with EdgeStore(live) as store:
        _fill(store)
    monkeypatch.delenv("HARK_QDRANT_URL", raising=False)
    monkeypatch.setenv("HARK_QDRANT_PATH", str(live))
    assert main(["backup", str(live / "collections" / "x")]) == 2
    assert main(["backup", str(copy)]) == 0
    monkeypatch.setenv("HARK_QDRANT_PATH", str(copy / "collections" / "sub"))
    assert main(["restore", str(copy)]) == 2
    monkeypatch.setenv("HARK_QDRANT_PATH", str(tmp_path / "missing"))
    assert main(["backup", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "missing").exists() and not (tmp_path / "b").exists()
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 3 and all(line.startswith("hark: error:") for line in lines), lines
    _no_partials(live, copy)
