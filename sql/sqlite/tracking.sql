-- Change tracking for one table on SQLite, installed by `replicator setup`.
-- Placeholders ({table}, {version}, ...) are filled with quoted identifiers by the replicator.
--
-- {version}: a counter in replicator_clock bumped by every tracked write. SQLite serialises
--   writers, so counter order is commit order and a reader has nothing to wait for.
-- {origin}: the node whose replicator wrote the row (NULL for the application's own writes).
--   The replicator sets replicator_session.origin inside its own write transaction and clears
--   it before commit, so other connections never see it set (no echo).
-- An update that changes the key records the old key as deleted (rekey trigger).
-- INSERT OR REPLACE, REPLACE INTO, UPDATE OR REPLACE and ON CONFLICT REPLACE constraints delete
--   the rows they displace without firing delete triggers (unless PRAGMA recursive_triggers is
--   on, which a POS connection does not set). The replace triggers record, before the write,
--   the key of every other row that has NEW's values in one of the table's unique column sets
--   (its primary key and unique indexes, read from the live table by `setup`). A write that then
--   fails or is ignored leaves either nothing (the statement is rolled back) or a tombstone for a
--   row that still exists, which the reader skips because the key is alive.
-- The database runs in WAL mode so that the replicator's reads never block a sale.
ALTER TABLE {table} ADD COLUMN {version} INTEGER;

ALTER TABLE {table} ADD COLUMN {origin} TEXT;

UPDATE replicator_clock SET version = version + 1
 WHERE id = 1 AND EXISTS (SELECT 1 FROM {table} WHERE {version} IS NULL);

UPDATE {table} SET {version} = (SELECT version FROM replicator_clock WHERE id = 1)
    WHERE {version} IS NULL;

CREATE INDEX IF NOT EXISTS {version_index} ON {table} ({version}, {key_columns});

DROP TRIGGER IF EXISTS {insert_trigger};

CREATE TRIGGER {insert_trigger} AFTER INSERT ON {table}
BEGIN
    UPDATE replicator_clock SET version = version + 1 WHERE id = 1;
    UPDATE {table}
       SET {version} = (SELECT version FROM replicator_clock WHERE id = 1),
           {origin} = (SELECT origin FROM replicator_session WHERE id = 1)
     WHERE {key_match_new};
END;

DROP TRIGGER IF EXISTS {update_trigger};

CREATE TRIGGER {update_trigger} AFTER UPDATE ON {table}
    WHEN NEW.{version} IS OLD.{version}
BEGIN
    UPDATE replicator_clock SET version = version + 1 WHERE id = 1;
    UPDATE {table}
       SET {version} = (SELECT version FROM replicator_clock WHERE id = 1),
           {origin} = (SELECT origin FROM replicator_session WHERE id = 1)
     WHERE {key_match_new};
END;

DROP TRIGGER IF EXISTS {rekey_trigger};

CREATE TRIGGER {rekey_trigger} AFTER UPDATE ON {table}
    WHEN {key_changed}
BEGIN
    UPDATE replicator_clock SET version = version + 1 WHERE id = 1;
    INSERT INTO replicator_tombstone (table_name, key, version, origin)
    VALUES ({table_name_literal}, json_array({old_key_columns}),
            (SELECT version FROM replicator_clock WHERE id = 1),
            (SELECT origin FROM replicator_session WHERE id = 1));
END;

DROP TRIGGER IF EXISTS {tombstone_trigger};

CREATE TRIGGER {tombstone_trigger} AFTER DELETE ON {table}
BEGIN
    UPDATE replicator_clock SET version = version + 1 WHERE id = 1;
    INSERT INTO replicator_tombstone (table_name, key, version, origin)
    VALUES ({table_name_literal}, json_array({old_key_columns}),
            (SELECT version FROM replicator_clock WHERE id = 1),
            (SELECT origin FROM replicator_session WHERE id = 1));
END;

DROP TRIGGER IF EXISTS {replace_insert_trigger};

CREATE TRIGGER {replace_insert_trigger} BEFORE INSERT ON {table}
    WHEN EXISTS (SELECT 1 FROM {table} AS displaced WHERE {displaced_by_insert})
BEGIN
    UPDATE replicator_clock SET version = version + 1 WHERE id = 1;
    INSERT INTO replicator_tombstone (table_name, key, version, origin)
    SELECT {table_name_literal}, json_array({displaced_key_columns}),
           (SELECT version FROM replicator_clock WHERE id = 1),
           (SELECT origin FROM replicator_session WHERE id = 1)
      FROM {table} AS displaced
     WHERE {displaced_by_insert};
END;

DROP TRIGGER IF EXISTS {replace_update_trigger};

CREATE TRIGGER {replace_update_trigger} BEFORE UPDATE OF {replace_update_columns} ON {table}
    WHEN EXISTS (SELECT 1 FROM {table} AS displaced WHERE {displaced_by_update})
BEGIN
    UPDATE replicator_clock SET version = version + 1 WHERE id = 1;
    INSERT INTO replicator_tombstone (table_name, key, version, origin)
    SELECT {table_name_literal}, json_array({displaced_key_columns}),
           (SELECT version FROM replicator_clock WHERE id = 1),
           (SELECT origin FROM replicator_session WHERE id = 1)
      FROM {table} AS displaced
     WHERE {displaced_by_update};
END;
